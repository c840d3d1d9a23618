"""Parquet tables: documented schema with config-typed columns, rows built from run folders, no duplicates,
atomic files."""
from __future__ import annotations

import json
import shutil

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ict_core.config import Config, all_keys, load_config
from ict_core.records import EVALS_SCHEMA, TRIALS_SCHEMA
from tune.results import ResultTables, run_key, table_metadata, to_table, trial_rows, write_atomic
from tune.store import Store, seed_folder
from tune.trial import resolved_flat

DOCUMENTED_TRIAL_COLUMNS = [
    "experiment", "space", "stratum", "trial_id", "config_id", "seed", "status", "error", "dataset", "dim",
    "final_fd", "best_fd", "final_fd_2step", "final_kid", "final_loss", "final_loss_train", "final_loss_heldout",
    "final_nn_dist", "final_nn_dist_ref", "steps", "images_seen", "wall_s", "device", "world_size", "git_commit",
    "versions", "node_id", "run_key", "final_fd_student", "final_fd_se", "run_dir", "reused", "reused_from",
]
DOCUMENTED_EVAL_COLUMNS = [
    "experiment", "trial_id", "config_id", "step", "num_points", "loss", "fd", "fd_2step", "kid", "loss_train",
    "loss_heldout", "nn_dist", "nn_dist_ref", "images_seen", "elapsed_s", "fd_student", "fd_se", "stratum", "seed",
]


def test_schemas_hold_the_documented_columns_and_config_types():
    assert set(DOCUMENTED_TRIAL_COLUMNS + all_keys()) <= set(TRIALS_SCHEMA.names)
    assert EVALS_SCHEMA.names == DOCUMENTED_EVAL_COLUMNS
    assert TRIALS_SCHEMA.field("loss.huber_c").type == pa.float64()
    assert TRIALS_SCHEMA.field("train.total_steps").type == pa.int64()
    assert TRIALS_SCHEMA.field("curriculum.shape").type == pa.string()
    assert TRIALS_SCHEMA.field("train.compile").type == pa.bool_()
    assert TRIALS_SCHEMA.field("network.channel_mult").type == pa.list_(pa.int64())
    for name in ("final_fd_student", "final_fd_se", "run_dir"):
        assert TRIALS_SCHEMA.field(name).nullable
    assert EVALS_SCHEMA.field("fd_student").nullable and EVALS_SCHEMA.field("fd_se").nullable


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    """One real run folder (40 steps, two evaluations) that the tests copy and cut to plant the other cases."""
    from ict_core.trainer import train

    root = tmp_path_factory.mktemp("real_run")
    cfg = load_config("tiny", {"train.total_steps": 40, "eval.every": 20, "eval.num_samples": 50,
                               "eval.cache_dir": str(root.parent / "featnet-cache"), "train.log_every": 10})
    train(cfg, run_dir=root / "run")
    return root / "run", resolved_flat(cfg)


def _plant(root, rel, source, cut_after_first_eval=False):
    target = root / rel
    shutil.copytree(source, target)
    if cut_after_first_eval:  # a seed stopped (or killed) after its first evaluation
        (target / "summary.json").unlink()
        lines = (target / "evals.jsonl").read_text().splitlines()
        (target / "evals.jsonl").write_text(lines[0] + "\n")
    return target


def test_rows_come_from_run_folders_for_every_way_a_trial_ends(tmp_path, real_run):
    source, flat = real_run
    store = Store(str(tmp_path / "runs"))
    summary = json.loads((source / "summary.json").read_text())
    common = dict(experiment="e", space="s", stratum="digits", seeds=[0, 1, 2], known_config=flat)

    # Seed 0 finished, seed 1 stopped after its first evaluation (ASHA), seed 2 never started.
    _plant(tmp_path / "runs", seed_folder("digits", "t1", 0), source)
    _plant(tmp_path / "runs", seed_folder("digits", "t1", 1), source, cut_after_first_eval=True)
    trials, evals = trial_rows(store, config_id="t1", **common)
    assert [(r["trial_id"], r["seed"], r["status"]) for r in trials] == [("t1-seed0", 0, "completed"),
                                                                         ("t1-seed1", 1, "pruned")]
    assert trials[0]["final_fd"] == summary["fd"] and trials[0]["best_fd"] == summary["best_fd"]
    assert trials[0]["steps"] == 40 and trials[0]["dataset"] == "digits-8" and trials[0]["dim"] == 64
    assert trials[0]["run_dir"] == "runs/digits/t1/seed_0"
    first_eval = json.loads((source / "evals.jsonl").read_text().splitlines()[0])
    assert trials[1]["steps"] == 20 and trials[1]["final_fd"] == first_eval["fd"] == trials[1]["best_fd"]
    assert [(e["trial_id"], e["step"]) for e in evals] == [("t1-seed0", 20), ("t1-seed0", 40), ("t1-seed1", 20)]
    assert trials[0]["git_commit"] is not None or trials[0]["versions"] is not None
    # The same folders ending in an exception: the running seed is errored with the text.
    trials, _ = trial_rows(store, config_id="t1", error="ValueError: boom", **common)
    assert [r["status"] for r in trials] == ["completed", "errored"]
    assert trials[1]["error"] == "ValueError: boom" and trials[0]["error"] is None

    # A seed that died before writing anything still gets its row, from the configuration the driver sent.
    _plant(tmp_path / "runs", seed_folder("digits", "t2", 0), source)
    trials, evals = trial_rows(store, config_id="t2", error="RuntimeError: no data", **common)
    assert [(r["seed"], r["status"], r["run_dir"]) for r in trials] == [(0, "completed", "runs/digits/t2/seed_0"),
                                                                       (1, "errored", None)]
    assert trials[1]["loss.huber_c"] == flat["loss.huber_c"] and trials[1]["train.seed"] == 1
    assert {e["trial_id"] for e in evals} == {"t2-seed0"}
    # Nothing at all: one errored row.
    trials, evals = trial_rows(store, config_id="t3", error="RuntimeError: early", **common)
    assert [(r["seed"], r["status"]) for r in trials] == [(0, "errored")] and evals == []

    # A diverged seed keeps its status; its last (non-evaluation) line is not an evaluation row.
    div = _plant(tmp_path / "runs", seed_folder("digits", "t4", 0), source)
    diverged = {**summary, "status": "diverged", "fd": float("nan"), "step": 30}
    (div / "summary.json").write_text(json.dumps(diverged))
    with open(div / "evals.jsonl", "a") as fh:
        fh.write(json.dumps({"step": 30, "fd": float("nan"), "status": "diverged", "evaluated": False}) + "\n")
    trials, evals = trial_rows(store, config_id="t4", **{**common, "seeds": [0]})
    assert trials[0]["status"] == "diverged" and pd.isna(trials[0]["final_fd"])
    assert [e["step"] for e in evals] == [20, 40]

    # Evaluation keys added later (fd_student, fd_se) are read where present and null where not.
    new = _plant(tmp_path / "runs", seed_folder("digits", "t5", 0), source)
    (new / "summary.json").write_text(json.dumps({**summary, "fd_student": 3.5, "final_fd_se": 0.25}))
    rows = [json.loads(l) for l in (new / "evals.jsonl").read_text().splitlines()]
    # The planted run predates fd_se: drop it, keep a hand-set fd_student.
    (new / "evals.jsonl").write_text("".join(
        json.dumps({**{k: v for k, v in r.items() if k != "fd_se"}, "fd_student": 7.0}) + "\n" for r in rows))
    trials, evals = trial_rows(store, config_id="t5", **{**common, "seeds": [0]})
    assert trials[0]["final_fd_student"] == 3.5 and trials[0]["final_fd_se"] == 0.25
    assert [e["fd_student"] for e in evals] == [7.0, 7.0] and all(e["fd_se"] is None for e in evals)
    table = to_table(trials, TRIALS_SCHEMA)
    assert table.schema == TRIALS_SCHEMA and table.column("network.channel_mult").to_pylist() == [[1]]

    # The same reader through a URI (pyarrow's file systems, as for s3://) gives the same rows.
    uri_rows, uri_evals = trial_rows(Store("file://" + str(tmp_path / "runs")), config_id="t1", **common)
    local_rows, local_evals = trial_rows(store, config_id="t1", **common)
    assert uri_rows == local_rows and uri_evals == local_evals


def test_run_key_hashes_what_was_trained_only():
    flat = Config().flat()
    key = run_key(flat, 0)
    moved = {**flat, "train.num_threads": 8, "data.path": "/elsewhere", "train.device": "cuda",
             "eval.cache_dir": "/tmp/x", "train.log_every": 7, "train.keep_checkpoints": 5}
    assert run_key(moved, 0) == key
    assert run_key({**flat, "optim.lr": 3e-4}, 0) != key
    assert run_key({**flat, "train.seed": 1}, 1) != key and run_key(flat, 1) != key
    assert run_key({**flat, "eval.num_samples": 999}, 0) != key  # changes the measured FD


def _row(config_id, seed, flat, status="completed", fd=5.0, **extra):
    return {"experiment": "e", "space": "s", "stratum": "digits", "trial_id": f"{config_id}-seed{seed}",
            "config_id": config_id, "seed": seed, "status": status, "final_fd": fd, "run_key": run_key(flat, seed),
            **extra}


def test_tables_never_duplicate_a_run_and_replace_only_errored_rows(tmp_path):
    flat = Config().flat()
    ev = {"experiment": "e", "step": 100, "fd": 5.0}
    tables = ResultTables(tmp_path)
    assert tables.add([_row("a", 0, flat)], [{**ev, "trial_id": "a-seed0"}])
    tables.write()
    # A new driver (resume) reads the files back; the same run under the same or another Tune id is not added,
    # nor the same run restarted elsewhere (other threads, device, data path).
    tables = ResultTables(tmp_path)
    assert tables.known("a-seed0")
    assert not tables.add([_row("a", 0, flat)], [])
    moved = {**flat, "train.num_threads": 4, "train.device": "cpu", "data.path": "/mnt/x"}
    assert not tables.add([_row("b", 0, moved)], [])
    # An errored run gives way to a successful retry of the same configuration.
    other = {**flat, "loss.huber_c": 0.5}
    assert tables.add([_row("c", 0, other, status="errored", fd=None, error="boom")], [])
    assert tables.add([_row("d", 0, other, fd=4.0)], [{**ev, "trial_id": "d-seed0"}])
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


def test_status_words_are_the_file_format():
    """The statuses are named once in ict_core.records, but their words are what summary.json, trials.parquet
    and experiment.json hold: renaming a constant's value would make every table written before unreadable."""
    from ict_core import records

    assert (records.RUNNING, records.COMPLETED, records.DIVERGED, records.INTERRUPTED, records.PRUNED,
            records.ERRORED) == ("running", "completed", "diverged", "interrupted", "pruned", "errored")
    assert (records.SEARCH_FINISHED, records.SEARCH_FAILED) == ("finished", "failed")
    assert records.STATUSES == ("completed", "pruned", "diverged", "errored")  # best first: analysis/load.py


def test_each_metric_name_is_written_once_and_read_from_records():
    """ict_core/records.py spells each measured value once, in one hand-written list (FINAL_METRICS; the evaluator's,
    the searchers', the tables' and the report's lists are derived from it), the derived lists keep the file
    format's column order, and no module keeps a second name for a records list (an alias drifts or outlives it)."""
    import ast
    import collections
    from pathlib import Path

    import analysis
    import ict_core
    import tune
    from ict_core import records

    tree = ast.parse(Path(records.__file__).read_text())
    spelled = collections.Counter(node.value for node in ast.walk(tree) if isinstance(node, ast.Constant))
    assert {m: spelled[m] for m in records.FINAL_METRICS} == dict.fromkeys(records.FINAL_METRICS, 1)
    # Derived, but in the order tables written before hold (a changed order would reorder Parquet columns).
    assert records.EVAL_METRICS == ("num_points", "loss", "fd", "fd_2step", "kid", "loss_train", "loss_heldout",
                                    "nn_dist", "nn_dist_ref", "images_seen", "elapsed_s", "fd_student", "fd_se")
    assert records.REPORT_KEYS == ("step", "total_steps", *records.EVAL_METRICS[:-2], "status", "fd_student", "fd_se")
    assert set(records.SEARCH_METRICS) == set(records.FINAL_METRICS) - {"nn_dist_ref", "fd_student", "fd_se"}
    assert [n for n in records.TRIALS_SCHEMA.names if n.startswith("final_")] == [
        f"final_{m}" for m in records.FINAL_METRICS]

    aliases = []
    for package in (ict_core, tune, analysis):
        for path in Path(package.__file__).parent.rglob("*.py"):
            module = ast.parse(path.read_text())
            from_records = {a.asname or a.name for node in module.body if isinstance(node, ast.ImportFrom)
                            and (node.module or "").endswith("records") for a in node.names}
            aliases += [f"{path.name}: {t.id} = {node.value.id}" for node in module.body
                        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Name)
                        and node.value.id in from_records for t in node.targets if isinstance(t, ast.Name)]
    assert aliases == []


def test_the_tables_tune_writes_are_the_ones_analysis_reads(tmp_path, real_run):
    """One module (ict_core.records) owns the schemas: rows built by tune/ from a real run folder, written by
    ResultTables and loaded by analysis/ come back with every column and value; a table that breaks the
    shared schema or statuses is refused by analysis naming what is wrong."""
    from analysis.load import SchemaError, load_results
    from ict_core import records

    assert set(records.REQUIRED_TRIAL_COLUMNS) <= set(records.TRIALS_SCHEMA.names)
    assert set(records.REQUIRED_EVAL_COLUMNS) <= set(records.EVALS_SCHEMA.names)

    source, flat = real_run
    store = Store(str(tmp_path / "exp" / "runs"))
    _plant(tmp_path / "exp" / "runs", seed_folder("digits", "t1", 0), source)
    _plant(tmp_path / "exp" / "runs", seed_folder("digits", "t1", 1), source, cut_after_first_eval=True)
    trials, evals = trial_rows(store, experiment="e", space="s", stratum="digits", config_id="t1", seeds=[0, 1],
                               known_config=flat)
    tables = ResultTables(tmp_path / "exp")
    tables.add(trials, evals)
    tables.write()
    assert pq.read_schema(tmp_path / "exp" / records.TRIALS_FILE).remove_metadata() == records.TRIALS_SCHEMA
    assert pq.read_schema(tmp_path / "exp" / records.EVALS_FILE).remove_metadata() == records.EVALS_SCHEMA

    loaded = load_results(tmp_path)
    assert set(records.TRIALS_SCHEMA.names) <= set(loaded.trials.columns)
    assert list(loaded.evals.columns) == records.EVALS_SCHEMA.names + ["experiment_dir"]
    back = loaded.trials.set_index("trial_id")
    for row in trials:
        for key in ("status", "seed", "final_fd", "best_fd", "steps", "dim", "dataset", "run_dir", "loss.huber_c"):
            assert back.loc[row["trial_id"], key] == row[key], key
    assert list(zip(loaded.evals["trial_id"], loaded.evals["step"])) == [(e["trial_id"], e["step"]) for e in evals]
    assert list(loaded.evals["fd"]) == [e["fd"] for e in evals]

    # Planted breakage: a required column missing, a status outside records.STATUSES.
    bad = tmp_path / "bad"
    bad.mkdir()
    table = pq.read_table(tmp_path / "exp" / records.TRIALS_FILE)
    pq.write_table(table.drop_columns(["final_fd"]), bad / records.TRIALS_FILE)
    with pytest.raises(SchemaError, match="lacks column\\(s\\) 'final_fd'"):
        load_results(bad)
    statuses = pa.array(["stopped"] * table.num_rows)
    pq.write_table(table.set_column(table.schema.get_field_index("status"), "status", statuses),
                   bad / records.TRIALS_FILE)
    with pytest.raises(SchemaError, match="status must be one of completed, pruned, diverged, errored"):
        load_results(bad)


def test_what_the_trainer_writes_is_what_records_names(real_run):
    """Metric names live in ict_core/records.py: every evaluation row and the summary carry exactly those keys, and
    each evaluation metric has its evals.parquet column (a name changed on one side fails here)."""
    from ict_core import records, rundir

    run_dir, _ = real_run
    rows = [json.loads(line) for line in (run_dir / rundir.EVALS).read_text().splitlines()]
    evaluated = [r for r in rows if r.get("evaluated")]
    assert evaluated and all(set(records.REPORT_KEYS) <= set(r) for r in rows)
    assert all(set(records.EVALUATOR_METRICS) <= {k for k, v in r.items() if v is not None} for r in evaluated)
    assert set(records.EVALUATOR_METRICS) <= set(records.EVAL_METRICS) <= set(EVALS_SCHEMA.names)
    summary = json.loads((run_dir / rundir.SUMMARY).read_text())
    assert set(records.REPORT_KEYS) <= set(summary)


def _planted_experiment(folder, old_style=False):
    """Two configurations (loss.huber_c 0.01 and 0.1) x 2 seeds in stratum "digits" and one in "patches", with
    planted FD curves: config a is best in digits (FD 4 at the end), c the only one in patches."""
    flat = Config().flat()
    rows, evals = [], []
    for config_id, stratum, c, mult, end in (("a", "digits", 0.01, (1, 2), 4.0), ("b", "digits", 0.1, (1,), 9.0),
                                              ("c", "patches", 0.1, (1, 2, 2), 7.0)):
        for seed in (0, 1):
            cfg = {**flat, "loss.huber_c": c, "network.channel_mult": mult, "train.seed": seed}
            versions = {"python": "3.12.1", "torch": "2.13.0", "cuda": None}
            rows.append(_row(config_id, seed, cfg, fd=end + seed, stratum=stratum, **{
                "loss.huber_c": c, "network.channel_mult": ",".join(map(str, mult)) if old_style else list(mult),
                "versions": json.dumps(versions, sort_keys=True) if old_style else versions}))
            for step, fd in ((20, 2 * end), (40, end + seed)):
                ev = {"experiment": "e", "trial_id": f"{config_id}-seed{seed}", "config_id": config_id, "step": step,
                      "fd": fd}
                evals.append(ev if old_style else {**ev, "stratum": stratum, "seed": seed})
    if old_style:  # as the code before typed lists, versions structs, evals' stratum/seed and metadata wrote them
        old_trials = pa.schema([f if f.name not in ("network.channel_mult", "network.attn_resolutions", "versions")
                                else pa.field(f.name, pa.string()) for f in TRIALS_SCHEMA])
        old_evals = pa.schema([f for f in EVALS_SCHEMA if f.name not in ("stratum", "seed")])
        folder.mkdir(parents=True)
        for r in rows:
            r["network.attn_resolutions"] = ""
        write_atomic(to_table(rows, old_trials), folder / "trials.parquet")
        write_atomic(to_table(evals, old_evals), folder / "evals.parquet")
        return folder
    tables = ResultTables(folder, table_metadata("e", "s", ["loss.huber_c", "network.channel_mult"], "fd", "min"))
    tables.add(rows, evals)
    tables.write()
    return folder


def test_tables_need_no_merge_and_say_what_was_searched(tmp_path):
    """evals.parquet carries stratum, seed, config_id and the searched keys; lists are Parquet lists, versions a
    struct; both files' schema metadata name the experiment, searched keys, metric and direction; the README's
    one-liners give the planted best configuration and curves."""
    import pandas as pd  # noqa: F811 - the README's lines, as a user writes them

    folder = _planted_experiment(tmp_path / "e")
    schema = pq.read_schema(folder / "evals.parquet")
    assert schema.field("network.channel_mult").type == pa.list_(pa.int64())
    assert pq.read_schema(folder / "trials.parquet").field("versions").type.num_fields == 8
    for path in (folder / "evals.parquet", folder / "trials.parquet"):
        meta = pq.read_schema(path).metadata
        assert meta[b"ict.experiment"] == b"e" and meta[b"ict.metric"] == b"fd"
        assert meta[b"ict.direction"] == b"minimize"
        assert json.loads(meta[b"ict.searched_keys"]) == ["loss.huber_c", "network.channel_mult"]
    e = pd.read_parquet(folder / "evals.parquet")
    t = pd.read_parquet(folder / "trials.parquet")
    assert list(e.loc[e.trial_id == "c-seed1", ["stratum", "seed", "loss.huber_c"]].iloc[0]) == ["patches", 1, 0.1]
    assert list(e.loc[e.trial_id == "c-seed1", "network.channel_mult"].iloc[0]) == [1, 2, 2]
    assert t.set_index("trial_id").loc["a-seed0", "versions"]["torch"] == "2.13.0"

    # README, "Results: Parquet tables": the best configuration per stratum, and the FD curve per configuration.
    best = t.groupby(["stratum", "config_id", "loss.huber_c"]).final_fd.mean().reset_index().sort_values("final_fd").groupby("stratum").head(1)
    curves = e.groupby(["stratum", "config_id", "loss.huber_c", "step"]).fd.mean().unstack("step")
    assert best.set_index("stratum")["config_id"].to_dict() == {"digits": "a", "patches": "c"}
    assert best.set_index("stratum")["final_fd"].to_dict() == {"digits": 4.5, "patches": 7.5}
    assert curves.loc[("digits", "a", 0.01)].to_dict() == {20: 8.0, 40: 4.5}
    assert curves.loc[("digits", "b", 0.1)].to_dict() == {20: 18.0, 40: 9.5}


def test_old_tables_stay_readable_and_are_upgraded_on_resume(tmp_path):
    """A folder written before the typed columns loads in analysis/ like a new one (lists as "1,2" text), the
    shipped CPU findings still load, and a resumed search (ResultTables over the old files) rewrites them typed."""
    from analysis.load import load_results
    from pathlib import Path

    old = _planted_experiment(tmp_path / "old", old_style=True)
    new = _planted_experiment(tmp_path / "new")
    loaded_old, loaded_new = load_results(old), load_results(new)
    for column in ("network.channel_mult", "loss.huber_c", "final_fd", "trial_id"):
        assert loaded_old.trials[column].tolist() == loaded_new.trials[column].tolist(), column
    def present(text):
        return {k: v for k, v in json.loads(text).items() if v is not None}
    assert [present(v) for v in loaded_old.trials["versions"]] == [present(v) for v in loaded_new.trials["versions"]]
    assert loaded_new.trials["network.channel_mult"].tolist()[:3] == ["1,2", "1,2", "1"]
    assert loaded_old.evals["fd"].tolist() == loaded_new.evals["fd"].tolist()
    findings = Path(__file__).resolve().parent.parent / "docs" / "findings" / "cpu"
    shipped = load_results(findings / "c_scaling")
    assert len(shipped.trials) > 0 and len(shipped.evals) > 0

    tables = ResultTables(old, table_metadata("e", "s", ["loss.huber_c"], "fd", "min"))
    tables.write()
    e = pd.read_parquet(old / "evals.parquet")
    assert set(e.groupby("trial_id")["seed"].first().items()) == {(f"{c}-seed{s}", s) for c in "abc" for s in (0, 1)}
    assert e.loc[e.trial_id == "c-seed0", "stratum"].iloc[0] == "patches"
    t = pd.read_parquet(old / "trials.parquet")
    assert [list(v) for v in t["network.channel_mult"][:3]] == [[1, 2], [1, 2], [1]]
    assert list(t["network.attn_resolutions"].iloc[0]) == []
    assert t["versions"].iloc[0]["python"] == "3.12.1"


def test_an_evaluation_written_twice_by_a_lost_node_and_its_retry_counts_once(tmp_path, real_run):
    # A node's trial process can outlive its raylet for a moment and append the evaluation that the retried run
    # (resumed from the checkpoint before it) writes again: planted here as a repeated last line.
    source, flat = real_run
    store = Store(str(tmp_path / "runs"))
    target = _plant(tmp_path / "runs", seed_folder("digits", "t1", 0), source)
    lines = (target / "evals.jsonl").read_text().splitlines()
    (target / "evals.jsonl").write_text("\n".join(lines + [lines[-1]]) + "\n")
    trials, evals = trial_rows(store, config_id="t1", experiment="e", space="s", stratum="digits", seeds=[0],
                               known_config=flat)
    assert len(trials) == 1 and [e["step"] for e in evals] == [20, 40]


def test_an_errored_trial_is_recorded_with_the_config_it_was_sent(tmp_path, monkeypatch):
    """A trial's config is built in one place (tune/trial.trial_config): the driver's row of a trial that died
    before its run folder held anything is exactly the config the trial trains (stratum, searched values and a
    grid variant, huber_c resolved); a trial whose values the config refuses is recorded with the values asked;
    any other error while building it is a bug, raised rather than hidden behind a made-up row."""
    from types import SimpleNamespace

    import tune.trial
    from tune.progress import ParquetCallback
    from tune.trial import trial_config

    stratum = {"name": "digits", "fixed": {"data.name": "digits", "train.total_steps": 7, "network.dropout": 0.2}}
    callback = ParquetCallback(str(tmp_path), "e", "s", stratum, seeds=1, runs_root=str(tmp_path / "runs"))
    callback.setup()

    def errored(trial_id: str, config: dict):
        trial = SimpleNamespace(trial_id=trial_id, config=config, error_file=None, get_error=lambda: "boom")
        callback.on_trial_error(0, [], trial)
        return pq.read_table(tmp_path / "trials.parquet").to_pandas().set_index("trial_id").loc[f"{trial_id}-seed0"]

    asked = {"optim.lr": 3e-4, "variant": {"network.dropout": 0.3}}
    row, sent = errored("t1", asked), resolved_flat(trial_config(stratum["fixed"], asked))
    assert (sent["optim.lr"], sent["network.dropout"], sent["train.total_steps"]) == (3e-4, 0.3, 7)
    assert row["status"] == "errored" and sent["loss.huber_c"] is not None
    differ = [k for k, v in sent.items() if not isinstance(v, (list, tuple)) and not (
        row[k] == v or (v is None and pd.isna(row[k])))]
    assert differ == []
    refused = errored("t2", {"network.dropout": 1.5})  # dropout must be in [0, 1)
    assert refused["network.dropout"] == 1.5 and refused["train.total_steps"] == 7

    def broken(**_):
        raise KeyError("a bug")

    monkeypatch.setattr(tune.trial, "load_config", broken)
    with pytest.raises(KeyError, match="a bug"):
        errored("t3", {})
