"""The worker side of a Ray Train run (tune/ray_train.py is the driver side): each rank's loop around
ict_core.trainer.train, forwarding its reports to ray.train.report, and workers.jsonl (rank -> node, per start)."""
from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from pathlib import Path

from ict_core.config import from_dict
from tune.cluster import REPO_ROOT
from tune.inputs import localize_inputs
from tune.launch_plan import _threads_for
from tune.store import Store
from tune.tee import tee_output


WORKERS_FILE = "workers.jsonl"


# ---- the worker side -----------------------------------------------------------------------------
def _record_workers(run_dir: Path, rank: int, world_size: int, cpus: float, gpus: float,
                    resume_checkpoint: str | None) -> None:
    """Append one line per rank (node id, pid, device) to run_dir/workers.jsonl; one block per (re)start."""
    import ray
    import torch
    import torch.distributed as dist

    me = {
        "rank": rank,
        "world_size": world_size,
        "node_id": ray.get_runtime_context().get_node_id(),
        "hostname": socket.gethostname(),
        "pid": os.getpid(),
        "cpus": cpus,
        "gpus": gpus,
        "torch_threads": torch.get_num_threads(),
        "cuda_device": torch.cuda.current_device() if gpus > 0 and torch.cuda.is_available() else None,
        "start_unix": time.time(),
        "resume_checkpoint": resume_checkpoint,
        "code_dir": str(REPO_ROOT),  # where this worker imported the code from (runtime_env working_dir or not)
    }
    rows = [me]
    if world_size > 1 and dist.is_available() and dist.is_initialized():
        rows = [None] * world_size
        dist.all_gather_object(rows, me)
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        with open(run_dir / WORKERS_FILE, "a") as fh:
            for row in rows:
                fh.write(json.dumps(row) + "\n")


def worker_loop(loop_config: dict) -> None:
    """Train-worker entry point (runs on every rank): ict_core's train() with Ray's report and checkpoints."""
    import ray.train
    import torch

    from ict_core.trainer import train

    cfg = localize_inputs(from_dict(loop_config["config"]))  # inputs under a URI: this node's cached copy
    ctx = ray.train.get_context()
    rank, world_size = ctx.get_world_rank(), ctx.get_world_size()
    cpus, gpus = loop_config["cpus_per_worker"], loop_config["gpus_per_worker"]
    if cfg.train.num_threads == 0:
        torch.set_num_threads(_threads_for(cpus))
    if gpus > 0 and torch.cuda.is_available():  # a GPU Ray granted may be one torch cannot use: train on the CPU
        # ray.train.torch.get_device() is this rank's GPU among the ones Ray made visible. The trainer picks
        # cuda:LOCAL_RANK, which is the same GPU only when Ray's GPU order follows the local ranks; make it so.
        device = ray.train.torch.get_device()
        torch.cuda.set_device(device)
        os.environ["LOCAL_RANK"] = str(device.index)
    run_dir = Path(loop_config["run_dir"])
    mirror = None
    if loop_config.get("run_uri") and rank == 0:  # an earlier attempt's run folder (a restart may change node)
        mirror = Store(loop_config["run_uri"]).working_copy("", run_dir, checkpoints=False)
    checkpoint = ray.train.get_checkpoint()
    _record_workers(run_dir, rank, world_size, cpus, gpus, checkpoint.path if checkpoint is not None else None)

    def report(metrics: dict, checkpoint_dir: str | None = None) -> None:
        checkpoint = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        ray.train.report(dict(metrics), checkpoint=checkpoint)
        if mirror is not None:
            mirror.push()

    logs = _rank0_logs(run_dir) if rank == 0 else contextlib.nullcontext()
    with logs:
        if checkpoint is None:
            train(cfg, report=report, run_dir=str(run_dir))
        else:
            with checkpoint.as_directory() as ckpt_dir:
                train(cfg, report=report, run_dir=str(run_dir), resume_from=ckpt_dir)
    if mirror is not None:
        mirror.push()


@contextlib.contextmanager
def _rank0_logs(run_dir: Path):
    """Rank 0's stdout/stderr, copied into the run folder (worker.stdout.log / worker.stderr.log)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with tee_output(run_dir / "worker.stdout.log", run_dir / "worker.stderr.log"):
        yield
