"""benchmarks/search_efficiency.py: its grids, the spaces it derives, the ratios it prints, and (with a real local Ray)
that a stopped run continues without training anything twice."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
import yaml

from tune.plan import resolve_plan


def _load_benchmark(name: str):
    """A script of benchmarks/ (a folder of scripts, not a package) as a module."""
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look their module up by name
    spec.loader.exec_module(module)
    return module


se = _load_benchmark("search_efficiency")


def test_grid_values_span_the_searched_range():
    c = se.grid_values({"type": "loguniform", "low": 1e-4, "high": 1.0}, 5)
    assert c == pytest.approx([1e-4, 1e-3, 1e-2, 1e-1, 1.0])
    p_mean = se.grid_values({"type": "uniform", "low": -2.5, "high": 1.5}, 5)
    assert p_mean == pytest.approx([-2.5, -1.5, -0.5, 0.5, 1.5])


@pytest.mark.parametrize("problem", ["c", "lognormal"])
def test_derived_spaces_plan_with_the_same_seeds_and_run_length(tmp_path, problem):
    setting = {**se.FULL, "cache_dir": ""}
    plans = {}
    for method in se.METHODS:
        tree = se.derived_space(problem, method, setting, search_seed=1, from_budget="cpu", num_samples=7)
        path = tmp_path / f"{method}.yaml"
        path.write_text(yaml.safe_dump(tree))
        plans[method] = resolve_plan(path, "smoke")
    n_dims = {"c": 1, "lognormal": 2}[problem]
    assert len(plans["grid"].strata[0].variants) == 12 ** n_dims
    for method, plan in plans.items():
        assert plan.seeds == 3 and plan.strata[0].fixed["train.total_steps"] == 200, method
        assert plan.strata[0].fixed["data.name"] == "digits"
    assert plans["tpe_asha"].algorithm == "optuna_tpe" and plans["tpe_asha"].search_seed == 1
    assert plans["random"].algorithm == "random" and plans["random"].scheduler["type"] == "none"
    assert plans["tpe_asha"].strata[0].num_samples == plans["random"].strata[0].num_samples == 7
    # The cpu budget runs without early stopping, so TPE+ASHA takes the fallback: grace at the first evaluation, rf 2.
    assert plans["tpe_asha"].scheduler == {"type": "asha", "grace_period": 100, "reduction_factor": 2}


def test_ratios_are_means_over_search_seeds_with_t_intervals_and_the_direct_test_compares_methods():
    rows = [{"problem": "c", "method": "grid", "search_seed": 0, "best_fd": 9.0, "rescored_fd": 10.0,
             "images": 1000}]
    tpe = [10.2, 10.4, 10.6, 10.8, 11.0]
    rnd = [11.0, 11.5, 12.0, 12.5, 13.0]
    for k in range(5):
        rows.append({"problem": "c", "method": "tpe_asha", "search_seed": k, "best_fd": 9.5, "rescored_fd": tpe[k],
                     "images": 300 + 10 * k})
        rows.append({"problem": "c", "method": "random", "search_seed": k, "best_fd": 9.9, "rescored_fd": rnd[k],
                     "images": 500})
    table = se.ratios(rows).set_index("method")
    assert table.loc["grid", "rescored_ratio"] == 1.0 and table.loc["grid", "compute_fraction"] == 1.0
    assert table.loc["tpe_asha", "search_seeds"] == 5
    assert table.loc["tpe_asha", "rescored_ratio"] == pytest.approx(1.06)
    half = scipy.stats.t.ppf(0.975, 4) * np.std(np.array(tpe) / 10, ddof=1) / math.sqrt(5)
    assert (table.loc["tpe_asha", "rescored_ratio_lo"], table.loc["tpe_asha", "rescored_ratio_hi"]) == \
        pytest.approx((1.06 - half, 1.06 + half))
    assert table.loc["tpe_asha", "best_fd_ratio"] == pytest.approx(9.5 / 9.0)  # what the searcher saw
    assert table.loc["tpe_asha", "compute_fraction"] == pytest.approx(0.32)
    direct = se.direct_test(rows).iloc[0]
    welch = scipy.stats.ttest_ind(tpe, rnd, equal_var=False)
    assert direct["rescored_fd_diff"] == pytest.approx(np.mean(tpe) - np.mean(rnd))
    assert direct["rescored_fd_p"] == pytest.approx(welch.pvalue)
    assert direct["rescored_fd_hi"] < 0 and direct["n_a"] == direct["n_b"] == 5
    text = se.format_table(se.ratios(rows), se.direct_test(rows))
    assert "tpe_asha - random, re-scored FD" in text and "1.060 [" in text


def test_no_method_gets_given_points_and_the_chosen_configuration_is_rescored_on_fresh_seeds(tmp_path):
    setting = {**se.QUICK, "cache_dir": ""}
    for method in se.METHODS:
        assert "points" not in se.derived_space("c", method, setting, 0, "cpu", 3), method
    tree = se.rescore_space("lognormal", {"loss.p_mean": -0.32, "loss.p_std": 0.5}, setting, "cpu")
    path = tmp_path / "rescore.yaml"
    path.write_text(yaml.safe_dump(tree))
    plan = resolve_plan(path, "smoke")
    assert len(plan.strata[0].variants) == 1 and plan.seeds == se.QUICK["rescore_seeds"]
    assert plan.strata[0].fixed["train.seed"] == se.RESCORE_SEED >= se.FULL["seeds"]
    # The name depends on the configuration only: two searches that chose it share one re-scoring.
    assert tree["name"] == se.rescore_space("lognormal", {"loss.p_std": 0.5, "loss.p_mean": -0.32}, setting,
                                            "cpu")["name"]


def test_search_figures_take_configurations_whose_every_seed_completed(tmp_path):
    import pandas as pd

    pd.DataFrame([
        {"config_id": "a", "seed": 0, "status": "completed", "final_fd": 5.0, "images_seen": 100},
        {"config_id": "a", "seed": 1, "status": "completed", "final_fd": 7.0, "images_seen": 100},
        {"config_id": "b", "seed": 0, "status": "completed", "final_fd": 1.0, "images_seen": 100},
        {"config_id": "b", "seed": 1, "status": "pruned", "final_fd": 0.5, "images_seen": 40},
    ]).to_parquet(tmp_path / "trials.parquet")
    figures = se.search_figures(tmp_path)
    # b's mean would be 1.0 from its one completed seed, but its second seed was pruned: not a finished config.
    assert figures == {"best_fd": 6.0, "images": 340, "runs": 4, "configs": 2, "pruned": 1, "chosen": {}}


def test_derived_spaces_keep_the_shipped_smoke_settings_that_make_short_runs_comparable(tmp_path):
    """The smoke budget's evaluation EMA (and network) carry over: with the default EMA rate every 60-step run
    scores its initial weights, and every configuration gets the same FD."""
    from ict_core.config import preset_overrides
    from tune.space_schema import budget_preset

    smoke = preset_overrides(str(budget_preset("smoke")))  # the smoke budget, shared by every space
    tree = se.derived_space("c", "grid", {**se.QUICK, "cache_dir": ""}, 0, "cpu", 3)
    for key, value in smoke.items():
        if key not in ("network.channels", "train.total_steps", "train.batch_size", "eval.every",
                       "eval.num_samples", "eval.grid"):
            assert tree["fixed"][key] == value, key
    assert tree["fixed"]["train.total_steps"] == se.QUICK["steps"]


@pytest.mark.slow
def test_with_storage_a_second_run_reads_the_finished_searches_instead_of_training_again(tmp_path, capsys,
                                                                                          shared_ray):
    import pandas as pd

    args = ["--quick", "--problems", "c", "--search-seeds", "1", "--grid-points", "2", "--num-samples", "2",
            "--seeds", "1", "--rescore-seeds", "1", "--storage", str(tmp_path / "se"), "--cache-dir",
            str(tmp_path / "featnet")]
    assert se.main(args) == 0
    first = capsys.readouterr().out
    tables = sorted((tmp_path / "se").glob("*/trials.parquet"))
    searches = [p.parent.name for p in tables if "_rescore_" not in p.parent.name]
    assert searches == ["c_grid_s0", "c_random_s0", "c_tpe_asha_s0"]
    rescored = [pd.read_parquet(p) for p in tables if "_rescore_" in p.parent.name]
    # 1 to 3 distinct chosen configurations, each re-scored once on the fresh seed only.
    assert 1 <= len(rescored) <= 3 and all(t["seed"].tolist() == [se.RESCORE_SEED] for t in rescored)
    before = {p: pd.read_parquet(p)["run_key"].tolist() for p in tables}
    runs_before = sorted(str(p) for p in (tmp_path / "se").rglob("summary.json"))
    assert se.main(args) == 0
    second = capsys.readouterr().out
    assert {p: pd.read_parquet(p)["run_key"].tolist() for p in tables} == before
    assert sorted(str(p) for p in (tmp_path / "se").rglob("summary.json")) == runs_before
    table = lambda out: out[out.index("problem "):out.index("{")]  # noqa: E731
    assert table(first) == table(second)  # the same ratios, read back instead of trained again
