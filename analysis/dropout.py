"""Open question 2: why consistency training wants more dropout than diffusion on the same backbone.

The paper uses dropout 0.3 for iCT on CIFAR-10 (Song & Dhariwal 2023, Sec. 3.1), far above what
diffusion models use on the same NCSN++ network. Per objective (loss.objective) the best dropout is
where FD is smallest (local quadratic in the dropout rate, refitted on bootstrap resamples of
seeds). The evidence on why, at each rate: the generalisation gap final_loss_heldout -
final_loss_train, and memorisation final_nn_dist / final_nn_dist_ref (< 1: samples sit closer to
training images than fresh held-out images do).

The two objectives are compared whatever keys their strata fix: a config key that takes one value per
objective and differs between them (e.g. loss.p_mean / p_std of the diffusion strata) is the
objective's own setting and travels with it instead of splitting the runs into separate contexts.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis.load import require_columns
from ict_core.records import COMPLETED, DIVERGED
from analysis.curve_minimum import TWO_SIDED, curve_minimum, level_detectable
from analysis.selection import config_columns, context_key, describe_context, typical_se, usable, value_token
from analysis.stats import LEVEL, N_BOOT, mean_ci, percentile_ci, t_interval

P_KEY = "network.dropout"
OBJECTIVE_KEY = "loss.objective"


@dataclass
class DropoutResult:
    """best: one row per (dataset, objective); difference: consistency minus diffusion per dataset;
    evidence: one row per (dataset, objective, dropout)."""

    best: pd.DataFrame
    difference: pd.DataFrame
    evidence: pd.DataFrame
    metric: str
    trends: pd.DataFrame = None  # see run_trends


def objective_keys(group: pd.DataFrame) -> set[str]:
    """Config keys that belong to the objective: one value within each objective's runs, differing
    between objectives (e.g. loss.p_mean when the diffusion strata set EDM's noise distribution)."""
    if OBJECTIVE_KEY not in group.columns or group[OBJECTIVE_KEY].nunique() < 2:
        return set()
    own = set()
    tokens = group[config_columns(group)].map(value_token) if len(group) else group
    for column in config_columns(group):
        if column in (P_KEY, OBJECTIVE_KEY):
            continue
        per_objective = tokens[column].groupby(group[OBJECTIVE_KEY].astype(str)).nunique()
        if (per_objective == 1).all() and tokens[column].nunique() > 1:
            own.add(column)
    return own


def _pick_context(group: pd.DataFrame, own: set) -> tuple[pd.Series, str | None, tuple]:
    """The configuration (apart from dropout, objective and the objective's own keys) where the most
    objectives x rates were run, and its score (objectives with 2+ rates, rates, runs)."""
    ctx = context_key(group, exclude={P_KEY, OBJECTIVE_KEY, *own})
    best_key, best_score = None, (0, 0, 0)
    for key, cell in group[group["status"].astype(str) == COMPLETED].groupby(ctx):
        rates = cell.groupby(OBJECTIVE_KEY)[P_KEY].nunique()
        score = (int((rates >= 2).sum()), int(rates.sum()), len(cell))
        if score > best_score:
            best_key, best_score = key, score
    return ctx, best_key, best_score


def _pick_experiment_context(group: pd.DataFrame):
    """(runs, own keys, context, key) of the best context of any one experiment. The objectives' own keys are
    found per experiment: another experiment that varies them (a lognormal search varying loss.p_mean for the
    consistency objective) must not stop them travelling with the objective in the dropout experiment."""
    parts = ([rows for _, rows in group.groupby(group["experiment"].astype(str), sort=True)]
             if "experiment" in group.columns else [group])
    best, best_score = (group, set(), None, None), (0, 0, 0)
    for rows in parts:
        own = objective_keys(rows)
        ctx, key, score = _pick_context(rows, own)
        if key is not None and score > best_score:
            best, best_score = (rows, own, ctx, key), score
    return best


BEST_COLUMNS = ["dataset", "objective", "context", "own_keys", "num_runs", "num_seeds", "num_rates", "best_tested",
                "best_dropout", "lo", "hi", "bound", "at_edge", "vertex_far", "diverged_levels", "p_min", "p_max", "detectable", "budgets"]


def _best_row(est, arm: pd.DataFrame, fail: pd.DataFrame, dataset: str, objective: str, context: str,
              own, metric: str, level: float) -> dict:
    """One row of BEST_COLUMNS: the best rate of one objective (curve_minimum's `est` over its completed runs
    `arm`; `fail`: its diverged runs)."""
    counts = fail[P_KEY].value_counts()
    per_level = [f"p={p:.3g}: {int(k)}/{int(k) + int((arm[P_KEY] == p).sum())} diverged"
                 for p, k in sorted(counts.items())]
    all_p = np.r_[arm[P_KEY].to_numpy(float), fail[P_KEY].to_numpy(float)]
    return {"dataset": dataset, "objective": objective, "context": context,
            "own_keys": ", ".join(f"{k}={value_token(arm[k].iloc[0])}" for k in sorted(own)),
            "num_runs": est.num_runs, "num_seeds": int(arm["seed"].nunique()),
            "num_rates": est.num_values, "best_tested": est.best_x,
            "best_dropout": est.value, "lo": est.lo, "hi": est.hi, "bound": est.bound,
            "at_edge": est.at_edge, "vertex_far": est.vertex_far,
            "diverged_levels": "; ".join(per_level), "p_min": float(all_p.min()),
            "p_max": float(all_p.max()),
            "detectable": level_detectable(arm[P_KEY], arm[metric], arm["seed"], level),
            "budgets": ",".join(sorted(set(arm["budget"].dropna().astype(str)))) if "budget" in arm else ""}


def _evidence_rows(arm, fail, dataset, objective, metric, n_boot, level, rng) -> list[dict]:
    """Per rate of one objective: the metric, the generalisation gap and the NN-distance ratio, each a mean over
    its runs with an interval, and its diverged runs."""
    rows = []
    for p, at_p in arm.groupby(P_KEY, sort=True):
        gap = at_p["final_loss_heldout"].astype(float) - at_p["final_loss_train"].astype(float)
        ratio = at_p["final_nn_dist"].astype(float) / at_p["final_nn_dist_ref"].astype(float)
        row = {"dataset": dataset, "objective": objective, "dropout": float(p), "num_seeds": len(at_p),
               "num_diverged": int((fail[P_KEY] == p).sum())}
        for name, values in ((metric, at_p[metric]), ("gap", gap), ("nn_ratio", ratio)):
            m = mean_ci(values, n_boot=n_boot, level=level, rng=rng)
            row.update({name: m.value, f"{name}_lo": m.lo, f"{name}_hi": m.hi})
        rows.append(row)
    return rows


def analyze_dropout(trials: pd.DataFrame, metric: str = "final_fd", n_boot: int = N_BOOT, level: float = LEVEL,
                    seed: int = 0, window: int | None = None, min_values: int = 3) -> DropoutResult:
    """Best dropout per objective with intervals, their difference, and the gap/memorisation evidence.

    trials: one row per run with dataset, seed, status, network.dropout, loss.objective, `metric`,
    final_loss_train, final_loss_heldout, final_nn_dist, final_nn_dist_ref and dotted config columns.
    An objective needs runs at `min_values` or more distinct rates to get a best rate; diverged runs
    count per rate (see curve_minimum.curve_minimum). best columns: BEST_COLUMNS (best_tested: the tested rate
    with the lowest mean; best_dropout: the fitted vertex, NaN unless bound is "two-sided"; own_keys:
    the objective's own settings, see objective_keys).
    """
    require_columns(trials, ["dataset", "seed", P_KEY, OBJECTIVE_KEY, "final_loss_train", "final_loss_heldout",
                             "final_nn_dist", "final_nn_dist_ref"], "trials table (dropout)")
    rng = np.random.default_rng(seed)
    done = usable(trials, metric)
    diverged = trials[trials["status"].astype(str) == DIVERGED]
    runs = pd.concat([done, diverged], sort=False)
    runs = runs.assign(**{P_KEY: pd.to_numeric(runs[P_KEY], errors="coerce")}).dropna(subset=[P_KEY])
    best_rows, diff_rows, evidence_rows, trend_rows = [], [], [], []
    for dataset, group in runs.groupby("dataset", sort=True):
        group, own, ctx, key = _pick_experiment_context(group)
        if key is None:
            continue
        whole = group[ctx == key]
        cell = whole[whole["status"].astype(str) == COMPLETED]
        if cell.groupby(OBJECTIVE_KEY)[P_KEY].nunique().max() < min_values:
            continue
        estimates = {}
        for objective, arm in cell.groupby(OBJECTIVE_KEY, sort=True):
            objective = str(objective)
            if arm[P_KEY].nunique() < 2:
                continue
            fail = whole[(whole["status"].astype(str) == DIVERGED) & (whole[OBJECTIVE_KEY].astype(str) == objective)]
            trend_rows += run_trends(arm, dataset, objective, n_boot, level, rng)
            if arm[P_KEY].nunique() >= min_values:
                est = curve_minimum(arm[P_KEY], arm[metric], log_x=False, n_boot=n_boot, level=level,
                                    window=window, rng=rng, failed_x=fail[P_KEY], tie=typical_se(arm, metric),
                                    seeds=arm["seed"])
                estimates[objective] = est
                best_rows.append(_best_row(est, arm, fail, dataset, objective, describe_context(key), own,
                                           metric, level))
            evidence_rows += _evidence_rows(arm, fail, dataset, objective, metric, n_boot, level, rng)
        a, b = estimates.get("consistency"), estimates.get("diffusion")
        if a is not None and b is not None and a.bound == TWO_SIDED and b.bound == TWO_SIDED:
            lo, hi = percentile_ci(a.samples - b.samples, level, df=min(a.df, b.df))
            # The difference is at least as uncertain as either optimum's own bracket allows.
            lo, hi = min(lo, a.lo - b.hi), max(hi, a.hi - b.lo)
            diff_rows.append({"dataset": dataset, "difference": a.value - b.value, "lo": lo, "hi": hi,
                              "num_seeds": int(min(cell.groupby(OBJECTIVE_KEY)["seed"].nunique()))})
    best = pd.DataFrame(best_rows, columns=BEST_COLUMNS)
    difference = pd.DataFrame(diff_rows, columns=["dataset", "difference", "lo", "hi", "num_seeds"])
    evidence = pd.DataFrame(evidence_rows)
    trends = pd.DataFrame(trend_rows, columns=["dataset", "objective", "column", "slope_per_0.1", "lo", "hi",
                                               "num_runs", "seed_blocked"])
    return DropoutResult(best, difference, evidence, metric, trends)


def run_trends(arm: pd.DataFrame, dataset: str, objective: str, n_boot: int = N_BOOT, level: float = LEVEL,
               rng=None) -> list[dict]:
    """Least-squares slope of the gap and of the NN ratio against dropout, per 0.1 of dropout, over runs.

    arm: completed runs of one objective (network.dropout, final_loss_train, final_loss_heldout,
    final_nn_dist, final_nn_dist_ref, and seed). When seeds repeat across rates (a grid run with the same
    seeds at every rate), the slope is fitted within seeds (a seed fixed effect: each seed's own offset
    is removed, since a seed shifts the gap at every rate alike) and its interval is Student's t with
    N - S - 1 degrees of freedom (N runs, S seeds); seed_blocked is then true. Otherwise (a random search,
    one run per seed) the interval resamples runs. A negative gap slope: dropout closes the generalisation
    gap; a positive NN-ratio slope: dropout moves samples away from the training images.
    """
    rng = np.random.default_rng(0) if rng is None else rng
    p = arm[P_KEY].to_numpy(float)
    seeds = arm["seed"].astype(str).to_numpy() if "seed" in arm.columns else None
    columns = {
        "gap": arm["final_loss_heldout"].to_numpy(float) - arm["final_loss_train"].to_numpy(float),
        "nn_ratio": arm["final_nn_dist"].to_numpy(float) / arm["final_nn_dist_ref"].to_numpy(float),
    }
    rows = []
    for name, values in columns.items():
        ok = np.isfinite(values) & np.isfinite(p)
        x, y = p[ok], values[ok]
        if np.unique(x).size < 2:
            continue
        blocked = seed_slope(x, y, seeds[ok], level) if seeds is not None else None
        if blocked is not None:
            slope, lo, hi = (v * 0.1 for v in blocked)
        else:
            slope = np.polyfit(x, y, 1)[0] * 0.1
            idx = rng.integers(0, x.size, (n_boot, x.size))
            xs, ys = x[idx], y[idx]
            xc = xs - xs.mean(1, keepdims=True)
            with np.errstate(invalid="ignore", divide="ignore"):
                boot = (xc * (ys - ys.mean(1, keepdims=True))).sum(1) / (xc ** 2).sum(1) * 0.1
            lo, hi = percentile_ci(boot, level, df=x.size - 2)
        rows.append({"dataset": dataset, "objective": objective, "column": name, "slope_per_0.1": float(slope),
                     "lo": lo, "hi": hi, "num_runs": int(x.size), "seed_blocked": blocked is not None})
    return rows


def seed_slope(x: np.ndarray, y: np.ndarray, seeds: np.ndarray, level: float = LEVEL):
    """(slope, lo, hi) of y on x with a fixed effect per seed, or None when no seed has runs at two or more
    x values or fewer than two residual degrees of freedom remain. Within-seed centring removes each seed's
    offset; the slope is sum(xc yc) / sum(xc^2) and its standard error comes from the residuals with
    N - S - 1 degrees of freedom (S: seeds)."""
    codes, names = pd.factorize(pd.Series(seeds))
    s = len(names)
    if s == x.size:
        return None
    xc = x - (np.bincount(codes, weights=x) / np.bincount(codes))[codes]
    yc = y - (np.bincount(codes, weights=y) / np.bincount(codes))[codes]
    sxx = float((xc ** 2).sum())
    df = x.size - s - 1
    if sxx <= 0 or df < 2:
        return None
    slope = float((xc * yc).sum() / sxx)
    resid = yc - slope * xc
    se = math.sqrt(float((resid ** 2).sum()) / df / sxx)
    lo, hi = t_interval(slope, se, df, level)
    return slope, lo, hi


def evidence_trend(evidence: pd.DataFrame, column: str) -> pd.DataFrame:
    """Slope of `column` (e.g. "gap", "nn_ratio") against dropout per (dataset, objective), least squares
    on the per-rate means. evidence: rows as in DropoutResult.evidence. Public API, for scripts and notebooks
    that ask which way a dropout effect goes (the report prints the per-rate evidence itself)."""
    rows = []
    for (dataset, objective), g in evidence.groupby(["dataset", "objective"]):
        g = g.dropna(subset=[column])
        if g["dropout"].nunique() >= 2:
            slope = float(np.polyfit(g["dropout"], g[column], 1)[0])
            rows.append({"dataset": dataset, "objective": objective, "column": column, "slope": slope})
    return pd.DataFrame(rows, columns=["dataset", "objective", "column", "slope"])
