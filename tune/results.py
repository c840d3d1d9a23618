"""The Parquet tables a search writes and analysis/ reads (docs/ARCHITECTURE.md, "Parquet tables").

trials.parquet: one row per training run (one seed of one configuration); evals.parquet: one row per run and
evaluation. Their schemas, metric names and statuses live in ict_core/records.py, which analysis/ reads too.
Files are rewritten whole and atomically (a temp file in the same folder, then os.replace), so a reader or a
killed driver never sees half a table.

Rows are built by the driver from the run folders the trainer wrote (`trial_rows`), never from what trials
report to Tune. Beyond the documented columns, trials.parquet carries `node_id` (the Ray node that ran the
trial), `run_key` (a hash of what was trained and the seed: the identity used to never write a run twice across
resumes) and `run_dir` (the seed's run folder relative to the experiment folder).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import threading
from pathlib import Path
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from ict_core import datasets
from ict_core import rundir
from ict_core.fileio import atomic_path, atomic_write_text
from ict_core.records import (COMPLETED, CONFIG_TYPES, DIVERGED, ERRORED, EVAL_METRICS, EVALS_FILE,
                              FINAL_METRICS, META_DIRECTION, META_EXPERIMENT, META_METRIC,
                              META_SEARCHED, META_SPACE, PRUNED, STATUSES, TRIALS_FILE, TRIALS_SCHEMA, evals_schema)

def _cell(value: Any, dtype: pa.DataType) -> Any:
    """One Python value converted to what its column type holds; None stays null."""
    if value is None:
        return None
    if pa.types.is_list(dtype):
        if isinstance(value, str):  # tables written before list columns: "1,2" ("" for an empty list)
            text = value.strip().strip("[]()")
            value = [v.strip() for v in text.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            value = [value]
        return [_cell(v, dtype.value_type) for v in value]
    if pa.types.is_struct(dtype):
        if isinstance(value, str):  # tables written before the struct: a JSON object
            try:
                value = json.loads(value)
            except ValueError:
                return None
        if not isinstance(value, dict):
            return None
        return {f.name: _cell(value.get(f.name), f.type) for f in dtype}
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


def write_atomic(table: pa.Table, path: str | os.PathLike, metadata: dict | None = None) -> None:
    """Write `table` to `path` atomically; `metadata` ({str: str}) is added to its Parquet schema metadata."""
    if metadata:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}),
                                               **{k.encode(): str(v).encode() for k, v in metadata.items()}})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def table_metadata(experiment: str, space: str, searched, metric, mode) -> dict:
    """The schema metadata both tables carry (ict_core/records.py, META_*): `metric`/`mode` one name and
    min|max, or lists of them (a multi-objective space)."""
    metrics = list(metric) if isinstance(metric, (list, tuple)) else [metric]
    modes = list(mode) if isinstance(mode, (list, tuple)) else [mode] * len(metrics)
    directions = ["maximize" if m == "max" else "minimize" for m in modes]
    one = len(metrics) == 1
    return {META_EXPERIMENT: experiment, META_SPACE: space, META_SEARCHED: json.dumps(list(searched)),
            META_METRIC: metrics[0] if one else json.dumps(metrics),
            META_DIRECTION: directions[0] if one else json.dumps(directions)}


def read_metadata(path: str | os.PathLike) -> dict:
    """The ict.* schema metadata of a table written by ResultTables ({} for tables written before it)."""
    meta = pq.read_schema(path).metadata or {}
    return {k.decode(): v.decode() for k, v in meta.items() if k.startswith(b"ict.")}


def write_json_atomic(obj: Any, path: str | os.PathLike) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


# Config keys that say where or how a run executed, not what was trained: left out of run_key, so the same run
# restarted on another machine, with other threads or paths, is recognised as the same run.
NOT_TRAINED = ("data.path", "eval.cache_dir", "eval.inception_path", "eval.grid", "train.device",
               "train.num_threads", "train.compile", "train.channels_last", "train.log_every",
               "train.checkpoint_every", "train.keep_checkpoints", "train.fault_step")


def run_key(config_flat: dict, seed: int) -> str:
    """Identity of one training run: a hash of what was trained (the config without NOT_TRAINED keys) and the
    seed. Stable across driver restarts and machines (unlike Tune's trial ids after a restore that finds no
    snapshot); train.seed is part of the config, `seed` is repeated for clarity."""
    trained = {k: v for k, v in config_flat.items() if k not in NOT_TRAINED}
    body = json.dumps({"config": trained, "seed": int(seed)}, sort_keys=True, default=str)
    return hashlib.sha1(body.encode()).hexdigest()[:16]


_LOCKS: dict[str, threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()


def _write_lock(path: Path) -> threading.Lock:
    """One lock per table pair in this process: the callbacks of strata fitted at the same time write in turn."""
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(str(path), threading.Lock())


class ResultTables:
    """The experiment's trials/evals tables, kept in memory and rewritten whole after each finished trial.

    A run already written is never written again: a row whose trial_id or run_key is present is dropped, except
    that an errored row gives way to a later non-errored run of the same run_key (a trial retried on resume).

    `metadata` (table_metadata) names the experiment, its searched keys, metric and direction in both files'
    schema metadata; evals.parquet gets each run's stratum and seed and a column per searched key, copied from
    its trials row (so a pandas user needs no merge). Without `metadata`, what the files already hold is kept."""

    def __init__(self, experiment_dir: str | os.PathLike, metadata: dict | None = None):
        self.dir = Path(experiment_dir)
        self.trials_path = self.dir / TRIALS_FILE
        self.evals_path = self.dir / EVALS_FILE
        self.trials = pq.read_table(self.trials_path).to_pylist() if self.trials_path.exists() else []
        self.evals = pq.read_table(self.evals_path).to_pylist() if self.evals_path.exists() else []
        if metadata is None and self.trials_path.exists():
            metadata = read_metadata(self.trials_path)
        self.metadata = dict(metadata or {})
        self.searched = [k for k in json.loads(self.metadata.get(META_SEARCHED) or "[]") if k in CONFIG_TYPES]

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
            if old and not (all(r["status"] == ERRORED for r in old) and row["status"] != ERRORED):
                continue
            gone = {r["trial_id"] for r in old} | {row["trial_id"]}  # and evaluations orphaned by a kill in write()
            self.trials = [r for r in self.trials if r["trial_id"] not in gone]
            self.evals = [e for e in self.evals if e["trial_id"] not in gone]
            self.trials.append(row)
            self.evals.extend(e for e in eval_rows if e["trial_id"] == row["trial_id"])
            added.append(row)
        return added

    def write(self) -> None:
        with _write_lock(self.trials_path):
            self._merge_written()
            self._write()

    def _merge_written(self) -> None:
        """Take in the runs another writer of the same tables wrote since these were read: the strata of one
        search run at the same time, each with its own tables, into one table pair (tune/tuners.py)."""
        if not self.trials_path.exists():
            return
        ids, keys = {r["trial_id"] for r in self.trials}, {r["run_key"] for r in self.trials}
        theirs = [r for r in pq.read_table(self.trials_path).to_pylist()
                  if r["trial_id"] not in ids and r["run_key"] not in keys]
        if not theirs:
            return
        self.trials.extend(theirs)
        new = {r["trial_id"] for r in theirs} - {e["trial_id"] for e in self.evals}
        if new and self.evals_path.exists():
            self.evals.extend(e for e in pq.read_table(self.evals_path).to_pylist() if e["trial_id"] in new)

    def _write(self) -> None:
        # Evaluations first: a run in trials.parquet always has its evaluations, even when the driver is killed
        # between the two files (a resume records that run again and replaces its orphaned evaluation rows).
        by_trial = {r["trial_id"]: r for r in self.trials}
        copied = ("stratum", "seed", *self.searched)
        evals = [{**e, **{k: by_trial[e["trial_id"]].get(k) for k in copied}} if e.get("trial_id") in by_trial
                 else e for e in self.evals]
        schema = evals_schema(self.searched)
        write_atomic(to_table([{k: v for k, v in e.items() if k in schema.names} for e in evals], schema),
                     self.evals_path, self.metadata)
        write_atomic(to_table(self.trials, TRIALS_SCHEMA), self.trials_path, self.metadata)


def _num(value):
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value


def _finite(value) -> bool:
    value = _num(value)
    return value is not None and math.isfinite(value)


def _provenance(prov: dict | None) -> dict:
    prov = prov or {}
    return {"git_commit": prov.get("git_commit"), "device": prov.get("device"),
            "versions": prov.get("versions") or None}


def trial_rows(store, *, experiment: str, space: str, stratum: str, config_id: str, seeds: list[int],
               known_config: dict, runs_prefix: str = "runs", error: str | None = None,
               node_id: str | None = None) -> tuple[list[dict], list[dict]]:
    """trials/evals rows of one ended Tune trial, built from the run folders its seeds wrote in `store`
    (tune/store.Store; a local path or a URI).

    A seed with summary.json keeps its status (completed | diverged); a seed whose folder holds no summary was
    running when the trial ended: `errored` when `error` is given, else `pruned` (a scheduler stopped it), with
    its final_* values from its last evaluation. A seed that died before writing anything gets an `errored` row
    from `known_config` (the configuration the driver sent); seeds never started get no row. `run_dir` is the
    seed's folder relative to the experiment folder (`runs_prefix` + the folder under the store's root)."""
    from tune.store import FINISHED, seed_folder

    trial_rows, eval_rows = [], []
    errored_seen = False
    folders = [seed_folder(stratum, config_id, s) for s in seeds]
    started = [store.exists(f"{rel}/{rundir.CONFIG}") or store.exists(f"{rel}/{rundir.EVALS}") for rel in folders]
    for index, (seed, rel) in enumerate(zip(seeds, folders)):
        summary = store.read_json(f"{rel}/{rundir.SUMMARY}") or {}
        if summary.get("status") not in FINISHED:
            summary = {}  # a seed stopped by Tune (a scheduler, a Ctrl-C) summarises a run that did not end
        evals = [e for e in store.read_jsonl(f"{rel}/{rundir.EVALS}")
                 if e.get("evaluated", True) and e.get("status") != DIVERGED]
        # One row per step: a process on a node the cluster lost can outlive its raylet for a moment and append
        # an evaluation the retried run (resumed from the checkpoint before it) writes again.
        evals = list({e.get("step"): e for e in evals}.values())
        config = store.read_json(f"{rel}/{rundir.CONFIG}")
        if summary.get("status") in FINISHED:
            status, final = summary["status"], summary
        elif evals and evals[-1].get("status") == COMPLETED and not error:
            status, final = COMPLETED, evals[-1]  # stopped right after its final evaluation
        elif started[index] or evals:
            status, final = (ERRORED if error else PRUNED), (evals[-1] if evals else {})
            errored_seen = errored_seen or bool(error)
        elif error and not errored_seen and not any(started[index + 1:]):
            status, final = ERRORED, {}  # died before its run folder had anything in it
            errored_seen = True
        else:
            continue
        flat = _flat_config(config) if config else {**known_config, "train.seed": seed}
        trial_id = f"{config_id}-seed{seed}"
        dataset, dim = datasets.dataset_dim(flat["data.name"], flat["data.resolution"])
        row = {"experiment": experiment, "space": space, "stratum": stratum, "trial_id": trial_id,
               "config_id": config_id, "seed": seed, "status": status,
               "error": error if status == ERRORED else None, "dataset": dataset, "dim": dim,
               "run_key": run_key(flat, seed), "run_dir": f"{runs_prefix}/{rel}" if (started[index] or evals) else None,
               "node_id": node_id}
        row.update({k: v for k, v in flat.items() if k in CONFIG_TYPES})
        for key in FINAL_METRICS:
            row[f"final_{key}"] = _num(final.get(f"final_{key}", final.get(key)))
        fds = [e["fd"] for e in evals if _finite(e.get("fd"))]
        row["best_fd"] = _num(summary["best_fd"]) if "best_fd" in summary else (min(fds) if fds else None)
        last = summary or (evals[-1] if evals else {})
        row.update(steps=last.get("step"), images_seen=last.get("images_seen"),
                   wall_s=_num(summary.get("wall_s", last.get("elapsed_s"))),
                   world_size=summary.get("world_size"))
        row.update(_run_facts(store, rel, summary, node_id))
        trial_rows.append(row)
        for e in evals:
            eval_rows.append({"experiment": experiment, "trial_id": trial_id, "config_id": config_id,
                              "stratum": stratum, "seed": seed,
                              **{k: e.get(k) for k in ("step", *EVAL_METRICS)}})
    if error and trial_rows and not errored_seen:
        # Every seed finished, then the trial failed (e.g. in its final report): keep the runs, note the error.
        trial_rows[-1]["error"] = error
    return trial_rows, eval_rows


def _run_facts(store, rel: str, summary: dict, node_id: str | None) -> dict:
    """A run folder's bookkeeping columns: provenance (device, versions, commit), the node it ran on, and
    whether it was copied from another experiment (reused, reused_from) rather than trained here."""
    facts = {k: v for k, v in _provenance(store.read_json(f"{rel}/{rundir.PROVENANCE}")).items() if v is not None}
    node = store.read_json(f"{rel}.node.json") or next(iter(store.read_jsonl(f"{rel}/workers.jsonl")), {})
    facts["node_id"] = node.get("node_id") or node_id
    if summary.get("device") and not facts.get("device"):
        facts["device"] = summary["device"]
    source = store.read_json(f"{rel}/reused.json")  # tune/reuse.REUSED_FILE: copied, not trained here
    facts["reused"] = source is not None
    facts["reused_from"] = f"{source.get('experiment')}/{source.get('run_dir')}" if source else None
    return facts


def _flat_config(tree: dict) -> dict:
    """A run folder's config.json (nested, huber_c resolved) as dotted keys."""
    from ict_core.config import from_dict

    try:
        return from_dict(tree).flat()
    except Exception:  # noqa: BLE001 - a config from another version of the code: keep what is readable
        out = {}
        for section, values in tree.items():
            if isinstance(values, dict):
                out.update({f"{section}.{k}": v for k, v in values.items()})
        return out
