"""What a Ray Train run will do, decided before Ray is touched (tune/ray_train.py runs it): the checks of the
request (workers, GPUs, storage, name), where its folders go, whether it resumes, and the CPUs per worker.
`--dry-run` prints the LaunchPlan."""
from __future__ import annotations

import dataclasses
import math
import os
import tempfile
import time
import uuid
from pathlib import Path

from ict_core.config import Config, ConfigError
from ict_core.errors import BadInput
from tune import cluster as _cluster
from tune.cluster import CODE_ON_NODES_ENV, ClusterError, job_ships_code, resolve_address
from tune.store import Store, is_uri, join as _join


DEFAULT_STORAGE = "runs"  # relative to the working directory, like `python -m ict_core.train`


RUN_SUBDIR = "run"


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
