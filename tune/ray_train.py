"""Ray Train adapter: one iCT run as a data-parallel job of W workers (TorchTrainer, Train V2).

The worker function is a thin adapter around `ict_core.trainer.train`: the trainer shards the global batch
over the torch.distributed ranks that TorchTrainer sets up, and every rank forwards its reports to
`ray.train.report` (rank 0 attaches the checkpoint folder). ict_core never imports Ray.

Where things go, for `storage=S` and `name=NAME`:
  S/NAME/                     Ray's run folder: checkpoint_<time>/ (latest train.keep_checkpoints), its state
  S/NAME/run/                 the run folder of `python -m ict_core.train` (config.json, metrics.jsonl,
                              evals.jsonl, samples/, summary.json), plus workers.jsonl (rank -> node, per start)
A second run with the same name and storage continues from the latest checkpoint (Train V2 behaviour), so a
fresh run refuses an existing name and `resume=True` requires one.

With a URI storage (s3://...), rank 0 writes the run folder to a local scratch folder and copies what changed to
S/NAME/run after every report (tune/store.py, the same code as the in-process trial; checkpoints stay with Ray);
a local storage path must be visible at the same path on every node (NFS). data.path / eval.inception_path under
a URI are fetched into each worker node's cache before training.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import socket
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Iterable

from ict_core.errors import BadInput
from ict_core import rundir
from ict_core.config import Config, ConfigError, from_dict
from tune.cluster import (CODE_ON_NODES_ENV, LOCAL, REPO_ROOT, ClusterError, code_runtime_env,  # noqa: F401
                          connect, job_ships_code, resolve_address)
from tune import cluster as _cluster
from tune.inputs import localize_inputs
from tune.store import Store, is_uri, join as _join
from tune.tee import tee_output

DEFAULT_STORAGE = "runs"  # relative to the working directory, like `python -m ict_core.train`
RUN_SUBDIR = "run"
WORKERS_FILE = "workers.jsonl"
STORAGE_ENV = "ICT_STORAGE"  # default storage for runs on a cluster, e.g. s3://my-bucket/ict


class LaunchError(BadInput):
    """A launch request that cannot work (workers, GPUs, storage, name), found before training starts."""


@dataclasses.dataclass(frozen=True)
class LaunchPlan:
    """Everything `run_ray_train` decided before touching Ray; `--dry-run` prints it."""

    workers: int
    gpus_per_worker: float
    cpus_per_worker: float | None  # None: chosen from the cluster's free CPUs once Ray is up
    storage: str  # absolute local path or a URI
    name: str
    run_dir: str  # where rank 0 writes (local path; for URI storage a scratch folder mirrored to run_uri)
    run_uri: str | None
    max_failures: int
    resume: bool
    backend: str
    cluster: str  # "local" (started here), "address" (RAY_ADDRESS) or "attached" (ray already initialised)
    ship_code: bool

    @property
    def experiment_path(self) -> str:
        return _join(self.storage, self.name)

    def describe(self) -> dict:
        out = dataclasses.asdict(self)
        out["experiment_path"] = self.experiment_path
        return out


# ---- checks that need no Ray ---------------------------------------------------------------------
def _cluster_kind() -> str:
    """"attached" (Ray already initialised), "address" (a cluster: RAY_ADDRESS or one running on this node) or
    "local" (a new local instance), by tune.cluster.resolve_address."""
    try:
        import ray

        if ray.is_initialized():
            return "attached"
    except ImportError:  # pragma: no cover - ray is a dependency
        pass
    return "local" if resolve_address().local else "address"


def default_name(cfg: Config) -> str:
    return f"ict_{cfg.data.name}_{time.strftime('%Y%m%d-%H%M%S')}"


def experiment_exists(storage: str, name: str) -> bool:
    """Whether Ray's folder for (storage, name) exists, i.e. a run with this name was started before."""
    return Store(_join(storage, name)).exists()


def plan_launch(
    cfg: Config,
    *,
    workers: int = 1,
    gpus_per_worker: float = 0,
    cpus_per_worker: float | None = None,
    storage: str | None = None,
    name: str | None = None,
    max_failures: int = 0,
    resume: bool | str = False,
    run_dir: str | None = None,
    ship_code: bool | None = None,
    run_uri: str | None = None,
) -> LaunchPlan:
    """Check a launch request without starting Ray; raise LaunchError/ConfigError naming what is wrong."""
    _check_request(cfg, workers, gpus_per_worker, cpus_per_worker, max_failures, resume)
    cluster = _cluster_kind()
    if gpus_per_worker > 0 and cluster == "local":
        _check_local_gpus(workers, gpus_per_worker)
    storage = _storage(storage, cluster)
    if name is None:
        if resume is True:
            raise LaunchError("resume=True needs the name of the run to continue (--name)")
        name = default_name(cfg)
    if not name or "/" in name or "\\" in name or name in (".", ".."):
        raise LaunchError(f"name must be a plain folder name (no '/'), got {name!r}")
    resume = _resumes(storage, name, resume)
    run_dir, run_uri = _run_folders(storage, name, run_dir, run_uri)
    if ship_code is None:
        ship_code = cluster == "address" and os.environ.get(CODE_ON_NODES_ENV) != "1" and not job_ships_code()

    return LaunchPlan(
        workers=workers,
        gpus_per_worker=float(gpus_per_worker),
        cpus_per_worker=None if cpus_per_worker is None else float(cpus_per_worker),
        storage=storage,
        name=name,
        run_dir=run_dir,
        run_uri=run_uri,
        max_failures=max_failures,
        resume=resume,
        # NCCL only where ranks talk GPU to GPU; a one-worker run needs no collective (and then also runs on a
        # node whose torch has no CUDA).
        backend="nccl" if gpus_per_worker > 0 and workers > 1 else "gloo",
        cluster=cluster,
        ship_code=bool(ship_code),
    )


def _check_request(cfg, workers, gpus_per_worker, cpus_per_worker, max_failures, resume) -> None:
    """The launch arguments' types and ranges, and the ones that contradict each other or the config."""
    if not isinstance(cfg, Config):
        raise ConfigError(f"run_ray_train needs an ict_core.config.Config, got {type(cfg).__name__}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise LaunchError(f"workers must be an integer >= 1, got {workers!r}")
    if cfg.train.batch_size % workers:
        raise LaunchError(
            f"train.batch_size={cfg.train.batch_size} is not divisible by workers={workers}: the batch is global "
            f"and split evenly across workers; pick a batch size that is a multiple of {workers}"
        )
    if not isinstance(gpus_per_worker, (int, float)) or isinstance(gpus_per_worker, bool) or gpus_per_worker < 0:
        raise LaunchError(f"gpus_per_worker must be a number >= 0, got {gpus_per_worker!r}")
    if cpus_per_worker is not None and (
        not isinstance(cpus_per_worker, (int, float)) or isinstance(cpus_per_worker, bool) or cpus_per_worker <= 0
    ):
        raise LaunchError(f"cpus_per_worker must be a number > 0 (or None for a share that fits), got {cpus_per_worker!r}")
    if isinstance(max_failures, bool) or not isinstance(max_failures, int) or max_failures < -1:
        raise LaunchError(f"max_failures must be an integer >= 0, or -1 for unlimited restarts, got {max_failures!r}")
    if resume not in (False, True, "auto"):
        raise LaunchError(f"resume must be False, True or 'auto', got {resume!r}")
    if 0 < gpus_per_worker < 1 and workers > 1:
        raise LaunchError(
            f"gpus_per_worker={gpus_per_worker} with {workers} workers would put several NCCL ranks on one GPU, "
            "which NCCL refuses; use gpus_per_worker=1 (one GPU per worker)"
        )
    if gpus_per_worker > 0 and cfg.train.device == "cpu":
        raise LaunchError(f"train.device=cpu contradicts gpus_per_worker={gpus_per_worker}; use train.device=auto")
    if gpus_per_worker == 0 and cfg.train.device == "cuda":
        raise LaunchError(
            "train.device=cuda needs gpus_per_worker > 0: Ray hides the GPUs from workers that did not ask for one"
        )


def _check_local_gpus(workers: int, gpus_per_worker: float) -> None:
    """On a local Ray, the GPUs the workers ask for must be on this machine."""
    import torch

    needed = math.ceil(workers * gpus_per_worker)
    found = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if found < needed:
        raise LaunchError(
            f"{workers} workers x gpus_per_worker={gpus_per_worker} need {needed} GPU(s) but this machine has "
            f"{found}; use gpus_per_worker=0 (CPU, gloo) or set RAY_ADDRESS to a cluster with GPUs"
        )


def _storage(storage: str | None, cluster: str) -> str:
    """Where Ray keeps the run: the given storage, else ICT_STORAGE, else the default folder (not on a cluster,
    whose nodes need shared storage); a local path made absolute."""
    if storage is None:
        storage = os.environ.get(STORAGE_ENV) or (DEFAULT_STORAGE if cluster != "address" else None)
        if storage is None:
            raise LaunchError(
                f"a run on a cluster (RAY_ADDRESS={os.environ.get('RAY_ADDRESS')}) needs shared storage: pass "
                f"--storage s3://BUCKET/PREFIX (or an NFS path mounted on every node), or set {STORAGE_ENV}"
            )
    storage = str(storage)
    return storage if is_uri(storage) else str(Path(storage).expanduser().resolve())


def _resumes(storage: str, name: str, resume: bool | str) -> bool:
    """Whether the launch continues a run: `resume` (True, False or "auto") against whether the run exists."""
    exists = experiment_exists(storage, name)
    if resume is True and not exists:
        raise LaunchError(f"resume=True but no run named {name!r} exists in storage {storage}")
    if resume is False and exists:
        raise LaunchError(
            f"a run named {name!r} already exists in storage {storage}; pass resume=True (--resume) to continue it, "
            "or choose another name"
        )
    return bool(exists)


def _run_folders(storage: str, name: str, run_dir: str | None, run_uri: str | None) -> tuple[str, str | None]:
    """(run_dir, run_uri): with URI storage rank 0 writes to local scratch (or the given run_dir) and mirrors it
    to the URI; otherwise the run folder is in the storage."""
    if run_uri is not None and not is_uri(run_uri):
        raise LaunchError(f"run_uri must be a URI such as s3://BUCKET/PATH (a local folder goes in run_dir), got {run_uri!r}")
    if run_uri is None:
        run_uri = _join(storage, name, RUN_SUBDIR) if is_uri(storage) else None
    if run_dir is None:
        if run_uri:
            # Unique per launch, so a stale scratch folder of an earlier launch is never appended to.
            run_dir = str(Path(tempfile.gettempdir()) / "ict_runs" / f"{name}-{uuid.uuid4().hex[:8]}" / RUN_SUBDIR)
        else:
            run_dir = _join(storage, name, RUN_SUBDIR)
    return str(Path(run_dir).expanduser().resolve()), run_uri


def cpu_share(workers: int, gpus_per_worker: float, free_cpus: float, max_node_cpus: float) -> float:
    """tune.cluster.cpu_share, with a LaunchError where the workers do not fit."""
    try:
        return _cluster.cpu_share(workers, gpus_per_worker, free_cpus, max_node_cpus)
    except ClusterError as err:
        raise LaunchError(str(err)) from None


def _threads_for(cpus: float) -> int:
    return max(1, int(math.floor(cpus)))


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


# ---- the driver side -----------------------------------------------------------------------------
def _connect(plan: LaunchPlan) -> bool:
    """Start or join Ray as the plan says; returns True when this call started it (and must shut it down)."""
    import ray

    if plan.cluster == "attached":
        if not ray._private.worker.get_dashboard_url():
            print("[ray_train] warning: this Ray has no dashboard; Train V2's placement-group cleaner needs its State "
                  "API and may otherwise remove the workers mid-run. Start Ray with the dashboard (ray[default]).",
                  flush=True)
        return False
    connection = connect(LOCAL if plan.cluster == "local" else None, ship_code=plan.ship_code, log_to_driver=True,
                         quiet=False)
    return connection.started


def _resolve_resources(plan: LaunchPlan) -> float:
    """CPUs per worker, and a clear error where the cluster cannot hold the request."""
    import ray

    total = ray.cluster_resources()
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    max_node_cpus = max((n["Resources"].get("CPU", 0.0) for n in nodes), default=0.0)
    if plan.gpus_per_worker > 0 and total.get("GPU", 0) == 0:
        if plan.cluster == "local":  # a cluster (joined, or this trial's) may add a GPU node: wait for it
            raise LaunchError(
                f"gpus_per_worker={plan.gpus_per_worker} but the Ray cluster has no GPUs; use gpus_per_worker=0"
            )
        print(f"[ray_train] the cluster has no GPU node yet; the {plan.workers} worker(s) wait for the autoscaler "
              "to add one (cluster.yaml, gpu worker type). Ctrl-C aborts.", flush=True)
    if plan.cpus_per_worker is not None:
        return plan.cpus_per_worker
    free = ray.available_resources().get("CPU", 0.0)
    return cpu_share(plan.workers, plan.gpus_per_worker, free, max_node_cpus)


def _storage_note(plan: LaunchPlan) -> None:
    import ray

    alive = [n for n in ray.nodes() if n.get("Alive")]
    if not is_uri(plan.storage) and (len(alive) > 1 or plan.cluster == "address"):
        print(f"[ray_train] storage {plan.storage} is a local path on a multi-node cluster: it must be one shared "
              "folder (NFS) mounted at that path on every node; otherwise use s3://BUCKET/PREFIX. Ray checks this "
              "with a marker file and stops if a node cannot see it.", flush=True)


def _read_summary(plan: LaunchPlan) -> dict:
    path = Path(plan.run_dir) / rundir.SUMMARY
    if plan.run_uri:  # rank 0 may have run on another node: fetch its stored run folder
        Store(plan.run_uri).sync("", plan.run_dir, checkpoints=False).pull()
    if path.exists():
        return json.loads(path.read_text())
    return {}


def _torch_trainer(cfg: Config, plan: LaunchPlan, cpus: float, callbacks: Iterable[Any]):
    """The TorchTrainer of a launch: `plan.workers` ranks of worker_loop with `cpus` CPUs (and the plan's GPUs)
    each, Ray's checkpoints and restarts as the config and the plan say."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    resources = {"CPU": cpus}
    if plan.gpus_per_worker > 0:
        resources["GPU"] = plan.gpus_per_worker
    return TorchTrainer(
        worker_loop,
        train_loop_config={
            "config": cfg.to_dict(),
            "run_dir": plan.run_dir,
            "run_uri": plan.run_uri,
            "cpus_per_worker": cpus,
            "gpus_per_worker": plan.gpus_per_worker,
        },
        torch_config=TorchConfig(backend=plan.backend),
        scaling_config=ray.train.ScalingConfig(
            num_workers=plan.workers, use_gpu=plan.gpus_per_worker > 0, resources_per_worker=resources
        ),
        run_config=ray.train.RunConfig(
            name=plan.name,
            storage_path=plan.storage,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints),
            failure_config=ray.train.FailureConfig(max_failures=plan.max_failures),
            callbacks=list(callbacks) or None,
        ),
    )


def run_ray_train(
    cfg: Config,
    *,
    workers: int = 1,
    gpus_per_worker: float = 0,
    cpus_per_worker: float | None = None,
    storage: str | None = None,
    name: str | None = None,
    max_failures: int = 0,
    resume: bool | str = False,
    callbacks: Iterable[Any] = (),
    run_dir: str | None = None,
    ship_code: bool | None = None,
    plan: LaunchPlan | None = None,
    run_uri: str | None = None,
) -> dict:
    """Train one iCT model with `workers` data-parallel ranks under ray.train.torch.TorchTrainer.

    Joins the Ray that is already initialised (e.g. inside a Tune trial), else RAY_ADDRESS, else starts a local
    Ray (dashboard on 127.0.0.1) and shuts it down at the end. resume: False refuses an existing
    (storage, name); True continues it from its latest checkpoint; "auto" does whichever applies (Tune retries).
    ship_code: send the repository as runtime_env working_dir (default: only to a RAY_ADDRESS cluster whose
    nodes lack the package, see cluster.yaml). plan: a LaunchPlan from plan_launch (then the other launch
    arguments are ignored). Returns the run's summary (summary.json of the run folder) with run_dir (local;
    with URI storage a copy fetched from run_uri), run_uri, experiment_path, checkpoint_path and the last
    reported metrics (`last_report`). Raises
    ray.train.TrainingFailedError when the run fails beyond max_failures restarts.
    """
    if plan is None:
        plan = plan_launch(
            cfg, workers=workers, gpus_per_worker=gpus_per_worker, cpus_per_worker=cpus_per_worker, storage=storage,
            name=name, max_failures=max_failures, resume=resume, run_dir=run_dir, ship_code=ship_code,
            run_uri=run_uri,
        )
    import ray

    started = _connect(plan)
    try:
        cpus = _resolve_resources(plan)
        _storage_note(plan)
        trainer = _torch_trainer(cfg, plan, cpus, callbacks)
        print(f"[ray_train] {'resuming' if plan.resume else 'starting'} {plan.name}: {plan.workers} worker(s) x "
              f"{cpus:g} CPU{f' + {plan.gpus_per_worker:g} GPU' if plan.gpus_per_worker else ''} ({plan.backend}), "
              f"run folder {plan.run_uri or plan.run_dir}", flush=True)
        result = trainer.fit()
    finally:
        if started:
            ray.shutdown()

    summary = _read_summary(plan)
    summary.update(
        run_dir=plan.run_dir,
        run_uri=plan.run_uri,
        experiment_path=result.path,
        checkpoint_path=result.checkpoint.path if result.checkpoint is not None else None,
        last_report=dict(result.metrics or {}),
        name=plan.name,
        storage=plan.storage,
        workers=plan.workers,
        cpus_per_worker=cpus,
        gpus_per_worker=plan.gpus_per_worker,
    )
    summary.setdefault("status", (result.metrics or {}).get("status"))
    return summary


def load_run_config(plan: LaunchPlan) -> Config | None:
    """The resolved config an earlier attempt of this run wrote (for --resume without --preset)."""
    path = Path(plan.run_dir) / rundir.CONFIG
    if plan.run_uri and not path.exists():
        Store(plan.run_uri).sync("", plan.run_dir, checkpoints=False).pull()
    if not path.exists():
        return None
    return from_dict(json.loads(path.read_text()))


__all__ = [
    "LaunchError", "LaunchPlan", "code_runtime_env", "cpu_share", "experiment_exists",
    "load_run_config", "plan_launch", "run_ray_train", "worker_loop",
]

if __name__ == "__main__":  # pragma: no cover
    sys.exit("use tune/train.py (the CLI) or tune.ray_train.run_ray_train")
