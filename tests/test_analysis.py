"""analysis/: planted answers in synthetic tables of the documented schema must come back out."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]

from tests import synthetic
from analysis.ablations import CONTRADICTED, INCONCLUSIVE, NOT_RUN, REPRODUCED, analyze_ablations
from analysis.c_scaling import estimate_c_star
from analysis.curriculum import final_ranking, rank_curricula
from analysis.dropout import analyze_dropout, evidence_trend
from analysis.load import SchemaError, find_experiments, load_results, load_trials
from analysis.curve_minimum import curve_minimum

N_BOOT = 400


def _frame(rows) -> pd.DataFrame:
    return pd.DataFrame(rows)


# ---- statistics ------------------------------------------------------------------------------

def test_curve_minimum_finds_vertex_between_grid_points():
    # y = (ln x - ln 0.03)^2 sampled on a grid that skips 0.03: the local quadratic is exact.
    grid = 0.03 * 2.0 ** np.array([-2.3, -1.3, -0.3, 0.7, 1.7])
    x = np.repeat(grid, 3)
    y = (np.log(x) - np.log(0.03)) ** 2
    est = curve_minimum(x, y, log_x=True, n_boot=50)
    assert est.value == pytest.approx(0.03, rel=1e-9)
    assert not est.at_edge and est.num_values == 5 and est.num_runs == 15
    # Two-sided: the interval holds the tested neighbours of the best value, exactly as searched.
    assert est.best_x == grid[2] and est.lo <= grid[1] and est.hi >= grid[3]
    assert est.bound == "two-sided" and not est.vertex_far
    # An optimum beyond the grid is a one-sided bound: no point estimate, no zero-width interval.
    edge = curve_minimum(x, (np.log(x) - np.log(10.0)) ** 2, log_x=True, n_boot=50)
    assert edge.at_edge and edge.bound == "above range" and math.isnan(edge.value)
    assert edge.best_x == grid.max() and edge.lo == grid[-2] and edge.hi == math.inf


# ---- open question 1 ----------------------------------------------------------------------------

def test_c_scaling_recovers_planted_exponent():
    rows = synthetic.planted_c_scaling(np.random.default_rng(0), b=0.5, seeds=5, noise=0.3)
    frame = _frame(rows)
    result = estimate_c_star(frame, n_boot=N_BOOT)
    per = result.per_dataset.set_index("dataset")
    assert len(per) == 4 and (per["num_seeds"] == 5).all()
    planted = 0.00054 * np.sqrt([synthetic.DATASETS[d] for d in per.index])
    assert np.allclose(per["c_star"], planted, rtol=0.1)
    fit = result.fit
    assert abs(fit.b - 0.5) < 0.03 and fit.b_hi - fit.b_lo < 0.1
    # Containment is checked on 99% intervals: in simulation (40 draws of this design) the 95% ones held
    # the planted b in 92% of draws and each c* in 94%, so one fixed draw may legitimately miss at 95%.
    wide = estimate_c_star(frame, n_boot=N_BOOT, level=0.99)
    per99 = wide.per_dataset.set_index("dataset")
    assert ((per99["c_lo"] <= planted) & (planted <= per99["c_hi"])).all()
    assert wide.fit.b_lo <= 0.5 <= wide.fit.b_hi and wide.fit.b_contains_paper
    assert wide.fit.a_lo <= 0.00054 <= wide.fit.a_hi


def test_c_scaling_from_a_random_search_with_one_seed_per_c():
    # As the c_scaling space runs it: the paper's c first, then c log-uniform in [1e-4, 1], one seed each.
    rows = synthetic.planted_c_scaling(np.random.default_rng(3), seeds=1, random_c=16, noise=0.3)
    result = estimate_c_star(_frame(rows), n_boot=N_BOOT)
    # digits-8 also has a diverged run at c = 1e-5: a tested level with a bad outcome.
    per = result.per_dataset.set_index("dataset")
    assert per["num_c"].to_dict() == {"digits-8": 18, "patches-16": 17, "patches-32": 17, "patches-64": 17}
    assert (per["num_seeds"] == 1).all() and per.loc["digits-8", "diverged_levels"] == "c=1e-05: 1/1 diverged"
    fit = result.fit
    # Four data sets leave 2 degrees of freedom for their scatter about the law: t = 4.3, honestly wide; the
    # joint fit of the runs is narrower here, so the interval is widened to that scatter's.
    assert fit.b_lo <= 0.5 <= fit.b_hi and fit.b_hi - fit.b_lo < 0.2 and fit.df == 2
    assert fit.method.startswith("joint, widened")


def test_c_scaling_detects_an_exponent_other_than_half():
    rows = synthetic.planted_c_scaling(np.random.default_rng(1), b=0.3, a=0.002, seeds=5, noise=0.3)
    fit = estimate_c_star(_frame(rows), n_boot=N_BOOT).fit
    assert fit.b_lo <= 0.3 <= fit.b_hi
    assert not fit.b_contains_paper


def test_c_scaling_skips_diverged_runs_and_other_metrics():
    rows = synthetic.planted_c_scaling(np.random.default_rng(2), seeds=3, datasets=("digits-8",))
    # A diverged run with an absurdly good FD and an L2 run must not move the estimate.
    rows.append(synthetic.trial_row("c_scaling", "bad", 0, "digits-8", status="diverged", final_fd=-100.0,
                                    config={"loss.huber_c": 0.05}))
    rows.append(synthetic.trial_row("c_scaling", "l2", 0, "digits-8", final_fd=-100.0,
                                    config={"loss.metric": "l2", "loss.huber_c": 0.05}))
    result = estimate_c_star(_frame(rows), n_boot=N_BOOT)
    assert result.fit is None  # one dimension only
    row = result.per_dataset.iloc[0]
    assert row["c_lo"] <= 0.00054 * 8 <= row["c_hi"]
    assert row["num_runs"] == 21 and row["left_out"] == "2 diverged"


# ---- open question 2 ----------------------------------------------------------------------------

def test_dropout_recovers_planted_optimum_per_objective():
    # Optima 0.3 apart on a grid spaced by 0.1: each optimum's interval spans its tested neighbours, so the
    # difference is resolved only when the brackets do not overlap.
    rows = synthetic.planted_dropout(np.random.default_rng(3), best={"consistency": 0.4, "diffusion": 0.1})
    result = analyze_dropout(_frame(rows), n_boot=N_BOOT)
    best = result.best.set_index("objective")
    assert best.loc["consistency", "lo"] <= 0.4 <= best.loc["consistency", "hi"]
    assert best.loc["diffusion", "lo"] <= 0.1 <= best.loc["diffusion", "hi"]
    assert best.loc["consistency", "best_tested"] == 0.4 and best.loc["diffusion", "best_tested"] == 0.1
    diff = result.difference.iloc[0]
    assert diff["lo"] > 0 and diff["lo"] <= 0.3 <= diff["hi"]
    # The planted mechanism: the gap shrinks and the NN ratio rises towards 1 with dropout.
    assert (evidence_trend(result.evidence, "gap")["slope"] < 0).all()
    assert (evidence_trend(result.evidence, "nn_ratio")["slope"] > 0).all()
    assert set(result.evidence["num_seeds"]) == {4}
    trends = result.trends.set_index(["objective", "column"])
    for objective in ("consistency", "diffusion"):
        gap, ratio = trends.loc[(objective, "gap")], trends.loc[(objective, "nn_ratio")]
        assert gap["hi"] < 0 and gap["lo"] <= -0.005 <= gap["hi"]
        assert ratio["lo"] > 0 and ratio["lo"] <= 0.06 <= ratio["hi"]


def test_dropout_from_a_random_search_with_one_seed_per_rate():
    # One draw of a random design can leave the optimum between sparse points, so coverage is checked
    # over several draws: each 95% interval should hold the planted optimum in most of them.
    covered, shifts = [], []
    for draw in range(5):
        rows = synthetic.planted_dropout(np.random.default_rng(20 + draw), best={"consistency": 0.35,
                                         "diffusion": 0.1}, seeds=1, rates=None, noise=0.3)
        result = analyze_dropout(_frame(rows), n_boot=N_BOOT)
        best = result.best.set_index("objective")
        assert (best["num_rates"] == 20).all() and (best["num_seeds"] == 1).all()
        for objective, planted in (("consistency", 0.35), ("diffusion", 0.1)):
            covered.append(best.loc[objective, "lo"] <= planted <= best.loc[objective, "hi"])
        shifts.append(result.difference.iloc[0]["difference"])
    assert sum(covered) >= 8, covered
    assert abs(np.mean(shifts) - 0.25) < 0.05


# ---- open question 3 ----------------------------------------------------------------------------

def test_curriculum_ranking_recovered_at_equal_compute():
    planted = {"exponential": 5.0, "adaptive": 6.0, "sqrt": 7.0, "constant": 9.0}
    trials, evals = synthetic.planted_curricula(np.random.default_rng(4), final_fd=planted, seeds=4, noise=0.2)
    result = rank_curricula(_frame(trials), _frame(evals), n_boot=N_BOOT)
    final = final_ranking(result.ranking)
    order = [name.split()[0] for name in final["curriculum"]]
    assert order == sorted(planted, key=planted.get)
    assert final["images_seen"].iloc[0] == 1000 * 32
    top = final.iloc[0]
    assert top["p_best"] > 0.9 and top["rank_hi"] == 1 and top["num_seeds"] == 4
    assert "adaptive" in set(order)
    # Every budget ranks the same way (the planted curves never cross).
    for _, at_budget in result.ranking.groupby("images_seen"):
        assert at_budget.sort_values("rank")["curriculum"].str.split().str[0].tolist() == order


def test_curricula_from_a_random_search_are_ranked_by_shape(tmp_path):
    planted = {"exponential": 5.0, "sqrt": 7.0, "constant": 9.0}
    trials, evals = synthetic.planted_curricula(np.random.default_rng(12), final_fd=planted, seeds=4,
                                                random_s=True)
    by_label = final_ranking(rank_curricula(_frame(trials), _frame(evals), n_boot=N_BOOT).ranking)
    assert (by_label["num_seeds"] == 1).all() and by_label["p_best"].isna().all()
    by_shape = final_ranking(rank_curricula(_frame(trials), _frame(evals), n_boot=N_BOOT, by_shape=True).ranking)
    assert by_shape["curriculum"].tolist() == ["exponential", "sqrt", "constant"]
    assert (by_shape["num_seeds"] == 4).all() and by_shape["p_best"].iloc[0] > 0.9
    from analysis.report import write_report

    synthetic.write_experiment(tmp_path / "cur", trials, evals)
    first = synthetic.first_prose(write_report([tmp_path], n_boot=100).read_text())
    assert "the 3 curriculum shapes (pooled over the sampled s0, s1) differ (" in first
    assert "the best is exponential" in first


# ---- ablations ----------------------------------------------------------------------------------

def test_ablation_verdicts_follow_planted_effects():
    rows = synthetic.planted_ablations(np.random.default_rng(5), {
        "loss.teacher": ("ema", -3.0),            # strong, in the paper's favour
        "loss.weighting": ("uniform", 0.0),       # null
        "network.fourier_scale": (16.0, 3.0),     # reversed
        "loss.metric": ("l2", -2.0),
    }, seeds=5)
    table = analyze_ablations(_frame(rows), n_boot=N_BOOT).set_index("key")
    assert table.loc["loss.teacher", "verdict"] == REPRODUCED
    assert table.loc["loss.teacher", "lo"] <= -3.0 <= table.loc["loss.teacher", "hi"]
    assert table.loc["loss.weighting", "verdict"] == INCONCLUSIVE
    assert table.loc["network.fourier_scale", "verdict"] == CONTRADICTED
    assert table.loc["loss.metric", "verdict"] == REPRODUCED
    assert table.loc["loss.noise_schedule", "verdict"] == NOT_RUN
    assert table.loc["loss.teacher", "num_paper"] == 5 and table.loc["loss.teacher", "num_alt"] == 5


def test_ablation_with_too_few_seeds_is_inconclusive_and_says_so():
    rows = synthetic.planted_ablations(np.random.default_rng(6), {"loss.teacher": ("ema", -5.0)}, seeds=2)
    row = analyze_ablations(_frame(rows), n_boot=N_BOOT, min_seeds=3).set_index("key").loc["loss.teacher"]
    assert row["verdict"] == INCONCLUSIVE and "too few seeds (2 vs 2" in row["reason"]


def test_ablation_compares_only_matching_configurations():
    rng = np.random.default_rng(7)
    rows = synthetic.planted_ablations(rng, {"loss.teacher": ("ema", 0.0)}, seeds=4)
    # EMA runs at another learning rate, much better: they have no paper-arm partner and must not count.
    rows += [synthetic.trial_row("ablations", f"lr-{s}", s, final_fd=1.0, config={"loss.teacher": "ema",
                                                                                 "optim.lr": 1e-3})
             for s in range(4)]
    row = analyze_ablations(_frame(rows), n_boot=N_BOOT).set_index("key").loc["loss.teacher"]
    assert row["verdict"] == INCONCLUSIVE and row["num_alt"] == 4 and abs(row["effect"]) < 1.0


# ---- loading and schema -------------------------------------------------------------------------

def test_find_experiments_recurses_and_skips_ray_trial_folders(tmp_path):
    rng = np.random.default_rng(8)
    synthetic.write_experiment(tmp_path / "a" / "exp1", synthetic.planted_ablations(rng, {}, seeds=2))
    synthetic.write_experiment(tmp_path / "b" / "deeper" / "exp2", synthetic.planted_ablations(rng, {}, seeds=2))
    ray_trial = tmp_path / "a" / "ray_trial_0001"
    synthetic.write_experiment(ray_trial / "inner", synthetic.planted_ablations(rng, {}, seeds=1))
    (ray_trial / "params.json").write_text("{}")
    (ray_trial / "result.json").write_text("")
    found = find_experiments(tmp_path)
    assert [p.name for p in found] == ["exp1", "exp2"]
    trials = load_trials([tmp_path / "a", tmp_path / "b"])
    assert len(trials) == 4 and trials["experiment_dir"].nunique() == 2


def test_schema_errors_name_the_problem(tmp_path):
    with pytest.raises(SchemaError, match="no trials.parquet found in"):
        load_trials(tmp_path)
    with pytest.raises(SchemaError, match="does not exist"):
        load_trials(tmp_path / "nowhere")
    rows = synthetic.planted_ablations(np.random.default_rng(9), {}, seeds=2)
    broken = pd.DataFrame(rows).drop(columns=["final_fd", "seed"])
    (tmp_path / "exp").mkdir()
    broken.to_parquet(tmp_path / "exp" / "trials.parquet")
    with pytest.raises(SchemaError) as err:
        load_trials(tmp_path)
    message = str(err.value)
    assert "'seed'" in message and "'final_fd'" in message and str(tmp_path / "exp" / "trials.parquet") in message
    bad_status = pd.DataFrame(rows).assign(status="finished")
    bad_status.to_parquet(tmp_path / "exp" / "trials.parquet")
    with pytest.raises(SchemaError, match="status must be one of completed, pruned, diverged, errored"):
        load_trials(tmp_path)
    good = pd.DataFrame(rows)
    good.to_parquet(tmp_path / "exp" / "trials.parquet")
    pd.DataFrame({"trial_id": ["x"], "step": [1]}).to_parquet(tmp_path / "exp" / "evals.parquet")
    with pytest.raises(SchemaError, match=r"evals.parquet lacks column\(s\) 'experiment'"):
        load_results(tmp_path)


def test_analysis_needs_its_config_columns():
    rows = pd.DataFrame(synthetic.planted_dropout(np.random.default_rng(10), seeds=2)).drop(columns="network.dropout")
    with pytest.raises(SchemaError, match="lacks column\\(s\\) 'network.dropout'"):
        analyze_dropout(rows)


# ---- report ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def synthetic_results(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("results")
    rng = np.random.default_rng(11)
    synthetic.write_experiment(root / "c_scaling", synthetic.planted_c_scaling(rng, seeds=5))
    synthetic.write_experiment(root / "dropout", synthetic.planted_dropout(rng, seeds=4))
    trials, evals = synthetic.planted_curricula(rng, seeds=4)
    trials.append(synthetic.trial_row("curriculum", "err-0", 0, status="errored"))
    synthetic.write_experiment(root / "curriculum", trials, evals)
    synthetic.write_experiment(root / "ablations", synthetic.planted_ablations(
        rng, {"loss.teacher": ("ema", -3.0), "loss.weighting": ("uniform", 0.0)}, seeds=5))
    return root


def test_report_end_to_end(synthetic_results, capsys, monkeypatch):
    from analysis import report

    monkeypatch.chdir(synthetic_results)
    code = report.main([str(synthetic_results), "--n-boot", str(N_BOOT)])  # analysis/report.py's main, in-process
    printed = capsys.readouterr()
    assert code == 0, printed.err
    out = synthetic_results / "report"
    assert str(out / "report.md") in printed.out
    text = (out / "report.md").read_text()
    first = synthetic.first_prose(text)
    # Q1: the exponent with its interval, and the seeds behind it.
    b = float(first.split("gives b = ")[1].split()[0])
    assert abs(b - 0.5) < 0.05 and "contains the paper's b = 0.5" in first and "5 seeds" in first
    assert "for the consistency objective" in first and "(4 seeds)" in first
    assert "the 4 curricula differ (seed-blocked F" in first and "the best is exponential" in first
    assert "EMA teacher vs none (none - ema): reproduced" in first
    assert "iCT weighting vs uniform (ict - uniform): inconclusive" in first
    assert "cannot answer" in first and "Pseudo-Huber vs L2" in first
    assert "1 diverged, 1 errored" in text
    for name in ("c_scaling.png", "dropout.png", "curricula.png", "ablations.png"):
        assert (out / name).stat().st_size > 10_000
        assert f"]({name})" in text
    per = pd.read_csv(out / "c_scaling_per_dataset.csv")
    assert len(per) == 4 and set(per.columns) >= {"c_star", "c_lo", "c_hi", "num_seeds"}
    ablations = pd.read_csv(out / "ablations.csv")
    assert set(ablations["verdict"]) >= {REPRODUCED, INCONCLUSIVE}
    assert not pd.read_csv(out / "curriculum_ranking.csv").empty


def test_pruned_runs_count_at_equal_compute(tmp_path):
    # An early-stopping scheduler let only the runs near c* finish; the others stopped at the first rung.
    rng = np.random.default_rng(14)
    trials = synthetic.planted_c_scaling(rng, seeds=3, datasets=("digits-8", "patches-32"))
    evals = []
    for row in trials:
        c_star = 0.00054 * synthetic.DATASETS[row["dataset"]] ** 0.5
        near = abs(math.log2(row["loss.huber_c"] / c_star)) < 0.6
        if row["status"] == "completed" and not near:
            row["status"] = "pruned"
        for step in ((1000, 2000) if near else (1000,)):
            evals.append({"experiment": row["experiment"], "trial_id": row["trial_id"], "config_id": row["config_id"],
                          "step": step, "images_seen": step * 32, "fd": row["final_fd"] + 5.0 * (2000 - step) / 1000,
                          **{k: 0.1 for k in ("num_points", "loss", "fd_2step", "kid", "loss_train", "loss_heldout",
                                              "nn_dist", "nn_dist_ref", "elapsed_s")}})
    synthetic.write_experiment(tmp_path / "asha", trials, evals)
    from analysis.report import write_report

    assert estimate_c_star(_frame(trials), n_boot=N_BOOT).per_dataset.empty  # finished runs: 1-2 values of c
    first = synthetic.first_prose(write_report([tmp_path], n_boot=N_BOOT).read_text())
    assert "pruned runs included (32000 images): Q1, the best Pseudo-Huber c: on digits-8" in first
    assert "Q1 (c scaling): no c-scaling experiment found" not in first
    per = pd.read_csv(tmp_path / "report" / "compute_c_scaling_per_dataset.csv").set_index("dataset")
    assert per.loc["digits-8", "c_lo"] <= 0.00432 <= per.loc["digits-8", "c_hi"]
    assert (tmp_path / "report" / "compute_c_scaling.png").exists()


def test_report_says_which_questions_the_tables_cannot_answer(synthetic_results, tmp_path):
    from analysis.report import write_report

    path = write_report([synthetic_results / "ablations"], out=tmp_path / "r", n_boot=100)
    first = synthetic.first_prose(path.read_text())
    assert "no c-scaling experiment found" in first
    assert "no dropout experiment found" in first
    assert "Q3 (curricula): no evals.parquet" in first
    assert "EMA teacher vs none" in first


def test_report_cli_fails_clearly_on_a_folder_without_tables(tmp_path, capsys):
    from analysis import report

    assert report.main([str(tmp_path)]) == 2
    assert f"no trials.parquet found in {tmp_path}" in capsys.readouterr().err
