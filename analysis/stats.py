"""Shared statistics over seeds: intervals, differences and tests, number formatting.

Means over seeds get Student-t intervals (exact for normal seed-to-seed noise, which 2-5 seeds cannot
check; a bootstrap of 2-3 values is far too narrow, see docs/ANALYSIS.md). Fewer than MIN_SEEDS
finite values get no interval at all ("n < 2"), never a zero-width one. Random draws come from a
numpy Generator seeded by the caller, so a report is reproducible. Run selection and matching of
configurations are in analysis/selection.py, curve minima in analysis/curve_minimum.py.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.stats

LEVEL = 0.95
N_BOOT = 2000
# Fewest finite values that get an interval; with fewer a table shows NaN and the report "n < 2".
MIN_SEEDS = 2


def expanded_level(level: float, df: float | None) -> float:
    """Percentile level that widens a bootstrap interval for small samples.

    Hesterberg's expanded percentile interval (2015, "What teachers should know about the bootstrap"):
    use the level whose normal quantile equals Student's t quantile at `df` degrees of freedom. With
    5 seeds (df = 4) a 95% interval takes the 99.45% percentiles; for large df nothing changes.
    """
    if df is None or not np.isfinite(df) or df < 1:
        return level
    t = scipy.stats.t.ppf(0.5 + level / 2.0, df)
    return float(2.0 * scipy.stats.norm.cdf(t) - 1.0)


def percentile_ci(samples: np.ndarray, level: float = LEVEL, df: float | None = None) -> tuple[float, float]:
    """Percentile interval of bootstrap replicates; with `df`, the expanded percentile interval."""
    samples = np.asarray(samples, dtype=float)
    samples = samples[np.isfinite(samples)]
    if samples.size == 0:
        return (math.nan, math.nan)
    alpha = (1.0 - expanded_level(level, df)) / 2.0
    lo, hi = np.quantile(samples, [alpha, 1.0 - alpha])
    return (float(lo), float(hi))


def t_interval(value: float, se: float, df: float, level: float = LEVEL) -> tuple[float, float]:
    """value -/+ t_{df} se: Student's interval; NaN when df < 1 or se is not finite."""
    if not (np.isfinite(value) and np.isfinite(se) and np.isfinite(df) and df >= 1):
        return (math.nan, math.nan)
    half = float(scipy.stats.t.ppf(0.5 + level / 2.0, df)) * se
    return (value - half, value + half)


def t_pvalue(value: float, se: float, df: float) -> float:
    """Two-sided p-value of value / se under Student's t with df degrees of freedom (NaN if undefined)."""
    if not (np.isfinite(value) and np.isfinite(se) and np.isfinite(df) and df >= 1):
        return math.nan
    if se == 0:
        return 0.0 if value != 0 else 1.0
    return float(2.0 * scipy.stats.t.sf(abs(value) / se, df))


def inflate(values: np.ndarray) -> np.ndarray:
    """Deviations from the mean scaled by sqrt(n / (n - 1)).

    Resampling n values with replacement gives means whose variance is (n - 1) / n times the unbiased
    one; resampling the inflated values removes that factor (the variance-adjusted bootstrap). Used
    for curve minima, whose vertex has no closed-form interval.
    """
    values = np.asarray(values, dtype=float)
    if values.size < 2:
        return values
    centre = values.mean()
    return centre + (values - centre) * math.sqrt(values.size / (values.size - 1))


def mean_draws(values, n_draws: int, rng: np.random.Generator) -> np.ndarray:
    """(n_draws,) draws of the mean of `values`: mean + s / sqrt(n) * T with T ~ Student t(n - 1).

    Their percentiles are the t interval (they are the mean's posterior under the usual flat prior on
    mean and log sd), so ranks and P(best) computed from them agree with the intervals beside them.
    NaN with fewer than MIN_SEEDS finite values."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if values.size < MIN_SEEDS:
        return np.full(n_draws, math.nan)
    se = values.std(ddof=1) / math.sqrt(values.size)
    return values.mean() + se * rng.standard_t(values.size - 1, n_draws)


@dataclass
class Estimate:
    """A point estimate, its interval and draws behind it (bootstrap replicates or t draws)."""

    value: float
    lo: float
    hi: float
    samples: np.ndarray
    df: float = math.nan  # degrees of freedom of the residual spread
    n: int = 0  # finite values behind the estimate

    def contains(self, x: float) -> bool:
        return bool(self.lo <= x <= self.hi)


def mean_ci(values, n_boot: int = N_BOOT, level: float = LEVEL, rng=None) -> Estimate:
    """Mean of `values` with Student's t interval (NaN ends with fewer than MIN_SEEDS values); samples
    are mean_draws."""
    rng = np.random.default_rng(0) if rng is None else rng
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    n = values.size
    mean = float(values.mean()) if n else math.nan
    if n < MIN_SEEDS:
        return Estimate(mean, math.nan, math.nan, np.full(n_boot, math.nan), math.nan, n)
    lo, hi = t_interval(mean, values.std(ddof=1) / math.sqrt(n), n - 1, level)
    return Estimate(mean, lo, hi, mean_draws(values, n_boot, rng), n - 1, n)


def pairing_threshold(n: int, level: float = LEVEL) -> float:
    """The seed correlation above which a paired interval over n shared seeds is narrower than Welch's.

    With equal spreads s in both arms, the paired half-width is t(n-1) s sqrt(2 (1 - r) / n) and Welch's
    t(2n-2) s sqrt(2 / n); they are equal at r* = 1 - (t(2n-2) / t(n-1))^2. Pairing halves the degrees of
    freedom, which costs most at small n and at strict levels: r* = 0.58 at n = 3 and level 0.95, 0.78 at
    n = 3 and level 0.99; 0.16 at n = 10 and level 0.95."""
    if n < 2:
        return math.inf
    q = 0.5 + level / 2.0
    return float(1.0 - (scipy.stats.t.ppf(q, 2 * n - 2) / scipy.stats.t.ppf(q, n - 1)) ** 2)


def design_correlation(values: np.ndarray) -> float:
    """The correlation two runs of one seed have, pooled over k >= 3 arms that ran the same n seeds.

    values: (k, n) array, arm x seed. From the two-way additive model y = arm + seed + noise: the seed
    variance tau^2 = max(0, (MS_seed - MS_resid) / k) and r = tau^2 / (tau^2 + MS_resid), the intraclass
    correlation. NaN with fewer than 3 arms or 2 seeds: with two arms the estimate is the pair's own
    correlation, and choosing an interval by it costs coverage (0.933 for a 95% interval at r = 0, n = 3;
    docs/ANALYSIS.md, "Pairing")."""
    y = np.asarray(values, dtype=float)
    if y.ndim != 2 or y.shape[0] < 3 or y.shape[1] < 2 or not np.isfinite(y).all():
        return math.nan
    k, n = y.shape
    arm, seed, grand = y.mean(1, keepdims=True), y.mean(0, keepdims=True), y.mean()
    ms_resid = float(((y - arm - seed + grand) ** 2).sum() / ((k - 1) * (n - 1)))
    ms_seed = float(k * ((seed - grand) ** 2).sum() / (n - 1))
    tau2 = max(0.0, (ms_seed - ms_resid) / k)
    return float(tau2 / (tau2 + ms_resid)) if tau2 + ms_resid > 0 else math.nan


def experiment_correlation(runs: pd.DataFrame, metric: str) -> float:
    """design_correlation of completed runs of one experiment and data set: arms are configurations
    (config_id) that ran the most common set of seeds once each."""
    if runs.empty or "config_id" not in runs.columns or "seed" not in runs.columns:
        return math.nan
    seeds = runs.groupby("config_id")["seed"].agg(lambda s: tuple(sorted(map(str, s))) if s.is_unique else None)
    seeds = seeds.dropna()
    if seeds.empty:
        return math.nan
    common = seeds.value_counts().index[0]
    arms = seeds.index[seeds.map(lambda t: t == common)]
    rows = runs[runs["config_id"].isin(arms)]
    table = rows.assign(_seed=rows["seed"].astype(str)).pivot_table(index="config_id", columns="_seed", values=metric,
                                                                      aggfunc="mean")
    return design_correlation(table.to_numpy(float))


def difference_stats(a: np.ndarray, b: np.ndarray, seeds_a=None, seeds_b=None, level: float = LEVEL,
                     correlation: float | None = None) -> dict:
    """mean(a) - mean(b) with its standard error and degrees of freedom.

    The design allows pairing when both arms ran the same seeds once each (the seed then cancels what the
    two runs share: data order, initialisation). correlation: the seed correlation of the design, measured
    over the experiment's arms (experiment_correlation); pairing is used when it exceeds
    pairing_threshold(n, level), where it gives the narrower interval, else Welch's unequal-variance form.
    When it is not given or not measurable the paired interval, exact whatever the correlation, is used
    (docs/ANALYSIS.md, "Pairing"). Returns value, se, df (NaN when an arm has fewer than MIN_SEEDS values),
    paired, pairable (the design shares seeds) and correlation."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    value = float(a.mean() - b.mean()) if a.size and b.size else math.nan
    r = math.nan
    pairable = False
    if seeds_a is not None and seeds_b is not None:
        sa, sb = list(seeds_a), list(seeds_b)
        if len(set(sa)) == len(sa) == len(sb) == len(set(sb)) and set(sa) == set(sb) and len(sa) >= MIN_SEEDS:
            pairable = True
            order_b = {s: i for i, s in enumerate(sb)}
            b = b[[order_b[s] for s in sa]]
            d = a - b
            r = math.nan if correlation is None else float(correlation)
            if not np.isfinite(r) or r > pairing_threshold(d.size, level):
                return {"value": float(d.mean()), "se": float(d.std(ddof=1) / math.sqrt(d.size)),
                        "df": d.size - 1.0, "paired": True, "pairable": True, "correlation": r}
    if min(a.size, b.size) < MIN_SEEDS:
        return {"value": value, "se": math.nan, "df": math.nan, "paired": False, "pairable": pairable,
                "correlation": r}
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / (a.size - 1) + vb ** 2 / (b.size - 1)) if va + vb > 0 else a.size + b.size - 2.0
    return {"value": value, "se": se, "df": float(df), "paired": False, "pairable": pairable, "correlation": r}


def pool_cells(cells: list[dict]) -> dict:
    """Average of per-cell differences (difference_stats rows): value, se and Satterthwaite df."""
    if not cells:
        return {"value": math.nan, "se": math.nan, "df": math.nan}
    k = len(cells)
    value = float(np.mean([c["value"] for c in cells]))
    var = [c["se"] ** 2 / k ** 2 for c in cells]
    if not all(np.isfinite(var)):
        return {"value": value, "se": math.nan, "df": math.nan}
    total = sum(var)
    df = total ** 2 / sum(v ** 2 / c["df"] for v, c in zip(var, cells)) if total > 0 else sum(c["df"] for c in cells)
    return {"value": value, "se": math.sqrt(total), "df": float(df)}


def fmt(value: float, digits: int = 3) -> str:
    """Compact number for text and tables: 3 significant digits."""
    if value is None or not np.isfinite(value):
        return "n/a"
    return f"{value:.{digits}g}"


def fmt_ci(est_value: float, lo: float, hi: float, digits: int = 3, n: int | None = None) -> str:
    """"1.2 [0.9, 1.5]"; with n below MIN_SEEDS, "1.2 (n < 2: no interval)"."""
    if n is not None and n < MIN_SEEDS:
        return f"{fmt(est_value, digits)} (n < {MIN_SEEDS}: no interval)"
    return f"{fmt(est_value, digits)} [{fmt(lo, digits)}, {fmt(hi, digits)}]"


POWER = 0.8


def detectable_effect(se: float, df: float, level: float = LEVEL, power: float = POWER) -> float:
    """The smallest true difference a two-sided t test at `level` detects with probability `power`:
    (t_{1 - alpha/2, df} + t_{power, df}) se, with se and df those of the estimate at the compute spent.
    NaN when se or df is not finite."""
    if not (np.isfinite(se) and np.isfinite(df) and df >= 1):
        return math.nan
    return float((scipy.stats.t.ppf(0.5 + level / 2.0, df) + scipy.stats.t.ppf(power, df)) * se)


def holm(pvalues) -> tuple[np.ndarray, np.ndarray]:
    """Holm's step-down correction of a family of p-values (NaN ones stay out of the family).

    Returns (p_adj, alpha_share): p_adj, the adjusted p-values (running maximum of (m - j + 1) p_(j) over
    the sorted p, capped at 1), and alpha_share, the divisor m - j + 1 of each hypothesis' step, so its
    interval at level 1 - (1 - level) / alpha_share is the one its step tests. Holm controls the
    family-wise error rate at the same level as Bonferroni over the same family and rejects at least as
    often."""
    p = np.asarray(pvalues, dtype=float)
    adj = np.full(p.shape, math.nan)
    share = np.full(p.shape, math.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = ok.size
    running = 0.0
    for j, i in enumerate(ok[np.argsort(p[ok], kind="stable")]):
        share[i] = m - j
        running = max(running, min(1.0, (m - j) * p[i]))
        adj[i] = running
    return adj, share


@dataclass
class BlockedTest:
    """Seed-blocked comparison of k arms over the same s seeds (a randomised block design without replication):
    F test of "all arms equal" after removing each seed's shared effect; residual variance and df; the arms'
    means; the seeds used."""

    f: float
    p: float
    df_arms: int
    df_resid: int
    resid_var: float
    means: np.ndarray
    seeds: list


def blocked_anova(values: dict) -> BlockedTest | None:
    """Two-way additive model y = arm + seed + noise over the seeds every arm ran (each once).

    values: arm -> {seed: value}. None with fewer than two arms, fewer than MIN_SEEDS common seeds or no
    residual degrees of freedom. The seed effect, shared by every arm, cancels in every comparison, which
    the one-way test (seeds as independent replicates) leaves in the noise."""
    arms = list(values)
    if len(arms) < 2:
        return None
    common = sorted(set.intersection(*[set(values[a]) for a in arms]), key=str)
    if len(common) < MIN_SEEDS:
        return None
    y = np.array([[float(values[a][s]) for s in common] for a in arms])
    if not np.isfinite(y).all():
        return None
    k, s = y.shape
    grand = y.mean()
    arm_means, seed_means = y.mean(1), y.mean(0)
    resid = y - arm_means[:, None] - seed_means[None, :] + grand
    df_arms, df_resid = k - 1, (k - 1) * (s - 1)
    ss_arms = s * float(((arm_means - grand) ** 2).sum())
    resid_var = float((resid ** 2).sum() / df_resid)
    if resid_var <= 0:
        f = math.inf if ss_arms > 0 else math.nan
        p = 0.0 if ss_arms > 0 else math.nan
    else:
        f = ss_arms / df_arms / resid_var
        p = float(scipy.stats.f.sf(f, df_arms, df_resid))
    return BlockedTest(float(f), float(p), df_arms, df_resid, resid_var, arm_means, common)


def blocked_mean_draws(test: BlockedTest, n_draws: int, rng: np.random.Generator) -> np.ndarray:
    """(n_draws, k) draws of the arms' means under the seed-blocked model: mean + sqrt(resid_var / s) Z / sqrt(W),
    Z standard normal per arm, W ~ chi2(df_resid) / df_resid shared by the arms of a draw (the posterior of the
    arm effects under flat priors). Only differences between arms are meaningful: the seed mean is common to
    all, so ranks and P(best) computed from these draws use what pairing by seed cancels."""
    k, s = test.means.size, len(test.seeds)
    z = rng.standard_normal((n_draws, k))
    w = rng.chisquare(test.df_resid, (n_draws, 1)) / test.df_resid
    return test.means[None, :] + math.sqrt(test.resid_var / s) * z / np.sqrt(w)


def seed_blocks(seeds) -> tuple[np.ndarray, list] | None:
    """Index of each run's seed among the distinct seeds (for resampling seeds as blocks), or None when the
    seeds are unknown or every seed has one run (no blocks to keep together)."""
    if seeds is None:
        return None
    seeds = pd.Series(list(seeds)).astype(str)
    if seeds.isna().any() or seeds.nunique() == len(seeds):
        return None
    codes, uniques = pd.factorize(seeds)
    return codes, list(uniques)
