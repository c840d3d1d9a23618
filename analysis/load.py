"""Find experiment folders and load their Parquet tables, checking the documented schema.

An experiment folder holds `trials.parquet` (one row per training run, i.e. one seed of one
configuration) and usually `evals.parquet` (one row per run and evaluation); the columns are listed
in docs/ARCHITECTURE.md, "Parquet tables". Any folder above experiment folders may be given: they
are found recursively. Ray's own trial folders are never opened. The one other file read is the
experiment's `experiment.json`, for the name of its budget (smoke, cpu, gpu, paper), which the tables
do not carry; it becomes the `budget` column of the trials (NaN when unknown).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from ict_core.errors import BadInput
from ict_core.records import EVALS_FILE, REQUIRED_EVAL_COLUMNS, REQUIRED_TRIAL_COLUMNS, STATUSES, TRIALS_FILE

EXPERIMENT_FILE = "experiment.json"

# The columns a table must have are REQUIRED_TRIAL_COLUMNS and REQUIRED_EVAL_COLUMNS of ict_core/records.py, the
# schemas tune/ writes with (the config keys follow under their dotted names, e.g. "loss.huber_c"; each analysis
# checks the config columns it needs). Optional (newer) columns: trials final_fd_student, final_fd_se, run_dir,
# ...; evals fd_student, fd_se.
# A run is identified by what was trained: the same (experiment, stratum, config, seed) twice is one run
# written twice (e.g. a trial restarted on another node), not another seed.
RUN_IDENTITY = ("experiment_dir", "stratum", "config_id", "seed")
# Which of the repeated rows of one run is kept: the most complete outcome, then the last written.
_STATUS_RANK = {status: rank for rank, status in enumerate(STATUSES)}  # completed, pruned, diverged, errored


class SchemaError(BadInput):
    """A results folder or table that does not follow the documented Parquet schema."""


def require_columns(df: pd.DataFrame, columns: Iterable[str], what: str) -> None:
    """Raise SchemaError naming every column of `columns` that `df` lacks; `what` names the table."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise SchemaError(
            f"{what} lacks column(s) {', '.join(repr(c) for c in missing)}; "
            f"present: {', '.join(map(str, df.columns))}"
        )


def _is_ray_trial_dir(names: set[str]) -> bool:
    # Ray Tune writes params.json/result.json per trial and experiment_state-*.json per run.
    return ("params.json" in names and ("result.json" in names or "progress.csv" in names)) or any(
        n.startswith("experiment_state-") for n in names
    )


def find_experiments(paths: str | Path | Iterable[str | Path]) -> list[Path]:
    """Every folder holding a trials.parquet at or below `paths`, sorted and without duplicates.

    A given path that does not exist, or under which no trials.parquet is found, raises SchemaError.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    found: list[Path] = []
    for root in map(Path, paths):
        if not root.exists():
            raise SchemaError(f"results folder {root} does not exist")
        if root.is_file():
            if root.name != TRIALS_FILE:
                raise SchemaError(f"{root} is a file; give a folder holding {TRIALS_FILE} (or a folder above it)")
            found.append(root.parent.resolve())
            continue
        hits = []
        for folder, dirs, files in os.walk(root):
            names = set(files)
            if TRIALS_FILE in names:
                # An experiment folder holds no other experiment; below it live Ray's own folders.
                hits.append(Path(folder).resolve())
                dirs[:] = []
                continue
            if _is_ray_trial_dir(names):
                dirs[:] = []
                continue
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        if not hits:
            raise SchemaError(f"no {TRIALS_FILE} found in {root} or any folder below it")
        found += hits
    return sorted(set(found))


def _list_text(value) -> str | None:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    return ",".join(str(v) for v in value)


def _struct_text(value) -> str | None:
    if not isinstance(value, dict):
        return None
    return json.dumps({k: v for k, v in value.items() if v is not None}, sort_keys=True)


def flatten_nested(df: pd.DataFrame) -> pd.DataFrame:
    """List-valued columns (network.channel_mult, ...) as the text "1,2" ("" for an empty list) and struct
    columns (versions) as JSON text: what tables written before the typed columns hold, so analyses compare,
    group and print old and new folders alike (numpy arrays cannot be grouped or hashed)."""
    out = df
    for column in df.columns:
        values = df[column]
        if values.dtype != object:
            continue
        sample = next((v for v in values if v is not None and not (isinstance(v, float) and np.isnan(v))), None)
        if isinstance(sample, (np.ndarray, list, tuple)):
            out = out.assign(**{column: values.map(_list_text)})
        elif isinstance(sample, dict):
            out = out.assign(**{column: values.map(_struct_text)})
    return out


def _read(path: Path, columns: tuple[str, ...]) -> pd.DataFrame:
    try:
        df = pd.read_parquet(path)
    except Exception as err:  # pyarrow raises several types for unreadable files
        raise SchemaError(f"cannot read {path} as Parquet: {err}") from None
    require_columns(df, columns, str(path))
    return flatten_nested(df)


def experiment_budget(folder: Path) -> str | None:
    """The budget named in FOLDER/experiment.json, or None when the file or the key is absent or unreadable."""
    try:
        info = json.loads((Path(folder) / EXPERIMENT_FILE).read_text())
    except (OSError, ValueError):
        return None
    budget = info.get("budget") if isinstance(info, dict) else None
    return str(budget) if budget is not None else None


def drop_repeated_runs(trials: pd.DataFrame) -> pd.DataFrame:
    """One row per (experiment, stratum, config_id, seed): the best status (completed, pruned, diverged,
    errored in that order), then the last written. The number of rows dropped is in
    `.attrs["repeated_rows"]` and their trial_ids in `.attrs["dropped_trial_ids"]`."""
    key = [c for c in RUN_IDENTITY if c in trials.columns]
    if len(key) < 3 or trials.empty:
        out = trials.copy()
        out.attrs.update(repeated_rows=0, dropped_trial_ids=[])
        return out
    rank = trials["status"].astype(str).map(_STATUS_RANK).fillna(9)
    order = trials.assign(_rank=rank, _pos=np.arange(len(trials)))
    order = order.sort_values(["_rank", "_pos"], ascending=[True, False], kind="stable")
    keep = ~order.duplicated(key, keep="first")
    dropped = order.loc[~keep, "trial_id"].astype(str).tolist()
    out = trials.loc[sorted(order.index[keep])]
    out.attrs.update(repeated_rows=len(dropped), dropped_trial_ids=dropped)
    return out


def load_trials(paths) -> pd.DataFrame:
    """All runs of the experiments at or below `paths`, one row per run.

    Shape: the columns of trials.parquet (REQUIRED_TRIAL_COLUMNS plus dotted config keys, and the optional
    columns when present), `experiment_dir`, and `budget` (from experiment.json unless the table has it).
    A config key absent from one experiment is NaN in its rows. Status values outside STATUSES raise.
    Repeated rows of one run are dropped (see drop_repeated_runs; the count is in .attrs).
    """
    frames = []
    for folder in find_experiments(paths):
        df = _read(folder / TRIALS_FILE, REQUIRED_TRIAL_COLUMNS)
        bad = sorted(set(df["status"].dropna().astype(str)) - set(STATUSES))
        if bad:
            raise SchemaError(f"{folder / TRIALS_FILE}: status must be one of {', '.join(STATUSES)}; got {bad}")
        df = df.assign(experiment_dir=str(folder))
        if "budget" not in df.columns:
            df["budget"] = experiment_budget(folder)
        frames.append(df)
    trials = pd.concat(frames, ignore_index=True, sort=False)
    dup = trials.duplicated(["experiment_dir", "trial_id"])
    if dup.any():
        raise SchemaError(f"trial_id must be unique per experiment; repeated: {sorted(trials.loc[dup, 'trial_id'])[:5]}")
    return drop_repeated_runs(trials).reset_index(drop=True)


def load_evals(paths) -> pd.DataFrame:
    """All evaluations of the experiments at or below `paths`, one row per run and evaluation.

    Shape: the columns of evals.parquet (REQUIRED_EVAL_COLUMNS) and `experiment_dir`. Experiments without an
    evals.parquet contribute no rows; an empty frame with those columns is returned if none has one.
    """
    frames = []
    for folder in find_experiments(paths):
        path = folder / EVALS_FILE
        if path.exists():
            frames.append(_read(path, REQUIRED_EVAL_COLUMNS).assign(experiment_dir=str(folder)))
    if not frames:
        return pd.DataFrame(columns=list(REQUIRED_EVAL_COLUMNS) + ["experiment_dir"])
    return pd.concat(frames, ignore_index=True, sort=False)


@dataclass
class Results:
    """The loaded tables of one or several experiments."""

    trials: pd.DataFrame
    evals: pd.DataFrame
    experiments: list[Path]


def load_results(paths) -> Results:
    """Load trials and evals of every experiment at or below `paths`."""
    experiments = find_experiments(paths)
    trials = load_trials(experiments)
    evals = load_evals(experiments)
    if not evals.empty and "experiment_dir" in evals.columns:
        # Evaluations of a repeated run's dropped rows go with them.
        kept = set(zip(trials["experiment_dir"], trials["trial_id"].astype(str)))
        rows = list(zip(evals["experiment_dir"], evals["trial_id"].astype(str)))
        evals = evals[[r in kept for r in rows]].reset_index(drop=True)
    return Results(trials=trials, evals=evals, experiments=experiments)


def status_counts(trials: pd.DataFrame) -> dict[str, int]:
    """Number of runs per status, every documented status present (0 when absent)."""
    counts = trials["status"].astype(str).value_counts()
    return {s: int(counts.get(s, 0)) for s in STATUSES}
