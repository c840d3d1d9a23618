"""Search bookkeeping end to end, through the CLI (the driver that gets Ctrl-C in a real subprocess, the others
in this process, each a new driver): Ctrl-C stops the strata and --resume
continues exactly what was unfinished; nothing a trial wrote is lost with actor reuse; both trial paths (in the
trial process and through Ray Train) survive an error in the second seed and a driver restart with every row
built from the run folders; a search whose every trial errored exits non-zero with the error."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parent.parent
SEARCH = [sys.executable, str(REPO / "tune" / "search.py")]

SPACE = """name: {name}
fixed: {{data.name: digits, network.channels: 8, network.channel_mult: [1], network.dropout: 0.0,
        train.total_steps: {steps}, train.batch_size: 32, optim.lr: 1.0e-3, train.ema_rate: 0.9,
        train.log_every: 1000, eval.every: {every}, eval.num_samples: 100, eval.grid: false,
        eval.cache_dir: "{cache}"}}
params:
  loss.huber_c: {{type: grid, values: [{values}]}}
strata:
{strata}
search: {{algorithm: grid}}
metric: fd
mode: min
seeds: {seeds}
max_concurrent: 2
"""


def _space(tmp_path: Path, name: str, steps=60, every=20, seeds=1, values="0.003, 0.01, 0.03",
           strata=("{name: first, fixed: {optim.lr: 1.0e-3}}", "{name: second, fixed: {optim.lr: 2.0e-3}}")) -> Path:
    text = SPACE.format(name=name, steps=steps, every=every, seeds=seeds, values=values,
                        strata="\n".join(f"  - {s}" for s in strata), cache=tmp_path.parent / "featnet-cache")
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return path


def _run(args, timeout=600):
    """A new driver that runs to its end: tune/search.py's main() in this process (no subprocess's torch and Ray
    import), giving back what the finished subprocess would (exit code, stdout, stderr). The Ctrl-C test's
    interrupted driver stays a real subprocess."""
    from contextlib import redirect_stderr, redirect_stdout
    from io import StringIO

    from tune import search

    out, err = StringIO(), StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = search.main(list(args))
    return subprocess.CompletedProcess(SEARCH + args, code, out.getvalue(), err.getvalue())


def _check_every_row_has_its_run_folder(exp_dir: Path, trials: pd.DataFrame) -> None:
    for row in trials.itertuples():
        if row.status != "errored" or isinstance(row.run_dir, str):
            run = exp_dir / row.run_dir
            assert (run / "config.json").exists() and (run / "evals.jsonl").exists(), row.run_dir
            if row.status in ("completed", "diverged"):
                assert json.loads((run / "summary.json").read_text())["status"] == row.status
            assert (run.parent / "stdout.log").read_text().strip(), f"no stdout.log beside {row.run_dir}"


@pytest.mark.slow
def test_ctrl_c_stops_the_strata_and_resume_finishes_exactly_what_was_left(tmp_path):
    space = _space(tmp_path, "sigint")
    storage = tmp_path / "results"
    args = ["--space", str(space), "--storage", str(storage), "--name", "s"]
    exp_dir = storage / "s"
    log = open(tmp_path / "driver.log", "w")
    proc = subprocess.Popen(SEARCH + args, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            if list((exp_dir / "runs" / "first").glob("*/seed_0/evals.jsonl")):
                break
            time.sleep(0.2)
        assert proc.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
        os.kill(proc.pid, signal.SIGINT)  # Ctrl-C while the first stratum's trials train
        code = proc.wait(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    out = (tmp_path / "driver.log").read_text()
    assert code == 130, out[-3000:]
    assert "--resume" in out
    info = json.loads((exp_dir / "experiment.json").read_text())
    assert info["status"] == "interrupted" and info["done_strata"] == [] and "finished" not in info
    before = pd.read_parquet(exp_dir / "trials.parquet") if (exp_dir / "trials.parquet").exists() else None
    assert before is None or len(before) < 6  # the strata train at the same time: some runs of either may be done

    # A changed plan is refused on resume unless --extend says so.
    changed = _run(args + ["--resume", "--set", "train.batch_size=16"], timeout=120)
    assert changed.returncode == 2 and "plan differs" in changed.stderr, changed.stderr[-2000:]

    done = _run(args + ["--resume"])
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "already finished" not in done.stdout
    info = json.loads((exp_dir / "experiment.json").read_text())
    assert info["status"] == "finished" and sorted(info["done_strata"]) == ["first", "second"]
    trials = pd.read_parquet(exp_dir / "trials.parquet")
    # Six trials on two slots with actor reuse: every one recorded once, each with its run folder and logs.
    assert len(trials) == 6 and trials["run_key"].is_unique and (trials["status"] == "completed").all()
    assert sorted(trials.groupby("stratum")["loss.huber_c"].apply(sorted).to_dict().items()) == [
        ("first", [0.003, 0.01, 0.03]), ("second", [0.003, 0.01, 0.03])]
    _check_every_row_has_its_run_folder(exp_dir, trials)
    if before is not None:  # runs recorded before Ctrl-C are kept as they were
        kept = trials.set_index("trial_id").loc[before["trial_id"]]
        assert list(kept["final_fd"]) == list(before["final_fd"])
    evals = pd.read_parquet(exp_dir / "evals.parquet")
    assert not evals.duplicated(["trial_id", "step"]).any()
    assert evals.groupby("trial_id")["step"].apply(list).to_dict() == {t: [20, 40, 60] for t in trials["trial_id"]}

    # Progress: per stratum, trials done/total, elapsed, ETA and the best configuration so far. How many trials
    # were done before Ctrl-C depends on the machine's load (the strata train at the same time; on a busy machine
    # one stratum may have finished all three), so look at a stratum that still had trials to train.
    trained_before = {name: 0 if before is None else int((before["stratum"] == name).sum())
                      for name in ("second", "first")}
    name = next(n for n, k in trained_before.items() if k < 3)  # fewer than 6 rows before: one stratum had work
    best = trials[trials["stratum"] == name]["final_fd"].min()
    last = [l for l in done.stdout.splitlines() if l.startswith(f"[{name}] 3/3 trials done")]
    assert last and "elapsed" in last[0] and "ETA 0:00" in last[0] and f"best fd {best:.4g} (" in last[0], last
    # Every trial trained after the resume reports once, the count rising to 3.
    counts = [int(line.split()[1].split("/")[0]) for line in done.stdout.splitlines()
              if line.startswith(f"[{name}] ") and "trials done" in line]
    assert counts == sorted(counts) and counts[-1] == 3 and len(counts) >= 3 - trained_before[name], counts

    # A second resume finds nothing to do.
    again = _run(args + ["--resume"], timeout=300)
    assert again.returncode == 0 and again.stdout.count("already finished, skipped") == 2


@pytest.mark.slow
@pytest.mark.parametrize("path", ["in-process", "ray-train"])
def test_an_error_in_the_second_seed_then_a_driver_restart_keeps_every_seed(tmp_path, path):
    """train.fault_step kills a seed's process at step 30 once (the trainer leaves a marker in the seed's run
    folder, so a retry passes): seed 0 on the first attempt, seed 1 on the second. Every trial errored: the
    search exits 1 with the error. Each restart is a new driver (--resume): the trial skips finished seeds and
    resumes an unfinished one from the checkpoint in its run folder, and no seed's rows are lost or mislabelled."""
    space = _space(tmp_path, f"fault-{path}", steps=40, every=20, seeds=2, values="0.01",
                   strata=["{name: only, fixed: {train.fault_step: 30}}"])
    storage = tmp_path / "results"
    args = ["--space", str(space), "--storage", str(storage), "--name", "f"]
    if path == "ray-train":
        args.append("--ray-train")
    exp_dir = storage / "f"

    first = _run(args)
    assert first.returncode == 1, first.stdout[-3000:] + first.stderr[-3000:]
    assert "the first error" in first.stderr and "--resume" in first.stderr
    trials = pd.read_parquet(exp_dir / "trials.parquet")
    assert list(trials["status"]) == ["errored"] and trials["error"].iloc[0]
    assert json.loads((exp_dir / "experiment.json").read_text())["status"] == "failed"

    # Driver restart: seed 0 resumes from its step-20 checkpoint and finishes; the error is now in seed 1.
    second = _run(args + ["--resume"])
    assert second.returncode == 1, second.stdout[-3000:] + second.stderr[-3000:]
    trials = pd.read_parquet(exp_dir / "trials.parquet").sort_values("seed")
    assert list(zip(trials["seed"], trials["status"])) == [(0, "completed"), (1, "errored")]
    assert trials["run_dir"].str.endswith(("seed_0", "seed_1")).all()
    _check_every_row_has_its_run_folder(exp_dir, trials)
    evals = pd.read_parquet(exp_dir / "evals.parquet")
    seed0 = trials.iloc[0]
    run_evals = [json.loads(l) for l in (exp_dir / seed0["run_dir"] / "evals.jsonl").read_text().splitlines()]
    ours = evals[evals["trial_id"] == seed0["trial_id"]]
    assert list(ours["step"]) == [20, 40] and list(ours["fd"]) == [e["fd"] for e in run_evals]
    assert list(evals.loc[evals["trial_id"] == trials.iloc[1]["trial_id"], "step"]) == [20]  # seed 1's own
    # Both paths report the same keys to Tune; ASHA's time attribute is the first seed's step, and it stays at
    # total_steps while later seeds train, so no rung ever judges a later seed.
    results = [json.loads(l) for p in (exp_dir / "ray").rglob("result.json") for l in p.read_text().splitlines()]
    assert results and all({"trial_step", "seed", "status", "step", "fd", "final"} <= set(r) for r in results)
    assert all(r["trial_step"] == (r["step"] if r["seed"] == 0 and not r["final"] else 40) for r in results)
    # (seed 1's one report before the fault may be lost with the Ray Train run that failed right after it)
    assert 0 in {r["seed"] for r in results} <= {0, 1}
    if path == "ray-train":
        return  # each Ray Train start costs ~20 s here; the last restart is the same on both paths

    # And again: seed 0 is not trained again, seed 1 resumes and finishes.
    third = _run(args + ["--resume"])
    assert third.returncode == 0, third.stdout[-3000:] + third.stderr[-3000:]
    trials = pd.read_parquet(exp_dir / "trials.parquet").sort_values("seed")
    assert list(zip(trials["seed"], trials["status"])) == [(0, "completed"), (1, "completed")]
    assert trials["run_key"].is_unique
    _check_every_row_has_its_run_folder(exp_dir, trials)
    evals = pd.read_parquet(exp_dir / "evals.parquet")
    for row in trials.itertuples():
        assert list(evals.loc[evals["trial_id"] == row.trial_id, "step"]) == [20, 40]
    assert json.loads((exp_dir / seed0["run_dir"] / "summary.json").read_text())["wall_s"] == seed0["wall_s"]


@pytest.mark.slow
def test_extend_searches_a_finished_stratum_further_and_tells_optuna_what_it_measured(tmp_path):
    space = _space(tmp_path, "extend", steps=20, every=20, strata=["{name: only, fixed: {}}"])
    text = space.read_text().replace("{type: grid, values: [0.003, 0.01, 0.03]}", "{type: loguniform, low: 0.001, high: 0.1}")
    space.write_text(text.replace("search: {algorithm: grid}", "search: {algorithm: optuna_tpe, seed: 3}"))
    storage = tmp_path / "results"
    args = ["--space", str(space), "--storage", str(storage), "--name", "x"]
    first = _run(args + ["--num-samples", "1"])
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    refused = _run(args + ["--num-samples", "2", "--resume"], timeout=120)
    assert refused.returncode == 2 and "--extend" in refused.stderr
    more = _run(args + ["--num-samples", "2", "--resume", "--extend"])
    assert more.returncode == 0, more.stdout[-3000:] + more.stderr[-3000:]
    assert "--extend, 1 configuration(s) recorded, 1 more" in more.stdout
    exp_dir = storage / "x"
    trials = pd.read_parquet(exp_dir / "trials.parquet")
    assert len(trials) == 2 and trials["loss.huber_c"].nunique() == 2 and (trials["status"] == "completed").all()
    info = json.loads((exp_dir / "experiment.json").read_text())
    assert info["status"] == "finished" and info["tune_names"]["only"].startswith("only-")
    _check_every_row_has_its_run_folder(exp_dir, trials)


@pytest.mark.slow
def test_uri_storage_receives_every_run_folder_and_the_driver_reads_it_back(tmp_path):
    """Shared storage given as a URI (file:// here; s3:// takes the same pyarrow code): trials train in scratch
    folders mirrored to it, checkpoints included, and the driver builds the rows from the URI."""
    space = _space(tmp_path, "uri", steps=40, every=20, values="0.01, 0.1", strata=["{name: only, fixed: {}}"])
    shared = tmp_path / "shared"
    out = _run(["--space", str(space), "--storage", str(tmp_path / "results"), "--name", "u",
                "--ray-storage", f"file://{shared}"])
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    exp_dir = tmp_path / "results" / "u"
    trials = pd.read_parquet(exp_dir / "trials.parquet")
    assert len(trials) == 2 and (trials["status"] == "completed").all() and not (exp_dir / "runs").exists()
    for row in trials.itertuples():
        run = shared / row.run_dir
        assert json.loads((run / "summary.json").read_text())["fd"] == row.final_fd
        assert list((run / "checkpoints").glob("step_*/state.pt")) and (run.parent / "stdout.log").exists()
    assert len(pd.read_parquet(exp_dir / "evals.parquet")) == 4
