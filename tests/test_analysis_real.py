"""analysis/ on the tables of a real search: tune.launch.run_search trains tiny models under Ray and writes
trials.parquet / evals.parquet; the analysis and the report must read them as they are."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]

from analysis.ablations import INCONCLUSIVE, analyze_ablations
from analysis.curriculum import curves
from analysis.load import load_results
from analysis.report import write_report
from tests import synthetic

STEPS, EVERY, BATCH = 20, 10, 32
# EMA teacher (the CT baseline) against none (iCT), two seeds each, plus a run whose loss blows up.
SPACE = """name: analysis_real
fixed: {{data.name: digits, network.channels: 8, network.channel_mult: [1], network.dropout: 0.0,
        train.total_steps: {steps}, train.batch_size: {batch}, optim.lr: 1.0e-3, train.ema_rate: 0.9,
        train.log_every: 1000, eval.every: {every}, eval.num_samples: 100, eval.grid: true,
        eval.cache_dir: "{cache}"}}
points:
  - {{loss.teacher: none}}
  - {{loss.teacher: ema}}
  - {{optim.lr: 1.0e+6}}
search: {{algorithm: grid}}
metric: fd
mode: min
seeds: 2
max_concurrent: 2
"""


@pytest.fixture(scope="module")
def real_experiment(tmp_path_factory, shared_ray) -> Path:
    from tune.launch import run_search

    root = tmp_path_factory.mktemp("real_search")
    # Same folder as the search tests use, so the digits feature net trains once per test session.
    cache = tmp_path_factory.getbasetemp() / "featnet-cache"
    space = root / "analysis_real.yaml"
    space.write_text(SPACE.format(steps=STEPS, every=EVERY, batch=BATCH, cache=cache))
    mp = pytest.MonkeyPatch()
    mp.setenv("RAY_AUTH_MODE", "disabled")
    try:
        exp_dir = run_search(space, budget="smoke", storage=root / "results", name="teacher")
    finally:
        mp.undo()
    return exp_dir


@pytest.mark.slow
def test_analysis_reads_a_real_search(real_experiment):
    results = load_results(real_experiment.parent)
    trials, evals = results.trials, results.evals
    assert results.experiments == [real_experiment.resolve()]
    assert sorted(trials["status"]) == ["completed"] * 4 + ["diverged"] * 2
    completed = trials[trials["status"] == "completed"]
    assert np.isfinite(completed["final_fd"]).all()

    table = analyze_ablations(trials, n_boot=300, min_seeds=3).set_index("key")
    teacher = table.loc["loss.teacher"]
    assert teacher["alternative"] == "ema" and teacher["num_paper"] == 2 and teacher["num_alt"] == 2
    assert teacher["verdict"] == INCONCLUSIVE and "too few seeds (2 vs 2" in teacher["reason"]
    # With the bar lowered to two seeds, the effect is the difference of the two arms' mean FD.
    lowered = analyze_ablations(trials, n_boot=300, min_seeds=2).set_index("key").loc["loss.teacher"]
    by_teacher = completed.groupby("loss.teacher")["final_fd"].mean()
    assert lowered["effect"] == pytest.approx(by_teacher["none"] - by_teacher["ema"])
    assert lowered["lo"] <= lowered["effect"] <= lowered["hi"]

    c = curves(trials, evals)
    assert set(c["trial_id"]) == set(completed["trial_id"])
    assert sorted(set(c["images_seen"])) == [EVERY * BATCH, STEPS * BATCH]


@pytest.mark.slow
def test_report_on_a_real_search(real_experiment, tmp_path):
    path = write_report([real_experiment], out=tmp_path / "report", n_boot=300)
    text = path.read_text()
    first = synthetic.first_prose(text)
    assert "EMA teacher vs none (none - ema): inconclusive (too few seeds (2 vs 2" in first
    assert "FD difference" in first and "no c-scaling experiment found" in first
    assert "4 completed, 0 pruned, 2 diverged, 0 errored" in text
    assert (tmp_path / "report" / "ablations.png").stat().st_size > 10_000
    assert (tmp_path / "report" / "ablations.csv").exists()
    # Sample grids: the real run folders' final grids when trials.parquet names them, else a plain "none".
    trials = load_results(real_experiment).trials
    if "run_dir" in trials.columns and trials["run_dir"].notna().any():
        links = [c.split("](")[1].split(")")[0] for line in text.splitlines() if line.startswith("| samples")
                 for c in line.split("![")[1:]]
        assert len(links) == 2  # best and worst of the two configurations that did not diverge
        from PIL import Image
        assert all(Image.open(tmp_path / "report" / link).size[0] > 8 for link in links)
    else:
        assert "No sample grids are available" in text
    # The rebuilt study reaches the journal: two completed configurations (too few to rank) and the one
    # whose runs diverged as FAIL.
    from analysis.importance import load_journal
    from ict_core.records import JOURNAL_FILE
    (study,) = load_journal(real_experiment / JOURNAL_FILE).values()
    states = sorted(t.state.name for t in study.trials)
    assert states == ["COMPLETE", "COMPLETE", "FAIL"]
    assert "importances need at least" in text
