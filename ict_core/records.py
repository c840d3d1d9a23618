"""What a search records, named once: metric names, run statuses, the experiment folder's files (the two Parquet
tables, the Optuna journal) and the tables' schemas.

tune/ writes the tables (tune/results.py) and analysis/ reads them (analysis/load.py); both take the names from
here, so a column cannot be renamed on one side only. No Ray import: analysis runs without it. The columns are
documented in docs/ARCHITECTURE.md, "Parquet tables".

trials.parquet: one row per training run (one seed of one configuration); the config columns take their types
from ict_core.config's field types, so a column is typed even when every value in it is null.
evals.parquet: one row per run and evaluation.
"""
from __future__ import annotations

from dataclasses import fields
from typing import get_args, get_type_hints

import pyarrow as pa

from ict_core.config import Config, all_keys

TRIALS_FILE = "trials.parquet"
EVALS_FILE = "evals.parquet"
# The Optuna journal of a search's studies: tune/ writes it live, analysis/importance.py rebuilds it from the tables.
JOURNAL_FILE = "optuna_journal.log"

# A run's status. The trainer (ict_core/trainer.py) reports RUNNING at each evaluation before the last and ends
# COMPLETED, DIVERGED (a non-finite loss) or INTERRUPTED (a stop signal; only the command line installs one), which
# its summary.json keeps. tune/ adds the two endings a run cannot write itself: PRUNED (a scheduler stopped it
# between evaluations) and ERRORED (it raised). A search's experiment.json (tune/search.py) is RUNNING while a
# driver runs it, then SEARCH_FINISHED, SEARCH_FAILED (some trials errored) or INTERRUPTED (--resume continues).
RUNNING = "running"
COMPLETED = "completed"
DIVERGED = "diverged"
INTERRUPTED = "interrupted"
PRUNED = "pruned"
ERRORED = "errored"
SEARCH_FINISHED = "finished"
SEARCH_FAILED = "failed"
# How a run ended, as trials.parquet's status column says, best first (analysis/load.py keeps the best of repeats).
STATUSES = (COMPLETED, PRUNED, DIVERGED, ERRORED)

# Every value a run measures, each named once here, in the order trials.parquet's final_<key> columns keep; the
# other metric lists below are derived from it. fd: one-step FD of the evaluation EMA (what searches act on);
# loss: the training loss, which the trainer measures itself (an evaluation, ict_core/evaluate.py, measures the
# rest); nn_dist_ref: the nearest-neighbour distance of held-out data, a yardstick for nn_dist; fd_student: fd for
# the raw student, with the same noise; fd_se: bootstrap standard error of fd.
TRAINING_LOSS = "loss"
_YARDSTICK = "nn_dist_ref"
_LATER_METRICS = ("fd_student", "fd_se")  # added later: the tables keep them last, so column order stays as it was
FINAL_METRICS = ("fd", "fd_2step", "kid", TRAINING_LOSS, "loss_train", "loss_heldout", "nn_dist",
                 _YARDSTICK) + _LATER_METRICS
# What one evaluation measures: everything but the training loss.
EVALUATOR_METRICS = tuple(m for m in FINAL_METRICS if m != TRAINING_LOSS)
# Evaluation metrics a searcher may optimise (`metric:` of a space file; each is what a trial reports): not the
# yardstick, the raw student's diagnostic or an error bar.
SEARCH_METRICS = tuple(m for m in FINAL_METRICS if m != _YARDSTICK and m not in _LATER_METRICS)
_FIRST_METRICS = tuple(m for m in FINAL_METRICS if m not in _LATER_METRICS)
_INT_METRICS = ("num_points", "images_seen")
# Columns of evals.parquet after (experiment, trial_id, config_id, step), as the trainer's evals.jsonl names them:
# the counters and every measured value (the training loss first).
EVAL_METRICS = (_INT_METRICS[:1] + tuple(sorted(_FIRST_METRICS, key=lambda m: m != TRAINING_LOSS))
                + _INT_METRICS[1:] + ("elapsed_s",) + _LATER_METRICS)
# What the trainer puts in every report (and summary.json): its own counters plus the last evaluation's metrics.
REPORT_KEYS = ("step", "total_steps") + EVAL_METRICS[:-len(_LATER_METRICS)] + ("status",) + _LATER_METRICS


def report_row(step: int, total_steps: int, num_points: int, loss: float, evaluation: dict, images_seen: int,
               elapsed_s: float, status: str) -> dict:
    """What the trainer reports, logs to evals.jsonl and ends summary.json with: its counters (REPORT_KEYS) and the
    last evaluation's EVALUATOR_METRICS (NaN where it has none)."""
    return {"step": step, "total_steps": total_steps, "num_points": num_points, TRAINING_LOSS: loss,
            **{k: evaluation.get(k, float("nan")) for k in EVALUATOR_METRICS},
            "images_seen": images_seen, "elapsed_s": elapsed_s, "status": status}


def _config_types() -> dict[str, pa.DataType]:
    out = {}
    hints = get_type_hints(Config)
    for section in (f.name for f in fields(Config)):
        cls = hints[section]
        for f in fields(cls):
            hint = get_type_hints(cls)[f.name]
            base = next((a for a in get_args(hint) if a is not type(None)), hint)
            out[f"{section}.{f.name}"] = {bool: pa.bool_(), int: pa.int64(), float: pa.float64(),
                                          str: pa.string(), tuple: pa.list_(pa.int64())}[base]
    return out


CONFIG_TYPES = _config_types()

# provenance.json's library versions, as a struct column of trials.parquet (a string-typed field per library;
# null where the library was not loaded). Tables written before it hold the same as a JSON string.
VERSION_KEYS = ("python", "torch", "numpy", "cuda", "scipy", "sklearn", "ray", "optuna")
VERSIONS_TYPE = pa.struct([(k, pa.string()) for k in VERSION_KEYS])

_TRIAL_HEAD = [
    ("experiment", pa.string()), ("space", pa.string()), ("stratum", pa.string()), ("trial_id", pa.string()),
    ("config_id", pa.string()), ("seed", pa.int64()), ("status", pa.string()), ("error", pa.string()),
]
_TRIAL_TAIL = (
    [("dataset", pa.string()), ("dim", pa.int64()), ("final_fd", pa.float64()), ("best_fd", pa.float64())]
    + [(f"final_{m}", pa.float64()) for m in _FIRST_METRICS[1:]]
    + [("steps", pa.int64()), ("images_seen", pa.int64()), ("wall_s", pa.float64()), ("device", pa.string()),
       ("world_size", pa.int64()), ("git_commit", pa.string()), ("versions", VERSIONS_TYPE),
       ("node_id", pa.string()), ("run_key", pa.string())]
    # Added later: nullable, so tables written before them still load.
    + [(f"final_{m}", pa.float64()) for m in _LATER_METRICS] + [("run_dir", pa.string())]
    # reused: the run was copied from another experiment (reused_from: "<experiment>/<run_dir>"), not trained here
    + [("reused", pa.bool_()), ("reused_from", pa.string())]
)
TRIALS_SCHEMA = pa.schema(_TRIAL_HEAD + [(k, CONFIG_TYPES[k]) for k in all_keys()] + _TRIAL_TAIL)
EVALS_SCHEMA = pa.schema(
    [("experiment", pa.string()), ("trial_id", pa.string()), ("config_id", pa.string()), ("step", pa.int64())]
    + [(m, pa.int64() if m in _INT_METRICS else pa.float64()) for m in EVAL_METRICS]
    # Added later, from the run's trials row, so that a pandas user needs no merge: nullable, absent in old tables.
    + [("stratum", pa.string()), ("seed", pa.int64())]
)


def evals_schema(searched=()) -> pa.Schema:
    """evals.parquet's schema in an experiment whose space searches `searched` (dotted config keys): EVALS_SCHEMA
    followed by one column per searched key, typed as in trials.parquet."""
    return pa.schema(list(EVALS_SCHEMA) + [(k, CONFIG_TYPES[k]) for k in searched if k in CONFIG_TYPES])


# Keys of both tables' Parquet schema metadata (pyarrow.parquet.read_schema(path).metadata), written by tune/:
# the experiment's name, its space, the searched keys (a JSON list), the metric the searcher optimised (a
# JSON list when several) and its direction ("minimize" or "maximize"; a JSON list when several).
META_EXPERIMENT = "ict.experiment"
META_SPACE = "ict.space"
META_SEARCHED = "ict.searched_keys"
META_METRIC = "ict.metric"
META_DIRECTION = "ict.direction"

# Columns a reader requires (analysis/load.py); the others were added later, or are bookkeeping a reader may
# lack in tables written by hand, and the config columns are checked by each analysis that needs them.
_OPTIONAL_TRIAL = (("device", "world_size", "git_commit", "versions", "node_id", "run_key", "run_dir", "reused",
                    "reused_from") + tuple(f"final_{m}" for m in _LATER_METRICS))
REQUIRED_TRIAL_COLUMNS = tuple(name for name, _ in _TRIAL_HEAD + _TRIAL_TAIL if name not in _OPTIONAL_TRIAL)
REQUIRED_EVAL_COLUMNS = tuple(name for name in EVALS_SCHEMA.names
                              if name not in _LATER_METRICS + ("stratum", "seed"))
