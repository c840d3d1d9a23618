"""Experiment trackers a search can feed (`--tracker mlflow`, `--tracker wandb`): one tracker run per recorded
training run (one seed of one configuration), with the run's full resolved config as parameters, every
evaluation metric at its step, and its final metrics.

The driver logs them (tune/progress.ParquetCallback) from the rows it records in trials.parquet / evals.parquet,
which are built from the run folders, so both trial paths (in the trial process and through Ray Train) feed the
trackers alike, and a resumed search logs only runs it had not recorded before (a run is identified by its
run_key: an MLflow tag, the W&B run id).

- MLflow (the `mlflow` extra, mlflow-skinny): an MLflow experiment named after the search's experiment; tracking
  URI `--tracking-uri`, by default a local SQLite store in the experiment folder, `sqlite:///EXP/mlflow.db`
  (`mlflow ui --backend-store-uri sqlite:///EXP/mlflow.db`). Tags: stratum, config_id, seed, status, trial_id.
- Weights & Biases (the `wandb` extra): a W&B project named after the experiment, one run per seed grouped by
  config_id, job_type the stratum, written under EXP/wandb. Offline unless WANDB_MODE says otherwise (no network
  is used in offline mode; `wandb sync EXP/wandb/offline-run-*` uploads later).
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path

from ict_core.errors import BadInput
from ict_core.records import CONFIG_TYPES, EVAL_METRICS, FINAL_METRICS

TRACKERS = ("mlflow", "wandb")
_PACKAGE = {"mlflow": "mlflow", "wandb": "wandb"}
MLFLOW_DB = "mlflow.db"
WANDB_DIR = "wandb"
RUN_TAGS = ("stratum", "config_id", "seed", "status", "trial_id")


def check_trackers(names, tracking_uri: str | None = None) -> list[str]:
    """The trackers named by --tracker (repeatable or comma-separated), checked before Ray starts: each must be
    known and its package installed."""
    out = []
    for name in [n.strip() for value in (names or []) for n in str(value).split(",") if n.strip()]:
        if name not in TRACKERS:
            raise BadInput(f"--tracker: unknown tracker {name!r}; one of {', '.join(TRACKERS)}")
        try:
            __import__(_PACKAGE[name])
        except ImportError:
            raise BadInput(f"--tracker {name}: the {name} package is not installed; pip install -e '.[{name}]'") from None
        if name not in out:
            out.append(name)
    if tracking_uri and "mlflow" not in out:
        raise BadInput("--tracking-uri is for --tracker mlflow; add --tracker mlflow or leave --tracking-uri out")
    return out


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _param(value) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(str(v) for v in value) + "]"
    return str(value)


def run_config(row: dict) -> dict:
    """The run's resolved config (every dotted key of its trials row) and where it belongs in the search."""
    return {**{k: row[k] for k in RUN_TAGS if k in row},
            **{k: row.get(k) for k in CONFIG_TYPES if k in row}}


class MlflowTracker:
    def __init__(self, experiment_dir, experiment: str, tracking_uri: str | None = None):
        self.uri = tracking_uri or f"sqlite:///{Path(experiment_dir).resolve() / MLFLOW_DB}"
        self.experiment = experiment
        self._client = None
        self._experiment_id = None

    def _setup(self):
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.uri)
            found = self._client.get_experiment_by_name(self.experiment)
            self._experiment_id = found.experiment_id if found else self._client.create_experiment(self.experiment)
        return self._client

    def log_run(self, row: dict, evals: list[dict]) -> None:
        from mlflow.entities import Metric, Param, RunTag

        client = self._setup()
        key = row.get("run_key")
        if key and client.search_runs([self._experiment_id], filter_string=f"tags.run_key = '{key}'",
                                      max_results=1):
            return  # logged by a driver killed before it recorded the run
        tags = {k: str(row[k]) for k in (*RUN_TAGS, "run_key") if row.get(k) is not None}
        run = client.create_run(self._experiment_id, run_name=row["trial_id"], tags=tags)
        run_id = run.info.run_id
        params = [Param(k, _param(v)) for k, v in run_config(row).items() if k not in RUN_TAGS]
        now = int(time.time() * 1000)
        metrics = [Metric(k, float(e[k]), now, int(e["step"])) for e in evals for k in EVAL_METRICS if _finite(e.get(k))]
        metrics += [Metric(f"final_{k}", float(row[f"final_{k}"]), now, int(row.get("steps") or 0))
                    for k in FINAL_METRICS if _finite(row.get(f"final_{k}"))]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            client.log_batch(run_id, params=params[i:i + 100])
        for i in range(0, len(metrics), 1000):
            client.log_batch(run_id, metrics=metrics[i:i + 1000], tags=[RunTag("ict.status", str(row.get("status")))]
                             if i == 0 else [])
        client.set_terminated(run_id, status="FAILED" if row.get("status") == "errored" else "FINISHED")


class WandbTracker:
    def __init__(self, experiment_dir, experiment: str):
        self.dir = Path(experiment_dir).resolve()
        self.experiment = experiment

    def log_run(self, row: dict, evals: list[dict]) -> None:
        import wandb

        mode = os.environ.get("WANDB_MODE") or "offline"
        config = {k: list(v) if isinstance(v, tuple) else v for k, v in run_config(row).items()}
        # The run's identity (run_key) as W&B's run id: a run logged again after a driver restart is the same run.
        run = wandb.init(project=self.experiment, name=row["trial_id"], group=str(row.get("config_id")),
                         id=row.get("run_key") or None, resume="allow",
                         job_type=str(row.get("stratum")), config=config, dir=str(self.dir), mode=mode,
                         reinit="create_new", settings=wandb.Settings(silent=True, console="off",
                                                                      x_disable_stats=True))
        try:
            for e in sorted(evals, key=lambda e: e["step"]):
                values = {k: float(e[k]) for k in EVAL_METRICS if _finite(e.get(k))}
                if values:
                    run.log(values, step=int(e["step"]))
            run.summary.update({f"final_{k}": float(row[f"final_{k}"]) for k in FINAL_METRICS
                                if _finite(row.get(f"final_{k}"))})
            run.summary["status"] = str(row.get("status"))
        finally:
            run.finish(exit_code=1 if row.get("status") == "errored" else 0)


def make_trackers(names, experiment_dir, experiment: str, tracking_uri: str | None = None) -> list:
    out = []
    for name in names or []:
        out.append(MlflowTracker(experiment_dir, experiment, tracking_uri) if name == "mlflow"
                   else WandbTracker(experiment_dir, experiment))
    return out
