"""Ray Train adapter: one iCT run as a data-parallel job of W workers (TorchTrainer, Train V2).

The worker function is a thin adapter around `ict_core.trainer.train`: the trainer shards the global batch
over the torch.distributed ranks that TorchTrainer sets up, and every rank forwards its reports to
`ray.train.report` (rank 0 attaches the checkpoint folder). ict_core never imports Ray.
This module is the driver side; the worker side is tune/train_worker.py, the checks and decisions made before Ray
is touched (LaunchPlan, `--dry-run`) tune/launch_plan.py.

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

import json
import sys
from pathlib import Path
from typing import Any, Iterable

from ict_core import rundir
from ict_core.config import Config, from_dict
from tune.cluster import LOCAL, connect
from tune.launch_plan import LaunchError, LaunchPlan, cpu_share, plan_launch
from tune.store import Store, is_uri
from tune.train_worker import worker_loop


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


__all__ = ["load_run_config", "run_ray_train"]

if __name__ == "__main__":  # pragma: no cover
    sys.exit("use tune/train.py (the CLI) or tune.ray_train.run_ray_train")
