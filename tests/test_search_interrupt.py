"""Ctrl-C on a search keeps its trials' work: each running seed writes a checkpoint at the step it reached, the
printed hints point only at files that exist, and the printed resume command, run from a folder outside the
repository, continues each seed from that checkpoint (not from step 0)."""
from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parent.parent

SPACE = """name: interrupt
fixed: {{data.name: digits, network.channels: 8, network.channel_mult: [1], network.dropout: 0.0,
        train.total_steps: {steps}, train.batch_size: 16, optim.lr: 1.0e-3, train.ema_rate: 0.9,
        train.log_every: 10, eval.every: 0, eval.num_samples: 100, eval.grid: false, eval.cache_dir: "{cache}"}}
params:
  loss.huber_c: {{type: grid, values: [0.01]}}
search: {{algorithm: grid}}
metric: fd
mode: min
seeds: 1
"""


@pytest.mark.slow
def test_ctrl_c_checkpoints_the_running_trial_and_resume_continues_it_from_there(tmp_path):
    steps = 300
    space = tmp_path / "interrupt.yaml"
    space.write_text(SPACE.format(steps=steps, cache=tmp_path / "featnet-cache"))
    storage = tmp_path / "results"
    exp_dir = storage / "s"
    args = ["--space", str(space), "--storage", str(storage), "--name", "s"]
    log = open(tmp_path / "driver.log", "w")
    proc = subprocess.Popen([sys.executable, str(REPO / "tune" / "search.py"), *args], stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 300
        metrics = []
        while time.time() < deadline and proc.poll() is None and not metrics:
            metrics = list(exp_dir.glob("runs/*/*/seed_0/metrics.jsonl"))
            time.sleep(0.2)
        assert proc.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
        os.kill(proc.pid, signal.SIGINT)  # Ctrl-C while the trial trains, between its evaluations
        code = proc.wait(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    out = (tmp_path / "driver.log").read_text()
    assert code == 130, out[-3000:]

    # The seed stopped with a checkpoint of the step it reached (there is no evaluation before the last step).
    (seed_dir,) = list(exp_dir.glob("runs/*/*/seed_0"))
    summary = json.loads((seed_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted", summary
    (ckpt,) = list((seed_dir / "checkpoints").glob("step_*"))
    reached = int(ckpt.name.split("_")[1])
    assert 0 < reached < steps and summary["step"] == reached

    # Every path a hint prints exists now: no trials.parquet was written, so none is named.
    for line in out.splitlines():
        for path in re.findall(r"(/\S+\.(?:parquet|json|md))", line):
            assert Path(path.strip("'\")")).exists(), line
    resume = next(l for l in out.splitlines() if "continue with:" in l).split("continue with:", 1)[1].strip()
    assert "--resume" in resume and "python tune/search.py" not in resume

    # The printed command, as printed, from a folder outside the repository.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = subprocess.run(resume, shell=True, cwd=elsewhere, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PATH": os.environ.get("PATH", "")})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    trial_out = (seed_dir.parent / "stdout.log").read_text()
    starts = re.findall(r"steps (\d+)->(\d+)", trial_out)
    assert starts[0] == ("0", str(steps)) and starts[-1] == (str(reached), str(steps)), starts
    trials = pd.read_parquet(exp_dir / "trials.parquet")
    assert len(trials) == 1 and trials["status"].iloc[0] == "completed" and trials["steps"].iloc[0] == steps
    rows = [json.loads(l) for l in (seed_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(10, steps + 1, 10))  # each logged step once, none lost
    for line in done.stdout.splitlines():  # the hints of a finished search point at files that exist
        for path in re.findall(r"(/\S+\.(?:parquet|json|md))", line):
            assert Path(path.strip("'\")")).exists(), line
    report = next(l for l in done.stdout.splitlines() if l.startswith("report:")).split("report:", 1)[1].strip()
    assert "python analysis/report.py" not in report and shlex.split(report)[-1] == str(exp_dir)
