"""The search's own Optuna study lives in the experiment folder (tune/searcher.py): optuna-dashboard can watch a
running search, the study is the same after it, and a killed driver's resume tells no configuration twice.
Real Ray, real Optuna journal file, real training through the CLI."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest

from tune.searcher import ORPHANED_ATTR, journal_storage

REPO = Path(__file__).resolve().parent.parent
SPACE = """name: live
fixed: {{data.name: digits, network.channels: 8, network.channel_mult: [1], network.dropout: 0.0,
        train.total_steps: 20, train.batch_size: 32, optim.lr: 1.0e-3, train.ema_rate: 0.9,
        train.log_every: 1000, eval.every: 20, eval.num_samples: 100, eval.grid: false,
        eval.cache_dir: "{cache}"}}
params:
  loss.huber_c: {{type: loguniform, low: 0.001, high: 0.1}}
strata:
  - {{name: only, fixed: {{}}}}
search: {{algorithm: optuna_tpe, seed: 5}}
metric: fd
mode: min
seeds: 1
max_concurrent: 1
budgets: {{smoke: {{num_samples: 3}}}}
"""


def _study(path: Path) -> optuna.Study:
    return optuna.load_study(study_name="live/only", storage=journal_storage(path))


def _by_params(study) -> dict:
    return {t.params["loss.huber_c"]: t.value for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))}


def _in_process(main, args: list[str]) -> subprocess.CompletedProcess:
    """A command line's main(args) in this process, run to its end: what the finished subprocess would give."""
    from contextlib import redirect_stderr, redirect_stdout
    from io import StringIO

    out, err = StringIO(), StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(list(args))
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


@pytest.mark.slow
def test_the_journal_holds_finished_trials_while_the_search_runs_and_resume_tells_none_twice(tmp_path):
    space = tmp_path / "live.yaml"
    space.write_text(SPACE.format(cache=tmp_path.parent / "featnet-cache"))
    storage = tmp_path / "results"
    cmd = [sys.executable, str(REPO / "tune" / "search.py"), "--space", str(space), "--storage", str(storage),
           "--name", "live"]
    exp_dir = storage / "live"
    trials_path, journal = exp_dir / "trials.parquet", exp_dir / "optuna_journal.log"
    log = open(tmp_path / "driver.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline, live = time.time() + 300, None
        while time.time() < deadline and proc.poll() is None:
            if trials_path.exists() and len(pd.read_parquet(trials_path)) >= 1:
                live = _study(journal)  # read while the search runs, as optuna-dashboard does
                break
            time.sleep(0.2)
        assert proc.poll() is None and live is not None, (tmp_path / "driver.log").read_text()[-3000:]
        recorded = pd.read_parquet(trials_path).set_index("loss.huber_c")["final_fd"].to_dict()
        told = _by_params(live)
        # Every configuration recorded so far is in the live study with the same value (the seeds' mean).
        assert set(recorded) <= set(told) and all(told[c] == pytest.approx(v) for c, v in recorded.items())
        assert live.user_attrs == {"experiment": "live", "stratum": "only"}
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver, its local Ray and the trial workers
        proc.wait()
    assert json.loads((exp_dir / "experiment.json").read_text())["live_journal"] is True

    from tune import search

    done = _in_process(search.main, cmd[2:] + ["--resume"])  # the restarted driver, in this process
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    trials = pd.read_parquet(trials_path)
    assert len(trials) == 3 and (trials["status"] == "completed").all()
    study = _study(journal)
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    # One COMPLETE trial per configuration in the table, with its value: nothing told twice, nothing missing.
    assert len(complete) == 3
    assert _by_params(study) == pytest.approx(trials.set_index("loss.huber_c")["final_fd"].to_dict())
    # Trials asked after the last snapshot of the killed driver are closed, not left RUNNING.
    others = [t for t in study.trials if t.state != optuna.trial.TrialState.COMPLETE]
    assert all(t.state == optuna.trial.TrialState.FAIL and t.user_attrs.get(ORPHANED_ATTR) for t in others)

    # Every recorded run has its TensorBoard HParams: the searched key and the final metrics (tests/test_hparams.py).
    from tests.test_hparams import read_hparams

    for _, row in trials.iterrows():
        values, scalars = read_hparams(exp_dir / row["run_dir"])
        assert values["loss.huber_c"] == pytest.approx(row["loss.huber_c"]) and values["stratum"] == "only"
        assert scalars["hparams/final_fd"] == pytest.approx(row["final_fd"], rel=1e-6)

    # The report keeps the live study (it writes rebuilt ones only for folders without one).
    before = journal.read_bytes()
    from analysis import report as report_cli

    report = _in_process(report_cli.main, [str(exp_dir), "--out", str(tmp_path / "report")])
    assert report.returncode == 0, report.stderr[-3000:]
    assert journal.read_bytes() == before
    assert "live studies" in (tmp_path / "report" / "report.md").read_text()
