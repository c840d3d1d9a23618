"""The one place that connects to Ray, ships the code and sizes trials; tune/search.py and tune/ray_train.py both
use it (docs/ARCHITECTURE.md, Cluster).

Which Ray (`resolve_address`), like Ray's own `ray.init()`: `--address` when given, else `RAY_ADDRESS`, else the
cluster that `ray start` last started on this node when it is alive (Ray's record of it in its temp dir, a raylet
here that names it, and its port answering), else a new local instance. `local` (as `--address` or `RAY_ADDRESS`)
always starts a private local instance, and ICT_JOIN_RUNNING_CLUSTER=0 turns the third step off: the test suite
sets it (tests/conftest.py) so that no test ever joins a cluster that something else left running on the machine
(ray.cluster_utils.Cluster records itself where `ray start` does).

Whether the cluster can grow (`cluster_shape`): the autoscaler reports its node types to the GCS (min/max count and
resources per type); with them a search queues trials that fit a node type that is not up yet, and refuses one that
fits no node type before any trial starts.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import socket
from pathlib import Path

from ict_core.errors import BadInput
from tune import REPO_ROOT  # noqa: F401 - the one definition, re-exported for tune's modules
LOCAL = "local"
JOIN_ENV = "ICT_JOIN_RUNNING_CLUSTER"  # "0": never join a running cluster found on this node (the test suite)
# Set by cluster.yaml on every node (~/ict_env.sh): the package is installed there, so the repository need not
# travel as a runtime_env working_dir.
CODE_ON_NODES_ENV = "ICT_CODE_ON_NODES"
WORKING_DIR_EXCLUDES = [".git", ".venv", "runs", "results", "**/__pycache__", "*.egg-info", ".pytest_cache"]
# What a trial holds itself when its workers hold their own placement group (docs/ARCHITECTURE.md).
TRIAL_CPU = 0.01


class ClusterError(BadInput):
    """A request the cluster can never hold (resources no node type has), found before any trial starts."""


# ---- which Ray -----------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Target:
    address: str  # LOCAL: start a new local instance
    source: str  # "--address", "RAY_ADDRESS", "running cluster", "none found", "already connected"

    @property
    def local(self) -> bool:
        return self.address == LOCAL

    def describe(self) -> str:
        if self.source == "already connected":
            return f"the Ray this process is connected to ({self.address})"
        if self.local:
            why = {"--address": "--address local", "RAY_ADDRESS": "RAY_ADDRESS=local"}.get(
                self.source, "no --address, no RAY_ADDRESS, no running cluster on this node")
            return f"a new local Ray instance ({why})"
        how = {"--address": "from --address", "RAY_ADDRESS": "from RAY_ADDRESS",
               "running cluster": "the cluster running on this node"}[self.source]
        return f"cluster at {self.address} ({how})"


def running_cluster(temp_dir: str | None = None) -> str | None:
    """GCS address of the cluster `ray start` last started on this node, if it is alive, else None. Ray records
    it in its temp dir (ray_current_cluster); a cluster killed without `ray stop` leaves that record behind, so it
    counts only while a raylet on this node names that address and the address answers."""
    try:
        from ray._private import services, utils
    except ImportError:  # pragma: no cover - ray is a dependency
        return None
    address = utils.read_ray_address(temp_dir)
    if not address:
        return None
    services.find_gcs_addresses.cache_clear()
    if address not in services.find_gcs_addresses():
        return None
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=2):
            return address
    except (OSError, ValueError):
        return None


def resolve_address(address: str | None = None) -> Target:
    """--address, else RAY_ADDRESS, else a running cluster on this node, else a new local instance."""
    if address:
        return Target(address, "--address")
    env = os.environ.get("RAY_ADDRESS", "").strip()
    if env:
        return Target(env, "RAY_ADDRESS")
    found = running_cluster() if os.environ.get(JOIN_ENV, "1") != "0" else None
    if found:
        return Target(found, "running cluster")
    return Target(LOCAL, "none found")


def pythonpath_env() -> dict:
    """PYTHONPATH with this repository first, so Ray's workers import tune.* and ict_core.* from here."""
    parts = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if str(REPO_ROOT) not in parts:
        parts.insert(0, str(REPO_ROOT))
    return {"PYTHONPATH": os.pathsep.join(parts)}


def job_ships_code() -> bool:
    """True when this driver runs as a `ray job submit --working-dir` job: the code already travels."""
    raw = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR", "")
    try:
        runtime_env = json.loads(raw).get("runtime_env", {}) if raw else {}
    except (ValueError, AttributeError):
        return False
    return bool(runtime_env.get("working_dir"))


def ships_code(target: Target) -> bool:
    """The repository travels as a runtime_env working_dir to a cluster whose nodes lack the package."""
    return not target.local and os.environ.get(CODE_ON_NODES_ENV) != "1" and not job_ships_code()


def code_runtime_env() -> dict:
    """runtime_env that ships this repository to every node of a cluster that lacks the package."""
    env = {"working_dir": str(REPO_ROOT), "excludes": list(WORKING_DIR_EXCLUDES)}
    from ict_core.provenance import git_commit

    commit = git_commit()["git_commit"]
    if commit:  # .git does not travel; provenance on the workers can read it from here
        env["env_vars"] = {"ICT_GIT_COMMIT": commit}
    return env


@dataclasses.dataclass(frozen=True)
class Connection:
    target: Target
    started: bool  # this call started or joined Ray, so the caller must ray.shutdown() at the end


def connect(address: str | None = None, *, ship_code: bool | None = None, num_cpus: int | None = None,
            log_to_driver: bool = False, quiet: bool = True) -> Connection:
    """Join or start Ray as `resolve_address` says, unless this process is already connected."""
    import ray

    if ray.is_initialized():
        return Connection(Target(_current_address(), "already connected"), started=False)
    target = resolve_address(address)
    logging = {"logging_level": "ERROR", "configure_logging": True} if quiet else {}
    if target.local:
        os.environ.update(pythonpath_env())  # the local raylet and its workers inherit it
        ray.init(address=LOCAL, num_cpus=num_cpus, include_dashboard=True, dashboard_host="127.0.0.1",
                 log_to_driver=log_to_driver, **logging)
        return Connection(target, started=True)
    ship = ships_code(target) if ship_code is None else ship_code
    runtime_env = code_runtime_env() if ship else {"env_vars": pythonpath_env()}
    # The running cluster's own record: "auto" also finds its token (token auth is on by default).
    init_address = "auto" if target.source == "running cluster" else target.address
    ray.init(address=init_address, runtime_env=runtime_env, log_to_driver=log_to_driver, **logging)
    return Connection(target, started=True)


def _current_address() -> str:
    try:
        import ray

        return ray.get_runtime_context().gcs_address
    except Exception:  # noqa: BLE001 - only for the plan's wording
        return "?"


# ---- what the cluster is and can become ------------------------------------------------------------------
@dataclasses.dataclass
class ClusterShape:
    """Resources now, the node types the autoscaler may add (empty: no autoscaler), and the most it can grow to."""

    cpus: float
    gpus: float
    node_types: list[dict] = dataclasses.field(default_factory=list)  # {name, CPU, GPU, max_count}
    nodes: list[dict] = dataclasses.field(default_factory=list)  # alive nodes: {CPU, GPU}

    @property
    def autoscaling(self) -> bool:
        return any(t["max_count"] > 0 for t in self.node_types)

    def max_total(self) -> dict:
        """CPU/GPU with every node type at its maximum (the cluster as it is when nothing can be added); a node
        type whose resources the config leaves to the cloud counts as unbounded."""
        if not self.autoscaling:
            return {"CPU": self.cpus, "GPU": self.gpus}
        top = {}
        for key, now in (("CPU", self.cpus), ("GPU", self.gpus)):
            per_type = [math.inf if t[key] is None else t[key] * t["max_count"] for t in self.node_types]
            top[key] = max(sum(per_type), now)
        return top

    def node_kinds(self) -> list[dict]:
        """Resources of every kind of node a bundle could land on: the nodes up now and every node type."""
        kinds = [{"CPU": n.get("CPU", 0.0), "GPU": n.get("GPU", 0.0)} for n in self.nodes]
        kinds += [{"CPU": math.inf if t["CPU"] is None else t["CPU"], "GPU": math.inf if t["GPU"] is None else t["GPU"]}
                  for t in self.node_types if t["max_count"] > 0]
        return kinds or [{"CPU": self.cpus, "GPU": self.gpus}]

    def describe(self) -> str:
        now = f"{self.cpus:g} CPU / {self.gpus:g} GPU now"
        if not self.autoscaling:
            return now
        types = ", ".join(f"{t['name']} x{t['max_count']} (" + ("resources from the cloud" if t["CPU"] is None
                                                                 else f"{t['CPU']:g} CPU, {t['GPU']:g} GPU") + ")"
                          for t in self.node_types if t["max_count"] > 0)
        top = self.max_total()
        return f"{now}, autoscaling to {top['CPU']:g} CPU / {top['GPU']:g} GPU ({types})"


def autoscaler_node_types(gcs_address: str | None = None) -> list[dict]:
    """The node types the autoscaler may start ([] when no autoscaler runs): {name, CPU, GPU, max_count}; CPU or
    GPU is None where the config leaves it to the cloud (`resources: {}`), which then never refuses a trial.

    Ray's autoscaler v2 reports them to the GCS; the v1 autoscaler (the default) reads them from the config file
    named on its command line (`ray up` writes ~/ray_bootstrap_config.yaml), which a driver on the head (`ray
    exec`, `ray job submit`) reads too."""
    import ray._private.state

    try:
        config = ray._private.state.state.get_cluster_config()
    except Exception:  # noqa: BLE001 - an older GCS
        config = None
    if config is not None and config.node_group_configs:
        return [{"name": g.name, "CPU": float(dict(g.resources).get("CPU", 0)),
                 "GPU": float(dict(g.resources).get("GPU", 0)),
                 "max_count": int(g.max_count) if int(g.max_count) >= 0 else 1_000_000}
                for g in config.node_group_configs]
    # A local instance runs the same monitor without a config (a fixed cluster); a driver that is not on the
    # head cannot see the monitor and treats the cluster as fixed (--max-concurrent still queues trials).
    path = _autoscaling_config_path(gcs_address or _current_address())
    return _types_from_config(path) if path else []


def _autoscaling_config_path(gcs_address: str) -> str | None:
    """The --autoscaling-config of the monitor process on this node that serves `gcs_address`."""
    import psutil

    for proc in psutil.process_iter(["cmdline"]):
        try:
            cmdline = proc.info["cmdline"] or []
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if not any("monitor.py" in part for part in cmdline) or f"--gcs-address={gcs_address}" not in cmdline:
            continue
        for part in cmdline:
            if part.startswith("--autoscaling-config="):
                return os.path.expanduser(part.split("=", 1)[1])
    return None


def _types_from_config(path: str) -> list[dict]:
    import yaml

    try:
        config = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, ValueError):
        return []
    out = []
    for name, node_type in (config.get("available_node_types") or {}).items():
        res = node_type.get("resources") or {}
        known = bool(res)
        head = name == config.get("head_node_type")
        out.append({"name": name, "CPU": float(res.get("CPU", 0)) if known else None,
                    "GPU": float(res.get("GPU", 0)) if known else None,
                    "max_count": 1 if head else int(node_type.get("max_workers", config.get("max_workers", 0)))})
    return out


def cluster_shape() -> ClusterShape:
    """The connected cluster's shape (needs Ray up)."""
    import ray

    total = ray.cluster_resources()
    nodes = [{"CPU": n["Resources"].get("CPU", 0.0), "GPU": n["Resources"].get("GPU", 0.0)}
             for n in ray.nodes() if n.get("Alive")]
    return ClusterShape(float(total.get("CPU", 0)), float(total.get("GPU", 0)), autoscaler_node_types(), nodes)



# ---- sizing --------------------------------------------------------------------------------------------
def cpu_share(workers: int, gpus_per_worker: float, free_cpus: float, max_node_cpus: float) -> float:
    """Default CPUs per Ray Train worker: all free CPUs split evenly (whole CPUs when there are enough, else a
    fraction down to 0.01, as inside a Tune trial on a small machine); 1 per GPU worker, whose GPU nodes may not
    exist yet."""
    if gpus_per_worker > 0:
        return 1.0
    share = free_cpus / workers
    if share >= 1:
        return float(max(1, min(math.floor(share), math.floor(max_node_cpus))))
    share = math.floor(share * 100) / 100
    if share < 0.01:
        raise ClusterError(
            f"{workers} workers do not fit in the {free_cpus:g} free CPUs of the cluster; pass cpus_per_worker "
            "explicitly or use fewer workers"
        )
    return share


def _fits_a_node(cpu: float, gpu: float, shape: ClusterShape) -> bool:
    return any(cpu <= k["CPU"] + 1e-9 and gpu <= k["GPU"] + 1e-9 for k in shape.node_kinds())


def trial_resources(max_concurrent: int, workers: int, gpus_per_worker: float, shape: ClusterShape | None,
                    ray_train: bool = False, concurrency_given: bool = False) -> dict:
    """Trial resources and how many trials run at once (docs/ARCHITECTURE.md, Trial resources).

    A one-worker CPU trial trains in its own process and holds a CPU share; a Ray Train trial holds 0.01 CPU while
    its workers hold their own placement group. On a fixed cluster (or `shape` None: the machine, for --dry-run)
    at most the trials that fit now run at once, as before. On a cluster that can grow (the autoscaler reports
    node types) or when the concurrency was given, up to `max_concurrent` trials are submitted and those that do
    not fit yet wait as resource demand for the autoscaler. A trial that fits no node (up or addable) is refused."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ClusterError(f"--workers-per-trial must be an integer >= 1, got {workers!r}")
    if gpus_per_worker < 0:
        raise ClusterError(f"--gpus-per-worker must be >= 0, got {gpus_per_worker}")
    if max_concurrent < 1:
        raise ClusterError(f"--max-concurrent must be >= 1, got {max_concurrent}")
    growable = shape is not None and shape.autoscaling
    queue = growable or (concurrency_given and shape is not None)
    capacity = shape.max_total() if shape is not None else {"CPU": float(os.cpu_count() or 1), "GPU": 0.0}
    # A node type whose size the cloud decides counts as large (1e6), so it never refuses or limits a trial.
    cpus, gpus = min(capacity["CPU"], 1e6), min(capacity["GPU"], 1e6)
    biggest_cpu = min(max((k["CPU"] for k in shape.node_kinds()), default=cpus), 1e6) if shape is not None else cpus
    info = {"cluster": {"CPU": cpus, "GPU": gpus}, "autoscaling": growable, "queue": queue}
    if shape is not None:
        info["shape"] = shape.describe()
    if workers == 1 and gpus_per_worker > 0 and not ray_train:
        # One GPU worker trains in the trial process, which holds 1 CPU and its GPU share itself (no TorchTrainer
        # start per seed).
        fit = int(min(cpus, gpus // gpus_per_worker if gpus else 0))
        if shape is not None and (not _fits_a_node(1, gpus_per_worker, shape) or fit < 1):
            where = ("no node of the cluster, and no node type its autoscaler can add, has that"
                     if growable else "the cluster has")
            raise ClusterError(f"one trial needs 1 CPU and {gpus_per_worker:g} GPU on one node; {where}: "
                               f"{shape.describe()}")
        concurrent = max_concurrent if queue and concurrency_given else max(1, min(max_concurrent, fit))
        return {"mode": "in-trial", "trial": {"cpu": 1, "gpu": gpus_per_worker}, "cpus_per_trial": 1,
                "gpus_per_worker": gpus_per_worker, "max_concurrent_trials": concurrent, **info}
    if workers == 1 and gpus_per_worker == 0 and not ray_train:
        per_trial = max(1, min(int(cpus // max_concurrent), int(biggest_cpu) or 1))
        fit = int(cpus // per_trial)
        concurrent = max_concurrent if queue and concurrency_given else max(1, min(max_concurrent, fit))
        if shape is not None and not _fits_a_node(per_trial, 0, shape):
            raise ClusterError(f"one trial needs {per_trial} CPU on one node; no node of the cluster has that "
                               f"({shape.describe()})")
        return {"mode": "in-trial", "trial": {"cpu": per_trial}, "cpus_per_trial": per_trial,
                "max_concurrent_trials": concurrent, **info}
    # One CPU per worker where it fits; on a small machine a share, so one trial still runs (0.49 on 2 CPUs
    # with 2 workers: docs/ARCHITECTURE.md, Trial resources).
    cpus_per_worker = 1.0 if cpus >= TRIAL_CPU + workers else max(
        0.01, math.floor((cpus - TRIAL_CPU) / workers * 100) / 100)
    need_cpu = TRIAL_CPU + workers * cpus_per_worker
    fit = int(cpus // need_cpu)
    if gpus_per_worker > 0:
        fit = min(fit, int(gpus // (workers * gpus_per_worker))) if gpus else 0
    if shape is not None:
        if not _fits_a_node(cpus_per_worker, gpus_per_worker, shape) or fit < 1:
            where = ("no node of the cluster, and no node type its autoscaler can add, has that"
                     if growable else "the cluster has")
            raise ClusterError(f"one trial needs {workers} worker(s) x ({cpus_per_worker:g} CPU, "
                               f"{gpus_per_worker:g} GPU); {where}: {shape.describe()}")
    # On a growable cluster `fit` counts the nodes the autoscaler may still add: the rest queue as demand.
    concurrent = max_concurrent if queue and concurrency_given else max(1, min(max_concurrent, fit))
    return {"mode": "ray-train", "trial": {"cpu": TRIAL_CPU}, "cpus_per_trial": cpus_per_worker, "workers": workers,
            "gpus_per_worker": gpus_per_worker, "max_concurrent_trials": concurrent, **info}
