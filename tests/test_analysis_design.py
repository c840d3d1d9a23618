"""Statistics that use the design (issue 19, item 4), each checked on planted data: Holm over the paper claims,
pairing chosen by the seed correlation, seed-blocked fits and resampling, the seed-blocked global test before a
best curriculum is named, plateaus, the dropout floor, and the detectable effect printed beside open verdicts."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import scipy.stats

import synthetic
from analysis.ablations import ABLATIONS, INCONCLUSIVE, REPRODUCED, analyze_ablations, claims
from analysis.curriculum import final_ranking, rank_curricula
from analysis.dropout import run_trends
from analysis.report_parts import optimum_text
from analysis.curve_minimum import curve_minimum
from analysis.stats import (blocked_anova, design_correlation, detectable_effect, difference_stats, holm,
                            pairing_threshold, t_interval, t_pvalue)


# ---- Holm over the paper claims -------------------------------------------------------------------

def test_holm_adjusts_step_down_and_rejects_at_least_what_bonferroni_does():
    adj, share = holm([0.01, 0.04, math.nan, 0.03, 0.005])
    assert share.tolist()[:2] == [3.0, 1.0] and math.isnan(share[2])
    # sorted: 0.005 (x4), 0.01 (x3), 0.03 (x2), 0.04 (x1), running maximum
    assert adj[[4, 0, 3, 1]].tolist() == pytest.approx([0.02, 0.03, 0.06, 0.06])
    assert math.isnan(adj[2])
    rng = np.random.default_rng(0)
    for _ in range(200):
        p = rng.uniform(0, 0.1, 5)
        assert ((holm(p)[0] <= 0.05) >= (np.minimum(1, 5 * p) <= 0.05)).all()


def _claims_frame(rng, effects: dict, seeds: int = 3, extra_fourier=(), noise: float = 1.0):
    """Five paper claims (and optional extra Fourier levels, not claims) with independent seed noise."""
    alternatives = {"loss.teacher": ("ema", effects.get("loss.teacher", 0.0)),
                    "loss.metric": ("l2", effects.get("loss.metric", 0.0)),
                    "loss.noise_schedule": ("uniform", effects.get("loss.noise_schedule", 0.0)),
                    "loss.weighting": ("uniform", effects.get("loss.weighting", 0.0)),
                    "network.fourier_scale": (16.0, effects.get("network.fourier_scale", 0.0))}
    rows = synthetic.planted_ablations(rng, alternatives, seeds=seeds, noise=noise)
    for value in extra_fourier:
        for seed in range(seeds):
            rows.append(synthetic.trial_row("ablations", f"fourier={value}-{seed}", seed, space="ablations",
                                            final_fd=10 + rng.normal(0, noise),
                                            config={"network.fourier_scale": value}))
    return pd.DataFrame(rows)


def test_the_family_is_the_five_paper_claims_and_extra_levels_do_not_enlarge_it():
    assert len(claims()) == 5
    rng = np.random.default_rng(3)
    frame = _claims_frame(rng, {"loss.teacher": -4.0}, seeds=4, extra_fourier=(0.2, 2.0), noise=0.5)
    table = analyze_ablations(frame)
    fourier = table[table["key"] == "network.fourier_scale"].set_index("alternative")
    assert fourier["claim"].to_dict() == {"0.2": False, "16": True, "2": False}
    teacher = table.set_index("key").loc["loss.teacher"]
    # Smallest p of five claims: Holm's first step at 1 - 0.05/5; the two extra levels do not make it 1 - 0.05/7.
    assert teacher["level"] == pytest.approx(0.99) and teacher["verdict"] == REPRODUCED
    without = analyze_ablations(frame[~frame["network.fourier_scale"].isin([0.2, 2.0])])
    assert without.set_index("key").loc["loss.teacher", "p_adj"] == pytest.approx(teacher["p_adj"])
    # A line outside the family is reported at the family's strictest level.
    assert fourier.loc["0.2", "level"] == pytest.approx(0.99)


def _holm_verdicts(rng, effects, seeds, extra=0):
    """Verdict count of one report of five independent-seed claims (plus `extra` lines outside the family)
    through difference_stats, holm and apply_correction's rule (interval at the step's level excludes 0 and
    Holm's adjusted p <= 0.05); returns (Holm verdicts, Bonferroni-over-all-lines verdicts)."""
    p = []
    for effect in list(effects) + [0.0] * extra:
        d = difference_stats(rng.normal(effect, 1, seeds), rng.normal(0, 1, seeds))
        p.append(t_pvalue(d["value"], d["se"], d["df"]))
    adj, _ = holm(p[:len(effects)])
    return int((adj <= 0.05).sum()), int((np.minimum(1, len(p) * np.asarray(p[:len(effects)])) <= 0.05).sum())


@pytest.mark.slow
def test_holm_over_five_null_claims_keeps_the_family_wise_rate_and_finds_planted_effects():
    """Calibration: five null claims at 3 vs 3 seeds, any spurious verdict in at most 5% of reports (Holm
    controls the family-wise rate); with planted effects of 3 seed-SDs in three claims at 5 seeds, Holm over
    the five claims finds more than Bonferroni over seven lines (the claims and two Fourier levels)."""
    rng = np.random.default_rng(11)
    reports = 2000
    spurious = sum(_holm_verdicts(rng, [0.0] * 5, 3)[0] > 0 for _ in range(reports))
    assert 0.02 <= spurious / reports <= 0.05 + 2.5 * math.sqrt(0.05 * 0.95 / reports), spurious / reports
    found = np.array([_holm_verdicts(rng, [-3.0, -3.0, -3.0, 0.0, 0.0], 5, extra=2) for _ in range(300)])
    assert found[:, 0].sum() > 1.05 * found[:, 1].sum(), found.sum(0)
    # The same rule inside analyze_ablations: a planted effect at 4 seeds is reproduced at Holm's first step.
    table = analyze_ablations(_claims_frame(rng, {"loss.weighting": -4.0}, seeds=4, noise=0.5))
    row = table.set_index("key").loc["loss.weighting"]
    assert row["verdict"] == REPRODUCED and row["level"] == pytest.approx(0.99)
    assert (table.loc[table["key"] != "loss.weighting", "level"] < 0.99).all()  # later steps, laxer levels


# ---- pairing by the seed correlation --------------------------------------------------------------

def test_pairing_threshold_matches_equal_interval_widths():
    assert pairing_threshold(3) == pytest.approx(0.584, abs=0.005)
    assert pairing_threshold(3, 1 - 0.05 / 7) == pytest.approx(0.80, abs=0.03)
    assert pairing_threshold(10) < 0.2 and pairing_threshold(1) == math.inf
    r = pairing_threshold(5)
    t4, t8 = scipy.stats.t.ppf(0.975, 4), scipy.stats.t.ppf(0.975, 8)
    assert t4 * math.sqrt(1 - r) == pytest.approx(t8)


@pytest.mark.slow
@pytest.mark.parametrize("rho", [0.0, 0.6, 0.95])
def test_pairing_chosen_by_the_designs_correlation_keeps_95_percent_coverage(rho):
    """Four arms on the same 3 seeds (a baseline and three alternatives); the seed correlation pooled over the
    arms picks paired or Welch for arm 1 - arm 0. Coverage holds; Welch is taken when seeds do not correlate."""
    rng = np.random.default_rng(int(rho * 100))
    reps, n, hits, paired, widths = 2000, 3, 0, 0, []
    for _ in range(reps):
        y = rng.normal(0, math.sqrt(rho), (1, n)) + rng.normal(0, math.sqrt(1 - rho), (4, n))
        y[1] += 1.0
        d = difference_stats(y[1], y[0], range(n), range(n), correlation=design_correlation(y))
        lo, hi = t_interval(d["value"], d["se"], d["df"])
        hits += lo <= 1.0 <= hi
        paired += d["paired"]
        widths.append(hi - lo)
    assert hits / reps >= 0.94, hits / reps
    exact = [2 * scipy.stats.t.ppf(0.975, n - 1) * math.sqrt(2 * (1 - rho) / n)]  # paired, expected sd
    if rho == 0.0:
        assert paired / reps < 0.15 and np.mean(widths) < 0.85 * exact[0]
    if rho == 0.95:
        assert paired / reps > 0.9


def test_the_designs_correlation_is_the_seed_share_of_the_variance():
    rng = np.random.default_rng(6)
    y = rng.normal(0, math.sqrt(0.8), (1, 40)) + rng.normal(0, math.sqrt(0.2), (6, 40))
    assert design_correlation(y) == pytest.approx(0.8, abs=0.1)
    assert math.isnan(design_correlation(y[:2]))  # two arms: their own correlation would choose by chance
    d = difference_stats(y[0, :3], y[1, :3], range(3), range(3))
    assert d["paired"]  # without the design's correlation the exact paired interval is kept


# ---- detectable effect ----------------------------------------------------------------------------

def test_the_detectable_effect_is_found_with_80_percent_power():
    rng = np.random.default_rng(5)
    n, sigma, reps = 6, 2.0, 4000
    se = sigma / math.sqrt(n)
    effect = detectable_effect(se, n - 1)
    d = rng.normal(effect, sigma, (reps, n))
    se_hat = d.std(1, ddof=1) / math.sqrt(n)
    p = np.array([t_pvalue(m, s, n - 1) for m, s in zip(d.mean(1), se_hat)])
    assert 0.76 <= (p < 0.05).mean() <= 0.88, (p < 0.05).mean()
    assert math.isnan(detectable_effect(math.nan, 3))


def test_an_inconclusive_claim_says_what_it_cannot_detect(tmp_path):
    from analysis.report import write_report

    rng = np.random.default_rng(8)
    frame = _claims_frame(rng, {}, seeds=3)
    synthetic.write_experiment(tmp_path / "exp", frame.to_dict("records"))
    text = write_report(tmp_path / "exp", out=tmp_path / "out").read_text()
    line = next(a for a in text.splitlines() if "Ablations (" in a)
    assert "Holm-corrected" in line and line.count("cannot detect effects below") >= 5
    table = pd.read_csv(tmp_path / "out" / "ablations.csv")
    assert (table["detectable"] > 0).all()


# ---- seed-blocked fits ----------------------------------------------------------------------------

def _dropout_arm(rng, seeds=5, seed_sd=0.05, noise=0.002, slope=0.05):
    rows = []
    offsets = rng.normal(0, seed_sd, seeds)
    for p in (0.0, 0.1, 0.2, 0.3, 0.4):
        for s in range(seeds):
            gap = offsets[s] + slope * p + rng.normal(0, noise)
            rows.append({"network.dropout": p, "seed": s, "final_loss_train": 0.1, "final_loss_heldout": 0.1 + gap,
                         "final_nn_dist": 0.2, "final_nn_dist_ref": 0.2})
    return pd.DataFrame(rows)


def test_dropout_trend_fitted_within_seeds_covers_and_is_narrower():
    rng = np.random.default_rng(9)
    hits, widths, old_widths, reps = 0, [], [], 300
    for r in range(reps):
        arm = _dropout_arm(rng)
        gap = next(t for t in run_trends(arm, "d", "consistency", n_boot=400, rng=rng) if t["column"] == "gap")
        assert gap["seed_blocked"]
        hits += gap["lo"] <= 0.005 <= gap["hi"]
        widths.append(gap["hi"] - gap["lo"])
        if r < 40:
            old = next(t for t in run_trends(arm.drop(columns="seed"), "d", "c", n_boot=400, rng=rng)
                       if t["column"] == "gap")
            old_widths.append(old["hi"] - old["lo"])
    assert abs(hits / reps - 0.95) <= 0.035, hits / reps
    assert np.median(widths) < np.median(old_widths) / 3  # seed offsets (sd 0.05) no longer enter the slope


def test_c_star_bootstrap_resamples_seeds_as_blocks():
    """A seed that shifts the whole curve does not move its minimum: blocked replicates stay tight."""
    rng = np.random.default_rng(12)
    grid = np.exp(np.linspace(-3, 3, 7))
    offsets = rng.normal(0, 5.0, 4)
    x, y, seeds = [], [], []
    for c in grid:
        for s in range(4):
            x.append(c)
            y.append(10 + math.log(c / 1.3) ** 2 + offsets[s] + rng.normal(0, 0.1))
            seeds.append(s)
    blocked = curve_minimum(x, y, n_boot=400, rng=np.random.default_rng(1), seeds=seeds)
    plain = curve_minimum(x, y, n_boot=400, rng=np.random.default_rng(1))
    assert blocked.seed_blocked and not plain.seed_blocked
    spread = lambda est: np.subtract(*np.quantile(np.log(est.samples), [0.975, 0.025]))  # noqa: E731
    assert spread(blocked) < spread(plain) / 3
    lo, hi = np.quantile(blocked.samples, [0.01, 0.99])
    assert lo <= 1.3 <= hi


# ---- plateaus and the dropout floor ---------------------------------------------------------------

def test_c_on_a_plateau_is_the_largest_c_within_its_standard_error():
    rng = np.random.default_rng(13)
    grid = [1e-4, 2e-4, 4e-4, 7e-4, 1.4e-3, 2.8e-3, 5.6e-3]
    true = {1e-4: 10.0, 2e-4: 10.0, 4e-4: 10.0, 7e-4: 10.0, 1.4e-3: 13.0, 2.8e-3: 18.0, 5.6e-3: 25.0}
    found = []
    for _ in range(100):
        x = [c for c in grid for _ in range(3)]
        y = [true[c] + rng.normal(0, 0.5) for c in x]
        est = curve_minimum(x, y, n_boot=50, rng=rng, seeds=[s for _ in grid for s in range(3)])
        found.append(est.plateau_x)
    found = np.array(found)
    assert np.isfinite(found).mean() >= 0.85  # the flat stretch is seen as one
    assert (found[np.isfinite(found)] <= 7e-4).all()  # never past the point where FD rises (by 6 seed SDs)
    assert (found == 7e-4).mean() >= 0.4  # the plateau's far end is often reached at 3 seeds


def test_dropout_best_at_zero_is_an_answer_not_a_bound():
    text = optimum_text("below range", 0.0, math.nan, -math.inf, 0.1, False, "dropout", floor=0.0)
    assert text.startswith("dropout 0 is best at this budget") and "may lie below" not in text
    c_text = optimum_text("below range", 1e-4, math.nan, 0.0, 2e-4, False, "c")
    assert "may lie below the range" in c_text


def test_a_best_value_that_only_ties_with_the_edge_is_not_called_the_edge():
    # The cpu campaign's patches-8 ladder: the second-smallest c had the lowest mean by 0.4 FD, tied within the
    # standard error with the smallest, so the optimum is a one-sided bound; the text had called that best value
    # "the smallest searched value".
    grid = [1e-4, 2e-4, 4e-4, 8e-4]
    x = [c for c in grid for _ in range(3)]
    y = [{1e-4: 117.0, 2e-4: 116.6, 4e-4: 140.0, 8e-4: 200.0}[c] + d for c, d in zip(x, [-1.0, 0.0, 1.0] * 4)]
    est = curve_minimum(x, y, n_boot=50, rng=np.random.default_rng(0), tie=2.0)
    assert est.bound == "below range" and est.best_x == 2e-4
    text = optimum_text(est.bound, est.best_x, est.value, est.lo, est.hi, False, "c", edges=(min(grid), max(grid)))
    assert "ties within the standard error with the smallest searched value (0.0001)" in text
    assert "(0.0002) is the smallest" not in text
    at_edge = optimum_text("below range", 1e-4, math.nan, 0.0, 2e-4, False, "c", edges=(1e-4, 8e-4))
    assert "the best tested c (0.0001) is the smallest searched value" in at_edge
    above = optimum_text("above range", 4e-4, math.nan, 2e-4, math.inf, False, "c", edges=(1e-4, 8e-4))
    assert "ties within the standard error with the largest searched value (0.0008)" in above
    # Through the report's own path: estimate_c_star's row for a data set, then its Q1 text.
    from analysis.c_scaling import estimate_c_star
    from analysis.report_questions import _c_dataset_text

    rows = [synthetic.trial_row("ladder", f"{c}-{seed}", seed, "patches-8", final_fd=fd, final_fd_se=2.0,
                                config={"loss.huber_c": c}) for seed, (c, fd) in enumerate(zip(x, y))]
    for row, seed in zip(rows, [0, 1, 2] * 4):
        row["train.seed"] = row["seed"] = seed
    per_dataset = estimate_c_star(pd.DataFrame(rows), n_boot=20).per_dataset
    answer, _ = _c_dataset_text(per_dataset.iloc[0])
    assert "the best tested c (0.0002) ties within the standard error with the smallest searched value (0.0001)" \
        in answer, answer
    # dropout: a best rate that ties with 0, the smallest possible one, is an interval from 0, not a bound below it
    tied_zero = optimum_text("below range", 0.1, math.nan, -math.inf, 0.2, False, "dropout", floor=0.0,
                             edges=(0.0, 0.3))
    assert "optimum lies in [0, 0.2)" in tied_zero and "below the range" not in tied_zero


def test_the_detectable_difference_between_tested_values_tracks_the_noise_not_the_seeds():
    from analysis.curve_minimum import level_detectable

    grid = [1e-4, 2e-4, 4e-4, 8e-4, 1.6e-3]
    curve = {c: 100 + 40 * math.log2(c / 1e-4) for c in grid}  # monotone: an optimum below the range

    def detectable(noise: float, seed_sd: float, seeds: int, rng) -> float:
        offsets, z = rng.normal(0, 1, seeds), rng.normal(0, 1, (len(grid), seeds))
        x = [c for c in grid for _ in range(seeds)]
        y = [curve[c] + seed_sd * offsets[s] + noise * z[i, s] for i, c in enumerate(grid) for s in range(seeds)]
        return level_detectable(x, y, [s for _ in grid for s in range(seeds)])

    # The same draws at 4x the noise give 4x the detectable difference; seed offsets of 50 FD (shared by every c,
    # as a bad seed is) change nothing: the contrast is blocked by seed.
    base = detectable(2.0, 0.0, 3, np.random.default_rng(1))
    assert detectable(8.0, 0.0, 3, np.random.default_rng(1)) == pytest.approx(4 * base)
    assert detectable(2.0, 50.0, 3, np.random.default_rng(1)) == pytest.approx(base)
    # On average it is the two-sided 5% / 80% power difference at the planted noise, and more seeds shrink it.
    rng = np.random.default_rng(2)
    at3 = np.median([detectable(2.0, 10.0, 3, rng) for _ in range(400)])
    at8 = np.median([detectable(2.0, 10.0, 8, rng) for _ in range(400)])
    df3 = (len(grid) - 1) * 2
    expected3 = (scipy.stats.t.ppf(0.975, df3) + scipy.stats.t.ppf(0.8, df3)) * 2.0 * math.sqrt(2 / 3)
    assert 0.8 * expected3 < at3 < 1.1 * expected3
    assert at8 < 0.65 * at3  # sqrt(3/8) and fewer t quantile degrees of freedom at 3 seeds: about 0.57
    # One run per value (a random search) cannot say: no number rather than a made-up one.
    assert math.isnan(level_detectable(grid, [curve[c] for c in grid], range(len(grid))))
    # A stricter level asks for a larger difference.
    rng = np.random.default_rng(4)
    z = rng.normal(0, 2.0, (len(grid), 3))
    x3, y3 = [c for c in grid for _ in range(3)], [curve[c] + z[i, s] for i, c in enumerate(grid) for s in range(3)]
    s3 = [s for _ in grid for s in range(3)]
    assert level_detectable(x3, y3, s3, level=0.99) > 1.2 * level_detectable(x3, y3, s3)
    # Seeds written 0 and 0.0 are one seed.
    assert level_detectable(x3, y3, [float(s) if i % 2 else s for i, s in enumerate(s3)]) == pytest.approx(
        level_detectable(x3, y3, s3))


def test_the_detectable_difference_uses_every_seed_of_a_grown_design():
    # After a design round two values have 6 seeds and the rest 3; a value left with one finished seed (two
    # diverged) is set aside rather than voiding the number; the extra seeds shrink the residual variance's
    # uncertainty (more degrees of freedom), so the number does not grow.
    from analysis.curve_minimum import level_detectable

    rng = np.random.default_rng(5)
    grid = [1e-4, 2e-4, 4e-4, 8e-4]
    offsets = rng.normal(0, 30, 6)
    x, y, seeds = [], [], []
    for c, n in zip(grid, [6, 6, 3, 3]):
        for s in range(n):
            x.append(c), y.append(100 * c / 1e-4 + offsets[s] + rng.normal(0, 2.0)), seeds.append(s)
    grown = level_detectable(x, y, seeds)
    first_round = level_detectable(*zip(*[(a, b, s) for a, b, s in zip(x, y, seeds) if s < 3]))
    assert np.isfinite(grown) and np.isfinite(first_round)
    assert grown < 1.1 * first_round
    lone = level_detectable(x + [1.6e-3], y + [500.0], seeds + [0])
    assert lone == pytest.approx(grown)
    # The seed effects (SD 30) stay out of it: the number is near that of noise 2 at the median 4.5 seeds.
    assert grown < 10.0

# ---- curricula: a global seed-blocked test before a best is named ----------------------------------

def test_seed_blocked_f_test_holds_its_level_under_strong_seed_effects():
    rng = np.random.default_rng(14)
    reps, rejections, blocked_power, oneway_power = 1000, 0, 0, 0
    for _ in range(reps):
        seed_effect = rng.normal(0, 3.0, 3)
        null = {k: {s: 10 + seed_effect[s] + rng.normal(0, 0.5) for s in range(3)} for k in range(7)}
        rejections += blocked_anova(null).p < 0.05
    assert abs(rejections / reps - 0.05) <= 0.02, rejections / reps
    for _ in range(100):
        seed_effect = rng.normal(0, 3.0, 3)
        arms = {k: {s: 10 + 1.0 * k + seed_effect[s] + rng.normal(0, 0.5) for s in range(3)} for k in range(3)}
        blocked_power += blocked_anova(arms).p < 0.05
        oneway_power += scipy.stats.f_oneway(*[list(v.values()) for v in arms.values()]).pvalue < 0.05
    assert blocked_power > 2 * oneway_power


def test_no_best_curriculum_is_named_when_the_curricula_do_not_differ(tmp_path):
    from analysis.report import write_report

    same = {"exponential": 6.0, "sqrt": 6.0, "constant": 6.0, "linear": 6.0}
    trials, evals = synthetic.planted_curricula(np.random.default_rng(15), final_fd=same, seeds=3, noise=0.3)
    ranking = final_ranking(rank_curricula(pd.DataFrame(trials), pd.DataFrame(evals), n_boot=400).ranking)
    assert ranking["seed_blocked"].all() and ranking["global_p"].nunique() == 1
    synthetic.write_experiment(tmp_path / "exp", trials, evals)
    text = write_report(tmp_path / "exp", out=tmp_path / "out").read_text()
    q3 = next(a for a in text.splitlines() if a.startswith("Q3") or "Q3:" in a)
    if ranking["global_p"].iloc[0] >= 0.05:
        assert "no best of the 4 curricula is named" in q3 and "seed-blocked F" in q3
    distinct = {"exponential": 4.0, "sqrt": 6.0, "constant": 9.0, "linear": 7.0}
    trials, evals = synthetic.planted_curricula(np.random.default_rng(16), final_fd=distinct, seeds=3, noise=0.3)
    synthetic.write_experiment(tmp_path / "exp2", trials, evals)
    text = write_report(tmp_path / "exp2", out=tmp_path / "out2").read_text()
    q3 = next(a for a in text.splitlines() if "Q3:" in a)
    assert "differ (seed-blocked F" in q3 and "the best is exponential" in q3


def test_an_unevenly_grown_curriculum_design_still_says_what_it_could_detect():
    """What the issue-22 campaign's curriculum search produced: the designer grew 4 of 8 curricula to 6 seeds, so
    the design is not seed-blocked; its Q3 row must still state the smallest difference it could detect, and that
    number must track the seed noise (4x the noise, about 4x the difference) and shrink with more seeds."""
    same = {"exponential": 6.0, "sqrt": 6.0, "constant": 6.0, "linear": 6.0}

    def detectable(noise: float, seeds: int, grown: int) -> float:
        trials, evals = synthetic.planted_curricula(np.random.default_rng(21), final_fd=same, seeds=grown, noise=noise)
        keep = {t["trial_id"] for t in trials if t["curriculum.shape"] in ("exponential", "sqrt") or t["seed"] < seeds}
        trials = [t for t in trials if t["trial_id"] in keep]
        evals = [e for e in evals if e["trial_id"] in keep]
        ranking = final_ranking(rank_curricula(pd.DataFrame(trials), pd.DataFrame(evals), n_boot=200).ranking)
        assert not ranking["seed_blocked"].any()
        return float(ranking["detectable"].iloc[0])

    base = detectable(0.3, 3, 6)
    assert math.isfinite(base) and base > 0
    assert detectable(1.2, 3, 6) == pytest.approx(4 * base, rel=0.1)
    assert detectable(0.3, 5, 8) < base


# ---- b of c* = a d^b fitted jointly from all runs -------------------------------------------------

def _near_optima(rng, seeds=3, noise=0.3, seed_sd=2.0):
    """Runs at three c around c* = 0.00054 sqrt(d) on two data sets; each seed shifts its whole curve."""
    out = {}
    for name, dim in (("digits-8", 64), ("patches-32", 3072)):
        c_star = 0.00054 * dim ** 0.5
        grid = c_star * 2.0 ** (np.arange(-1, 2) + rng.uniform(-0.5, 0.5))
        offset = rng.normal(0, seed_sd, seeds)
        out[name] = pd.DataFrame([{"loss.huber_c": c, "y": 10 + 4 * math.log(c / c_star) ** 2 + offset[s]
                                   + rng.normal(0, noise), "seed": s, "dim": dim} for c in grid for s in range(seeds)])
    return out


def test_b_fitted_jointly_from_the_runs_has_an_interval_with_two_data_sets_that_covers():
    from analysis.c_scaling import estimate_c_star, fit_joint

    rng = np.random.default_rng(17)
    reps = 150
    fits = [fit_joint(_near_optima(rng)) for _ in range(reps)]
    assert all(f.df == 18 - 2 - 2 - 6 for f in fits)  # 18 runs; ln a, b, two curvatures, six seed heights
    hits = sum(f.b_lo <= 0.5 <= f.b_hi for f in fits)
    assert hits / reps >= 0.90, hits / reps
    # Through estimate_c_star: two data sets now give b an interval (before: none, K - 2 = 0 df).
    rows = synthetic.planted_c_scaling(np.random.default_rng(100), seeds=3, datasets=("digits-8", "patches-32"))
    fit = estimate_c_star(pd.DataFrame(rows), n_boot=20).fit
    assert fit.method.startswith("joint") and fit.num_datasets == 2 and fit.b_lo <= 0.5 <= fit.b_hi


def test_b_with_data_sets_scattered_about_the_law_keeps_the_scatter_interval():
    from analysis.c_scaling import estimate_c_star

    rows = synthetic.planted_c_scaling(np.random.default_rng(7), seeds=3, noise=0.3)
    shift = {"digits-8": 1.6, "patches-16": 0.6, "patches-32": 1.7, "patches-64": 0.7}  # c* off the law
    for row in rows:
        if row["status"] == "completed":
            c_star = 0.00054 * synthetic.DATASETS[row["dataset"]] ** 0.5 * shift[row["dataset"]]
            row["final_fd"] = 10 + 4 * math.log(row["loss.huber_c"] / c_star) ** 2
    fit = estimate_c_star(pd.DataFrame(rows), n_boot=20).fit
    assert fit.method.startswith("joint, widened") and fit.num_datasets == 4


# ---- docs agree with the budgets ------------------------------------------------------------------

def test_measurement_doc_names_the_samples_each_budget_evaluates():
    import re
    from pathlib import Path

    from ict_core.config import preset_overrides
    from tune.space_schema import BUDGETS, budget_preset

    text = (Path(__file__).resolve().parent.parent / "docs" / "MEASUREMENT.md").read_text()
    sentence = re.search(r"budgets in `tune/budgets/` evaluate (.*?) samples", text.replace("\n", " ")).group(1)
    stated = {name: int(n) for n, name in re.findall(r"(\d+) \((\w+)\)", sentence)}
    actual = {b: int(preset_overrides(str(budget_preset(b)))["eval.num_samples"]) for b in BUDGETS}
    assert stated == actual
