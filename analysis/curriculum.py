"""Open question 3: is the exponential curriculum N(k) the best, adaptive curricula included?

The paper compared constant, square-root, linear, square, cosine and exponential schedules for the
number of discretisation points and found exponential best (Song & Dhariwal 2023, Sec. 3.4). Here
each curriculum (every curriculum.* column, so s0/s1 and any adaptive shape's own keys) gets its FD
against training compute (images_seen, from evals.parquet); curricula are ranked at equal compute
with Student-t intervals over seeds. Runs an early-stopping scheduler pruned enter through their
evaluations, so the default budgets are those every run reached: a curriculum pruned early is ranked,
never dropped as "not run".
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis.load import require_columns
from ict_core.records import COMPLETED, PRUNED
import scipy.stats

from analysis.selection import context_key, describe_context, value_at, value_token
from analysis.stats import (LEVEL, MIN_SEEDS, N_BOOT, blocked_anova, blocked_mean_draws, detectable_effect,
                            difference_stats, mean_ci, percentile_ci, t_pvalue)

SHAPE_KEY = "curriculum.shape"
PAPER_SHAPE = "exponential"


def curriculum_columns(df: pd.DataFrame) -> list[str]:
    return [c for c in df.columns if c.startswith("curriculum.")]


def curriculum_label(row: pd.Series, columns: list[str]) -> str:
    """"exponential s0=10 s1=1280": the shape plus its other curriculum keys that are set. The adaptive_*
    keys act on the adaptive shape only (ict_core/config/schema.py), so other shapes leave them out: they neither
    name nor split those curricula."""
    parts = [str(row[SHAPE_KEY])]
    adaptive = str(row[SHAPE_KEY]) == "adaptive"
    for c in columns:
        if c.startswith("curriculum.adaptive_") and not adaptive:
            continue
        if c != SHAPE_KEY and value_token(row[c]) != "-":
            parts.append(f"{c.split('.', 1)[1]}={value_token(row[c])}")
    return " ".join(parts)


def curves(trials: pd.DataFrame, evals: pd.DataFrame, metric: str = "fd", by_shape: bool = False,
           statuses=(COMPLETED, PRUNED)) -> pd.DataFrame:
    """FD against compute, one row per run of `statuses` and evaluation.

    trials: one row per run (dataset, seed, status, trial_id, experiment_dir, curriculum.* columns and
    other dotted config columns); evals: one row per evaluation (trial_id, images_seen, `metric`,
    experiment_dir). Output columns: dataset, context, curriculum, trial_id, seed, status, images_seen,
    `metric` and `fd_se` when evals has it.
    by_shape: label runs by curriculum.shape alone, pooling the s0, s1 (and other curriculum keys) that a
    random search sampled with it; the runs of one shape then count as its replicates.
    """
    require_columns(trials, ["dataset", "seed", "trial_id", "status", SHAPE_KEY], "trials table (curriculum)")
    require_columns(evals, ["trial_id", "images_seen", metric], "evals table (curriculum)")
    runs = trials[trials["status"].astype(str).isin(statuses)]
    cols = curriculum_columns(runs)
    labels = runs[SHAPE_KEY].astype(str) if by_shape else runs.apply(curriculum_label, axis=1, columns=cols)
    runs = runs.assign(curriculum=labels, context=context_key(runs, exclude=set(cols)))
    on = ["trial_id"] + (["experiment_dir"] if "experiment_dir" in runs and "experiment_dir" in evals else [])
    keep = ["dataset", "context", "curriculum", "seed", "status"] + on
    se = ["fd_se"] if "fd_se" in evals.columns and metric != "fd_se" else []
    out = evals[on + ["images_seen", metric] + se].merge(runs[keep], on=on, how="inner")
    out["images_seen"] = pd.to_numeric(out["images_seen"], errors="coerce")
    out[metric] = pd.to_numeric(out[metric], errors="coerce")
    out = out[np.isfinite(out["images_seen"]) & np.isfinite(out[metric]) & (out["images_seen"] > 0)]
    return out.sort_values(["dataset", "context", "curriculum", "trial_id", "images_seen"]).reset_index(drop=True)


def default_budgets(group: pd.DataFrame, max_budgets: int = 5) -> list[float]:
    """Evaluation points that every run of `group` covers, up to `max_budgets` spread in log compute,
    always including the largest compute all runs reached."""
    per_run = group.groupby("trial_id")["images_seen"]
    lo, hi = per_run.min().max(), per_run.max().min()
    if not np.isfinite(hi) or hi < lo:
        return []
    points = np.unique(group["images_seen"][(group["images_seen"] >= lo) & (group["images_seen"] <= hi)])
    if points.size > max_budgets:
        idx = np.unique(np.round(np.geomspace(1, points.size, max_budgets)).astype(int) - 1)
        points = points[idx]
    return [float(p) for p in points]


@dataclass
class CurriculumResult:
    """ranking: one row per (dataset, context, budget, curriculum); curves: as returned by curves()."""

    ranking: pd.DataFrame
    curves: pd.DataFrame
    metric: str


def _values_at(runs: dict, names: list, metric: str, budget: float) -> tuple[dict, dict, dict, list]:
    """At `budget` images: each curriculum's run values of `metric` and their seeds, how many of its runs were
    pruned, and every run's fd_se (runs that did not reach a finite value there are left out)."""
    values = {name: [] for name in names}
    seeds_of = {name: [] for name in names}
    pruned = {name: 0 for name in names}
    ses = []
    for g in runs.values():
        x = g["images_seen"].to_numpy(float)
        name = g["curriculum"].iloc[0]
        v = value_at(x, g[metric].to_numpy(float), budget)
        if np.isfinite(v):
            values[name].append(v)
            seeds_of[name].append(str(g["seed"].iloc[0]))
            pruned[name] += str(g["status"].iloc[0]) == PRUNED
            if "fd_se" in g.columns:
                ses.append(value_at(x, g["fd_se"].to_numpy(float), budget))
    return values, seeds_of, pruned, ses


def _unblocked_detectable(groups: list, level: float) -> float:
    """The smallest difference between two curricula that a t test on the pooled within-curriculum variance
    detects with 80% power, at the harmonic mean of their seed counts (a design grown unevenly, some curricula at
    6 seeds and some at 3, is not seed-blocked); NaN without residual degrees of freedom."""
    sizes = np.array([g.size for g in groups], float)
    df = float(sizes.sum() - len(groups))
    if df < 1 or (sizes < 1).any():
        return math.nan
    pooled = sum(float(((g - g.mean()) ** 2).sum()) for g in groups) / df
    n_h = len(sizes) / float((1.0 / sizes).sum())
    return detectable_effect(math.sqrt(2.0 * pooled / n_h), df, level)


def _tests(test, drawn: list, values: dict, ests: dict, level: float) -> tuple[float, float, bool, float, float]:
    """(global_f, global_p, seed_blocked, detectable, runner_up_p) of the curricula `drawn`: the seed-blocked F
    test when `test` (blocked_test) has residual degrees of freedom, else the one-way F test; and the lowest mean
    against the next lowest, since a best is only named when it beats the runner-up too."""
    global_f, global_p, blocked = math.nan, math.nan, False
    detectable = math.nan
    if test is not None and test.df_resid >= 1:
        global_f, global_p, blocked = test.f, test.p, True
        detectable = detectable_effect(math.sqrt(2.0 * test.resid_var / len(test.seeds)), test.df_resid, level)
    elif len(drawn) >= 2:
        groups = [np.asarray(values[n], float) for n in drawn]
        if sum(g.size for g in groups) > len(groups):
            global_f, global_p = (float(v) for v in scipy.stats.f_oneway(*groups))
        detectable = _unblocked_detectable(groups, level)
    runner_p = math.nan
    if len(drawn) >= 2:
        order = sorted(drawn, key=lambda n: ests[n].value)
        first, second = order[0], order[1]
        if blocked:
            se = math.sqrt(2.0 * test.resid_var / len(test.seeds))
            k = drawn.index
            runner_p = t_pvalue(test.means[k(first)] - test.means[k(second)], se, test.df_resid)
        else:
            d = difference_stats(np.asarray(values[first], float), np.asarray(values[second], float))
            runner_p = t_pvalue(d["value"], d["se"], d["df"])
    return global_f, global_p, blocked, detectable, runner_p


def rank_curricula(trials: pd.DataFrame, evals: pd.DataFrame, metric: str = "fd", budgets=None,
                   n_boot: int = N_BOOT, level: float = LEVEL, seed: int = 0, by_shape: bool = False
                   ) -> CurriculumResult:
    """Rank curricula by mean `metric` at equal compute, with intervals over seeds.

    Per (dataset, configuration apart from curriculum.*) with two or more curricula, at each budget
    (default_budgets unless given, in images): the mean metric over seeds with its t interval, the rank
    of the mean (1 = lowest), the rank's interval and P(best) over draws of every mean (stats.mean_draws).
    A curriculum with fewer than MIN_SEEDS runs has no interval: its interval, rank interval and P(best)
    are NaN and it takes no part in the others' draws. tied_best: the mean lies within the FD's standard
    error (median fd_se at that budget, when recorded) of the lowest mean. num_pruned: its runs that a
    scheduler stopped. by_shape: see curves().

    When every ranked curriculum ran the same seeds once each, the draws come from the seed-blocked model
    (stats.blocked_anova / blocked_mean_draws: a seed's effect, shared by every curriculum, cancels), and
    global_f, global_p are its F test of "all curricula equal" (seed_blocked true); otherwise P(best) uses
    independent draws of each mean and global_p is the one-way F test. runner_up_p: the test of the lowest
    mean against the next lowest (the blocked contrast, else Welch's t). detectable: the smallest difference
    between two curricula the design detects with 80% power at `level` (blocked: from the blocked model's
    residual; otherwise from the pooled within-curriculum variance at the harmonic mean of the seed counts).
    """
    rng = np.random.default_rng(seed)
    c = curves(trials, evals, metric, by_shape=by_shape)
    rows = []
    for (dataset, ctx), group in c.groupby(["dataset", "context"], sort=True):
        if group["curriculum"].nunique() < 2:
            continue
        runs = {tid: g for tid, g in group.groupby("trial_id")}
        names = sorted(group["curriculum"].unique())
        for budget in (default_budgets(group) if budgets is None else budgets):
            values, seeds_of, pruned, ses = _values_at(runs, names, metric, budget)
            present = [n for n in names if values[n]]
            if len(present) < 2:
                continue
            ests = {n: mean_ci(values[n], n_boot=n_boot, level=level, rng=rng) for n in present}
            drawn = [n for n in present if ests[n].n >= MIN_SEEDS]
            means = np.array([ests[n].value for n in present])
            point_rank = means.argsort().argsort() + 1
            tie = float(np.nanmedian(ses)) if ses and np.isfinite(ses).any() else math.nan
            test = blocked_test({n: values[n] for n in drawn}, {n: seeds_of[n] for n in drawn})
            if test is not None and test.df_resid >= 1:
                # Seeds shared by every curriculum: draw the means from the seed-blocked model, in which a
                # seed's effect on every curriculum cancels.
                boot = blocked_mean_draws(test, n_boot, rng)
                boot_rank = boot.argsort(1).argsort(1) + 1
            elif len(drawn) >= 2:
                boot = np.stack([ests[n].samples for n in drawn], axis=1)
                boot_rank = boot.argsort(1).argsort(1) + 1
            global_f, global_p, blocked, detectable, runner_p = _tests(test, drawn, values, ests, level)
            for j, name in enumerate(present):
                est = ests[name]
                r_lo = r_hi = p_best = math.nan
                if name in drawn and len(drawn) >= 2:
                    k = drawn.index(name)
                    r_lo, r_hi = percentile_ci(boot_rank[:, k], level)
                    p_best = float((boot_rank[:, k] == 1).mean())
                rows.append({"dataset": dataset, "context": describe_context(ctx), "images_seen": budget,
                             "curriculum": name, "num_seeds": est.n, "num_pruned": pruned[name],
                             "mean": est.value, "lo": est.lo, "hi": est.hi, "rank": int(point_rank[j]),
                             "rank_lo": r_lo, "rank_hi": r_hi, "p_best": p_best,
                             "tied_best": bool(np.isfinite(tie) and est.value - means.min() <= tie), "fd_se": tie,
                             "global_f": global_f, "global_p": global_p, "runner_up_p": runner_p,
                             "seed_blocked": blocked,
                             "detectable": detectable})
    ranking = pd.DataFrame(rows, columns=["dataset", "context", "images_seen", "curriculum", "num_seeds", "num_pruned",
                                          "mean", "lo", "hi", "rank", "rank_lo", "rank_hi", "p_best", "tied_best",
                                          "fd_se", "global_f", "global_p", "runner_up_p", "seed_blocked",
                                          "detectable"])
    return CurriculumResult(ranking, c, metric)


def blocked_test(values: dict, seeds: dict):
    """The seed-blocked F test (stats.blocked_anova) when every arm ran the same seeds once each, else None."""
    if len(values) < 2:
        return None
    sets = [seeds[n] for n in values]
    if any(len(set(s)) != len(s) for s in sets) or len({frozenset(s) for s in sets}) != 1:
        return None
    return blocked_anova({n: dict(zip(seeds[n], values[n])) for n in values})


def final_ranking(ranking: pd.DataFrame) -> pd.DataFrame:
    """The rows at the largest common budget of each (dataset, context), sorted by rank."""
    if ranking.empty:
        return ranking
    last = ranking.groupby(["dataset", "context"])["images_seen"].transform("max")
    return ranking[ranking["images_seen"] == last].sort_values(["dataset", "context", "rank"]).reset_index(drop=True)
