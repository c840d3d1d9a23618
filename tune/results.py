"""The Parquet tables a search writes and analysis/ reads (docs/ARCHITECTURE.md, "Parquet tables").

trials.parquet: one row per training run (one seed of one configuration); evals.parquet: one row per run and
evaluation. Both have explicit pyarrow schemas: the config columns take their types from ict_core.config's field
types, so a column is typed even when every value in it is null. Files are rewritten whole and atomically (a temp
file in the same folder, then os.replace), so a reader or a killed driver never sees half a table.

Beyond the documented columns, trials.parquet carries `node_id` (the Ray node that ran the trial) and `run_key`
(a hash of stratum, resolved config and seed: the identity used to never write a run twice across resumes).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from dataclasses import fields
from pathlib import Path
from typing import Any, Iterable, get_args, get_type_hints

import pyarrow as pa
import pyarrow.parquet as pq

from ict_core.config import Config, all_keys

STATUSES = ("completed", "pruned", "diverged", "errored")


def _config_types() -> dict[str, pa.DataType]:
    out = {}
    hints = get_type_hints(Config)
    for section in (f.name for f in fields(Config)):
        cls = hints[section]
        for f in fields(cls):
            hint = get_type_hints(cls)[f.name]
            base = next((a for a in get_args(hint) if a is not type(None)), hint)
            out[f"{section}.{f.name}"] = {bool: pa.bool_(), int: pa.int64(), float: pa.float64(),
                                          str: pa.string(), tuple: pa.string()}[base]
    return out


CONFIG_TYPES = _config_types()

_TRIAL_HEAD = [
    ("experiment", pa.string()), ("space", pa.string()), ("stratum", pa.string()), ("trial_id", pa.string()),
    ("config_id", pa.string()), ("seed", pa.int64()), ("status", pa.string()), ("error", pa.string()),
]
_TRIAL_TAIL = [
    ("dataset", pa.string()), ("dim", pa.int64()), ("final_fd", pa.float64()), ("best_fd", pa.float64()),
    ("final_fd_2step", pa.float64()), ("final_kid", pa.float64()), ("final_loss", pa.float64()),
    ("final_loss_train", pa.float64()), ("final_loss_heldout", pa.float64()), ("final_nn_dist", pa.float64()),
    ("final_nn_dist_ref", pa.float64()), ("steps", pa.int64()), ("images_seen", pa.int64()),
    ("wall_s", pa.float64()), ("device", pa.string()), ("world_size", pa.int64()), ("git_commit", pa.string()),
    ("versions", pa.string()), ("node_id", pa.string()), ("run_key", pa.string()),
]
TRIALS_SCHEMA = pa.schema(_TRIAL_HEAD + [(k, CONFIG_TYPES[k]) for k in all_keys()] + _TRIAL_TAIL)

EVAL_METRICS = ("num_points", "loss", "fd", "fd_2step", "kid", "loss_train", "loss_heldout", "nn_dist",
                "nn_dist_ref", "images_seen", "elapsed_s")
EVALS_SCHEMA = pa.schema(
    [("experiment", pa.string()), ("trial_id", pa.string()), ("config_id", pa.string()), ("step", pa.int64()),
     ("num_points", pa.int64()), ("loss", pa.float64()), ("fd", pa.float64()), ("fd_2step", pa.float64()),
     ("kid", pa.float64()), ("loss_train", pa.float64()), ("loss_heldout", pa.float64()),
     ("nn_dist", pa.float64()), ("nn_dist_ref", pa.float64()), ("images_seen", pa.int64()),
     ("elapsed_s", pa.float64())]
)


def _cell(value: Any, dtype: pa.DataType) -> Any:
    """One Python value converted to what its column type holds; None stays null."""
    if value is None:
        return None
    if pa.types.is_string(dtype):
        if isinstance(value, (list, tuple)):
            return ",".join(str(v) for v in value)
        if isinstance(value, dict):
            return json.dumps(value, sort_keys=True)
        return str(value)
    if pa.types.is_boolean(dtype):
        return bool(value)
    if pa.types.is_integer(dtype):
        try:
            value = float(value)
        except (TypeError, ValueError):
            return None
        return int(value) if math.isfinite(value) else None
    if pa.types.is_floating(dtype):
        try:
            return float(value)
        except (TypeError, ValueError):
            return None
    return value


def to_table(rows: list[dict], schema: pa.Schema) -> pa.Table:
    """Rows (dicts) as a table of exactly `schema`: missing keys are null, unknown keys are an error."""
    names = set(schema.names)
    for row in rows:
        extra = set(row) - names
        if extra:
            raise KeyError(f"columns not in the schema: {sorted(extra)}")
    columns = {f.name: pa.array([_cell(r.get(f.name), f.type) for r in rows], type=f.type) for f in schema}
    return pa.Table.from_pydict(columns, schema=schema)


def write_atomic(table: pa.Table, path: str | os.PathLike) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(obj: Any, path: str | os.PathLike) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w") as fh:
        json.dump(obj, fh, indent=2, sort_keys=True, default=str)
        fh.write("\n")
    os.replace(tmp, path)


def run_key(stratum: str, config_flat: dict, seed: int) -> str:
    """Identity of one training run, stable across driver restarts (unlike Tune's trial ids after a
    restore that finds no snapshot). train.seed is part of the config; `seed` is repeated for clarity."""
    body = json.dumps({"stratum": stratum, "config": config_flat, "seed": seed}, sort_keys=True, default=str)
    return hashlib.sha1(body.encode()).hexdigest()[:16]


class ResultTables:
    """The experiment's trials/evals tables, kept in memory and rewritten whole after each finished trial.

    A run already written is never written again: a row whose trial_id or run_key is present is dropped, except
    that an errored row gives way to a later non-errored run of the same run_key (a trial retried on resume)."""

    def __init__(self, experiment_dir: str | os.PathLike):
        self.dir = Path(experiment_dir)
        self.trials_path = self.dir / "trials.parquet"
        self.evals_path = self.dir / "evals.parquet"
        self.trials = pq.read_table(self.trials_path).to_pylist() if self.trials_path.exists() else []
        self.evals = pq.read_table(self.evals_path).to_pylist() if self.evals_path.exists() else []

    def known(self, run_key_or_trial_id: str) -> bool:
        return any(r["run_key"] == run_key_or_trial_id or r["trial_id"] == run_key_or_trial_id
                   for r in self.trials)

    def add(self, trial_rows: Iterable[dict], eval_rows: Iterable[dict]) -> list[dict]:
        """Add the runs not yet recorded (and their evaluations); returns the rows that were added."""
        eval_rows = list(eval_rows)
        added = []
        for row in trial_rows:
            if row["status"] not in STATUSES:
                raise ValueError(f"status must be one of {', '.join(STATUSES)}, got {row['status']!r}")
            old = [r for r in self.trials if r["trial_id"] == row["trial_id"] or r["run_key"] == row["run_key"]]
            if old and not (all(r["status"] == "errored" for r in old) and row["status"] != "errored"):
                continue
            gone = {r["trial_id"] for r in old}
            self.trials = [r for r in self.trials if r["trial_id"] not in gone]
            self.evals = [e for e in self.evals if e["trial_id"] not in gone]
            self.trials.append(row)
            self.evals.extend(e for e in eval_rows if e["trial_id"] == row["trial_id"])
            added.append(row)
        return added

    def write(self) -> None:
        write_atomic(to_table(self.trials, TRIALS_SCHEMA), self.trials_path)
        write_atomic(to_table(self.evals, EVALS_SCHEMA), self.evals_path)


def _loads(text, default):
    if not text:
        return default
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return default


def rows_from_result(result: dict, *, experiment: str, space: str, stratum: str, config_id: str,
                     current: dict, error: str | None = None, history: list | None = None,
                     metric: str = "fd") -> tuple[list[dict], list[dict]]:
    """trials/evals rows of one finished Tune trial, from its last result (see tune/trial.py).

    Seeds listed in the result's `ict_done` keep their own status (completed or diverged); a seed still running
    when the trial ended is `errored` when `error` is given, else `pruned` (a scheduler stopped it). `current`
    ({"seed", "config"}) describes that seed when the trial died before its first report. `history` is the
    evaluation history gathered by the driver, used when the result carries none (Ray Train trials)."""
    from tune.space import dataset_of

    result = result or {}
    done = _loads(result.get("ict_done"), [])
    evals = _loads(result.get("ict_history"), None) or history or []
    current = _loads(result.get("ict_current"), None) or current
    finished = {d["seed"] for d in done}
    runs = [dict(d) for d in done]
    if not result.get("ict_final") and current["seed"] not in finished:
        # A seed whose last report was its final evaluation finished, even if a scheduler stopped the trial then.
        ended = result.get("status") if result.get("status") in ("completed", "diverged") else "pruned"
        run = {"seed": current["seed"], "status": "errored" if error else ended, "config": current["config"],
               "node_id": result.get("node_id")}
        for key in ("fd", "fd_2step", "kid", "loss", "loss_train", "loss_heldout", "nn_dist", "nn_dist_ref"):
            run[f"final_{key}"] = result.get(key)
        seed_fds = [e.get("fd") for e in evals if e.get("seed") == current["seed"]]
        seed_fds = [v for v in seed_fds if v is not None and math.isfinite(v)]
        run.update(best_fd=min(seed_fds) if seed_fds else None, steps=result.get("step"),
                   images_seen=result.get("images_seen"), wall_s=result.get("elapsed_s"))
        runs.append(run)
    elif error and runs:
        # The trial failed after its last seed finished (e.g. in the final report): keep the runs, note the error.
        runs[-1]["error"] = error

    trial_rows, eval_rows = [], []
    for run in runs:
        config = run["config"]
        trial_id = f"{config_id}-seed{run['seed']}"
        dataset, dim = dataset_of(config["data.name"], config["data.resolution"])
        row = {"experiment": experiment, "space": space, "stratum": stratum, "trial_id": trial_id,
               "config_id": config_id, "seed": run["seed"], "status": run["status"],
               "error": error if run["status"] == "errored" else run.get("error"),
               "dataset": dataset, "dim": dim, "run_key": run_key(stratum, config, run["seed"])}
        row.update({k: v for k, v in config.items() if k in CONFIG_TYPES})
        for key in ("final_fd", "best_fd", "final_fd_2step", "final_kid", "final_loss", "final_loss_train",
                    "final_loss_heldout", "final_nn_dist", "final_nn_dist_ref", "steps", "images_seen", "wall_s",
                    "device", "world_size", "git_commit", "versions", "node_id"):
            if run.get(key) is not None:
                row[key] = run[key]
        trial_rows.append(row)
        for e in evals:
            if e.get("seed") == run["seed"]:
                eval_rows.append({"experiment": experiment, "trial_id": trial_id, "config_id": config_id,
                                  **{k: e.get(k) for k in ("step", *EVAL_METRICS)}})
    return trial_rows, eval_rows
