"""Multi-objective spaces (`metric: [fd, fd_2step]`): checked before Ray, searched by Optuna's multi-objective TPE
through Ray with every objective's seed mean told, and the report's Pareto front per stratum (analysis/pareto.py)."""
from __future__ import annotations

import json

import numpy as np
import optuna
import pandas as pd
import pyarrow.parquet as pq
import pytest

from analysis.pareto import on_front, pareto_table
from tune.space import load_space
from tune.space_schema import SpaceError

SPACE = """name: {name}
fixed: {{data.name: digits, network.channels: 8, network.channel_mult: [1], network.dropout: 0.0,
        train.total_steps: 20, train.batch_size: 32, optim.lr: 1.0e-3, train.ema_rate: 0.9,
        train.log_every: 1000, eval.every: 20, eval.num_samples: 100, eval.grid: false,
        eval.cache_dir: "{cache}"}}
params:
  loss.huber_c: {{type: loguniform, low: 0.001, high: 0.3}}
strata:
  - {{name: only, fixed: {{}}}}
search: {{algorithm: {algorithm}, seed: 2}}
metric: {metric}
mode: {mode}
seeds: 1
max_concurrent: 2
budgets: {{smoke: {{num_samples: 4}}}}
"""


def _space(tmp_path, name="mo", algorithm="optuna_tpe", metric="[fd, fd_2step]", mode="min"):
    path = tmp_path / f"{name}.yaml"
    path.write_text(SPACE.format(name=name, algorithm=algorithm, metric=metric, mode=mode,
                                 cache=tmp_path.parent / "featnet-cache"))
    return path


def test_front_of_planted_points():
    points = np.array([[1.0, 5.0], [2.0, 2.0], [3.0, 3.0], [5.0, 1.0], [2.0, 2.0]])
    assert on_front(points, ["min", "min"]).tolist() == [True, True, False, True, True]
    assert on_front(points, ["min", "max"]).tolist() == [True, False, False, False, False]
    rows = []
    for cid, c, fd, fd2, seeds_ok in (("a", 0.01, 4.0, 9.0, True), ("b", 0.03, 6.0, 5.0, True),
                                      ("c", 0.1, 7.0, 8.0, True), ("d", 0.3, 1.0, 1.0, False)):
        for seed in (0, 1):
            rows.append({"experiment": "e", "stratum": "s", "config_id": cid, "seed": seed, "loss.huber_c": c,
                         "status": "completed" if seeds_ok or seed == 0 else "diverged",
                         "final_fd": fd + seed, "final_fd_2step": fd2 - seed})
    table = pareto_table(pd.DataFrame(rows), ["fd", "fd_2step"], ["min", "min"])
    # d has a diverged seed: no point; c is dominated by b; a and b form the front, a first (lower fd).
    assert table["config_id"].tolist() == ["a", "b", "c"] and table["on_front"].tolist() == [True, True, False]
    assert table.loc[0, "final_fd"] == 4.5 and table.loc[0, "final_fd_2step"] == 8.5
    assert table.loc[0, "config"] == "loss.huber_c=0.01"


def test_bad_multi_objective_spaces_are_refused_naming_the_value(tmp_path):
    assert load_space(_space(tmp_path)).plan("smoke").metrics == ["fd", "fd_2step"]
    cases = [({"metric": "[fd, sharpness]"}, "unknown metric 'sharpness'; allowed: fd,"),
             ({"mode": "[min]"}, "needs one mode per metric (2)"),
             ({"mode": "[min, up]"}, "must be min or max, got 'up'"),
             ({"metric": "[fd, fd]"}, "lists a metric twice")]
    for i, (change, message) in enumerate(cases):
        with pytest.raises(SpaceError, match=message.replace("(", r"\(").replace(")", r"\)")):
            load_space(_space(tmp_path, name=f"bad{i}", **change))
    grid = _space(tmp_path, name="g", algorithm="grid")
    grid.write_text(grid.read_text().replace("{type: loguniform, low: 0.001, high: 0.3}", "{type: grid, values: [0.01]}"))
    with pytest.raises(SpaceError, match="needs search.algorithm optuna_tpe, got 'grid'"):
        load_space(grid)
    asha = _space(tmp_path, name="a")
    asha.write_text(asha.read_text() + "scheduler: {type: asha, grace_period: 10, reduction_factor: 2}\n")
    with pytest.raises(SpaceError, match="asha stops trials on one metric"):
        load_space(asha).plan("smoke")


@pytest.mark.slow
def test_a_two_objective_search_tells_optuna_both_means_and_the_report_shows_the_front(tmp_path, shared_ray):
    from analysis.report import write_report
    from tune.searcher import journal_storage
    from tune.launch import run_search

    exp_dir = run_search(_space(tmp_path), storage=tmp_path / "results", quiet=True)  # on the shared Ray
    trials = pd.read_parquet(exp_dir / "trials.parquet")
    assert len(trials) == 4 and (trials["status"] == "completed").all()
    meta = pq.read_schema(exp_dir / "trials.parquet").metadata
    assert json.loads(meta[b"ict.metric"]) == ["fd", "fd_2step"]
    assert json.loads(meta[b"ict.direction"]) == ["minimize", "minimize"]
    study = optuna.load_study(study_name="mo-smoke/only", storage=journal_storage(exp_dir / "optuna_journal.log"))
    assert [d.name for d in study.directions] == ["MINIMIZE", "MINIMIZE"]
    told = {t.params["loss.huber_c"]: t.values for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))}
    assert told == {r["loss.huber_c"]: pytest.approx([r["final_fd"], r["final_fd_2step"]])
                    for _, r in trials.iterrows()}
    # Optuna's own front of the study is the report's front.
    optuna_front = {t.params["loss.huber_c"] for t in study.best_trials}
    report = write_report(exp_dir, out=tmp_path / "report")
    table = pd.read_csv(tmp_path / "report" / "pareto_mo-smoke.csv")
    front = trials.set_index("config_id").loc[table.loc[table["on_front"], "config_id"], "loss.huber_c"]
    assert set(front) == optuna_front and len(table) == 4
    text = report.read_text()
    assert "## Pareto front: mo-smoke" in text and f"{len(optuna_front)} of 4 configurations on the front" in text
