"""Parquet tables: documented schema with config-typed columns, rows from trial results, no duplicates, atomic files."""
from __future__ import annotations

import json
import math

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ict_core.config import Config, all_keys
from tune.results import (EVALS_SCHEMA, TRIALS_SCHEMA, ResultTables, rows_from_result, to_table, write_atomic)

DOCUMENTED_TRIAL_COLUMNS = [
    "experiment", "space", "stratum", "trial_id", "config_id", "seed", "status", "error", "dataset", "dim",
    "final_fd", "best_fd", "final_fd_2step", "final_kid", "final_loss", "final_loss_train", "final_loss_heldout",
    "final_nn_dist", "final_nn_dist_ref", "steps", "images_seen", "wall_s", "device", "world_size", "git_commit",
    "versions",
]
DOCUMENTED_EVAL_COLUMNS = [
    "experiment", "trial_id", "config_id", "step", "num_points", "loss", "fd", "fd_2step", "kid", "loss_train",
    "loss_heldout", "nn_dist", "nn_dist_ref", "images_seen", "elapsed_s",
]


def test_schemas_hold_the_documented_columns_and_config_types():
    assert set(DOCUMENTED_TRIAL_COLUMNS + all_keys()) <= set(TRIALS_SCHEMA.names)
    assert EVALS_SCHEMA.names == DOCUMENTED_EVAL_COLUMNS
    assert TRIALS_SCHEMA.field("loss.huber_c").type == pa.float64()
    assert TRIALS_SCHEMA.field("train.total_steps").type == pa.int64()
    assert TRIALS_SCHEMA.field("curriculum.shape").type == pa.string()
    assert TRIALS_SCHEMA.field("train.compile").type == pa.bool_()
    assert TRIALS_SCHEMA.field("network.channel_mult").type == pa.string()


def _eval(seed, step, fd):
    return {"seed": seed, "step": step, "num_points": 11, "loss": 1.0, "fd": fd, "fd_2step": fd / 2, "kid": 0.1,
            "loss_train": 1.0, "loss_heldout": 1.1, "nn_dist": 0.3, "nn_dist_ref": 0.2, "images_seen": step * 32,
            "elapsed_s": step / 10}


def _done(seed, flat, status="completed", fd=5.0):
    return {"seed": seed, "status": status, "config": {**flat, "train.seed": seed}, "final_fd": fd, "best_fd": fd,
            "steps": 100, "images_seen": 3200, "wall_s": 3.0, "device": "cpu", "world_size": 1, "node_id": "n1",
            "git_commit": "abc", "versions": json.dumps({"torch": "x"})}


def test_rows_from_results_cover_seeds_pruned_errored_and_diverged(tmp_path):
    flat = {**Config().flat(), "loss.huber_c": 0.03, "network.channel_mult": [1, 2]}
    history = [_eval(0, 50, 9.0), _eval(0, 100, 5.0), _eval(1, 50, 8.0)]
    common = dict(experiment="e", space="s", stratum="digits", config_id="t1",
                  current={"seed": 1, "config": {**flat, "train.seed": 1}})
    # Seed 0 finished, seed 1 stopped by ASHA at step 50.
    result = {"ict_done": json.dumps([_done(0, flat)]), "ict_history": json.dumps(history), "ict_final": False,
              "fd": 8.0, "step": 50, "node_id": "n1"}
    trials, evals = rows_from_result(result, **common)
    assert [(r["trial_id"], r["seed"], r["status"]) for r in trials] == [("t1-seed0", 0, "completed"),
                                                                         ("t1-seed1", 1, "pruned")]
    assert trials[1]["final_fd"] == 8.0 and trials[1]["best_fd"] == 8.0 and trials[1]["steps"] == 50
    assert trials[0]["dataset"] == "digits-8" and trials[0]["dim"] == 64
    assert len(evals) == 3 and {e["trial_id"] for e in evals} == {"t1-seed0", "t1-seed1"}
    # A scheduler that stops the trial right at a seed's final evaluation did not prune that seed.
    at_end = {**result, "status": "completed", "step": 100}
    assert [r["status"] for r in rows_from_result(at_end, **common)[0]] == ["completed", "completed"]
    # The same state ending in an exception: the running seed is errored with the text.
    trials, _ = rows_from_result(result, **common, error="ValueError: boom")
    assert trials[1]["status"] == "errored" and trials[1]["error"] == "ValueError: boom"
    assert trials[0]["error"] is None
    # A trial that died before reporting anything still gets its row.
    trials, evals = rows_from_result({}, **common, error="RuntimeError: no data")
    assert [(r["seed"], r["status"]) for r in trials] == [(1, "errored")] and evals == []
    # A finished trial with a diverged seed.
    result = {"ict_done": json.dumps([_done(0, flat), _done(1, flat, "diverged", math.nan)]),
              "ict_history": "[]", "ict_final": True}
    trials, _ = rows_from_result(result, **common)
    assert [r["status"] for r in trials] == ["completed", "diverged"]
    assert trials[0]["run_key"] != trials[1]["run_key"]

    table = to_table(trials, TRIALS_SCHEMA)
    assert table.schema == TRIALS_SCHEMA
    assert table.column("network.channel_mult").to_pylist() == ["1,2", "1,2"]


def test_tables_never_duplicate_a_run_and_replace_only_errored_rows(tmp_path):
    flat = Config().flat()
    common = dict(experiment="e", space="s", stratum="digits", current={"seed": 0, "config": flat})
    done = {"ict_done": json.dumps([_done(0, flat)]), "ict_history": json.dumps([_eval(0, 100, 5.0)]),
            "ict_final": True}
    tables = ResultTables(tmp_path)
    assert tables.add(*rows_from_result(done, config_id="a", **common))
    tables.write()
    # A new driver (resume) reads the files back; the same run under the same or another Tune id is not added.
    tables = ResultTables(tmp_path)
    assert tables.known("a-seed0")
    assert not tables.add(*rows_from_result(done, config_id="a", **common))
    assert not tables.add(*rows_from_result(done, config_id="b", **common))
    # An errored run gives way to a successful retry of the same configuration.
    other = {**flat, "loss.huber_c": 0.5}
    common_other = {**common, "current": {"seed": 0, "config": other}}
    assert tables.add(*rows_from_result({}, config_id="c", error="boom", **common_other))
    retry = {"ict_done": json.dumps([_done(0, other)]), "ict_history": json.dumps([_eval(0, 100, 4.0)]),
             "ict_final": True}
    assert tables.add(*rows_from_result(retry, config_id="d", **common_other))
    tables.write()
    trials = pd.read_parquet(tmp_path / "trials.parquet")
    evals = pd.read_parquet(tmp_path / "evals.parquet")
    assert sorted(trials["trial_id"]) == ["a-seed0", "d-seed0"]
    assert trials["run_key"].is_unique and list(trials["status"]) == ["completed", "completed"]
    assert sorted(evals["trial_id"]) == ["a-seed0", "d-seed0"]
    assert pq.read_schema(tmp_path / "trials.parquet").remove_metadata() == TRIALS_SCHEMA


def test_atomic_write_leaves_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "t.parquet"
    write_atomic(to_table([{"experiment": "old", "trial_id": "x"}], EVALS_SCHEMA), path)
    with pytest.raises(AttributeError):
        write_atomic(None, path)  # not a table: pyarrow fails mid-write
    assert pq.read_table(path).column("experiment").to_pylist() == ["old"]
    assert [p.name for p in tmp_path.iterdir()] == ["t.parquet"]
    with pytest.raises(KeyError, match="not in the schema"):
        to_table([{"experiment": "x", "colour": 1}], EVALS_SCHEMA)
