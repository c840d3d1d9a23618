"""Shared statistics: run selection, matching of configurations, intervals over seeds, curve minima.

Means over seeds get Student-t intervals (exact for normal seed-to-seed noise, which 2-5 seeds cannot
check; a bootstrap of 2-3 values is far too narrow, see docs/ANALYSIS.md). Fewer than MIN_SEEDS
finite values get no interval at all ("n < 2"), never a zero-width one. Curve minima (c*, the best
dropout) are located on the tested grid first and refined by a local quadratic whose vertex is
bootstrapped over seeds; the interval never claims more than the grid resolves. Random draws come
from a numpy Generator seeded by the caller, so a report is reproducible.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.stats

from analysis.load import require_columns
from ict_core.records import COMPLETED, DIVERGED, PRUNED

LEVEL = 0.95
N_BOOT = 2000
# Fewest finite values that get an interval; with fewer a table shows NaN and the report "n < 2".
MIN_SEEDS = 2
# Config keys that say where or how a run was executed, not what was trained: they never split
# otherwise identical configurations into separate cells.
NON_MATCHING = frozenset({
    "train.seed", "data.path", "eval.cache_dir", "eval.inception_path", "eval.grid", "train.device",
    "train.num_threads", "train.compile", "train.channels_last", "train.log_every", "train.checkpoint_every",
    "train.keep_checkpoints", "train.fault_step",
})
# data.name and data.resolution are carried by the `dataset` column, which every analysis groups by.
DATA_KEYS = frozenset({"data.name", "data.resolution"})


def se_column(metric: str) -> str:
    """The column holding the FD standard error of `metric`: final_fd -> final_fd_se, fd -> fd_se,
    fd_at_compute -> fd_se_at_compute."""
    if metric.endswith("_at_compute"):
        return se_column(metric[: -len("_at_compute")]) + "_at_compute"
    return metric + "_se"


def typical_se(rows: pd.DataFrame, metric: str) -> float:
    """Median FD standard error of the runs in `rows` (NaN when the tables do not record it).

    Differences of `metric` smaller than this are ties: one evaluation cannot resolve them (see
    docs/ANALYSIS.md, "Ties")."""
    column = se_column(metric)
    if column not in rows.columns:
        return math.nan
    values = pd.to_numeric(rows[column], errors="coerce").to_numpy(float)
    values = values[np.isfinite(values)]
    return float(np.median(values)) if values.size else math.nan


def usable(trials: pd.DataFrame, metric: str = "final_fd") -> pd.DataFrame:
    """Runs that count in estimates: status "completed" and a finite `metric`.

    Diverged, errored and pruned runs are left out here (report.py counts them); a pruned run stopped
    early, so its final metric is not comparable with those of finished runs.
    """
    require_columns(trials, ["status", metric], "trials table")
    values = pd.to_numeric(trials[metric], errors="coerce")
    keep = (trials["status"].astype(str) == COMPLETED) & np.isfinite(values)
    return trials.loc[keep].assign(**{metric: values[keep]})


def left_out(trials: pd.DataFrame, metric: str = "final_fd") -> str:
    """The runs of `trials` that usable() drops, counted by reason: "2 diverged, 1 pruned" ("" if none)."""
    values = pd.to_numeric(trials[metric], errors="coerce")
    status = trials["status"].astype(str)
    reasons = status.where(status != COMPLETED, f"completed without finite {metric}")
    counts = reasons[(status != COMPLETED) | ~np.isfinite(values)].value_counts()
    return ", ".join(f"{n} {reason}" for reason, n in counts.items())


def value_at(images_seen: np.ndarray, values: np.ndarray, budget: float) -> float:
    """The metric of one run at `budget` images, linear in log(images_seen); NaN outside its range."""
    if images_seen.size == 0 or budget < images_seen[0] - 1e-9 or budget > images_seen[-1] + 1e-9:
        return math.nan
    return float(np.interp(math.log(budget), np.log(images_seen), values))


# Evaluation columns that the equal-compute view interpolates beside the metric; each replaces the run's
# final_<column> in the view, so evidence is read at the same compute as the FD (fd_se and fd_student
# are optional: older tables lack them).
EVIDENCE_COLUMNS = ("fd_se", "fd_student", "fd_2step", "kid", "loss_train", "loss_heldout", "nn_dist", "nn_dist_ref")


def at_common_compute(trials: pd.DataFrame, evals: pd.DataFrame, metric: str = "fd",
                      statuses=(COMPLETED, PRUNED)) -> pd.DataFrame:
    """Runs compared at equal training compute, so that runs an early-stopping scheduler pruned count.

    trials, evals: as loaded (see load.py). For each experiment and dataset, the budget is the largest
    images_seen that every run of `statuses` reached; each run's `metric` there (see value_at) becomes
    the column `<metric>_at_compute`, with `budget_images` beside it. The evidence columns of evals
    (EVIDENCE_COLUMNS present) are interpolated the same way into `<column>_at_compute` and replace
    `final_<column>` (fd_se becomes fd_se_at_compute only). Returned rows are those runs with status set
    to "completed" (their own status is kept in `run_status`) so that every analysis takes them; runs
    without evaluations are dropped. Diverged runs of the same experiments follow unchanged (status
    "diverged"), so analyses still count failures per level. An unbiased view: a scheduler selects on
    the metric, so the finished runs alone over-represent good configurations.
    """
    require_columns(evals, ["trial_id", "images_seen", metric], "evals table")
    column = f"{metric}_at_compute"
    extra = [c for c in EVIDENCE_COLUMNS if c in evals.columns and c != metric]
    on = ["trial_id"] + (["experiment_dir"] if "experiment_dir" in trials and "experiment_dir" in evals else [])
    runs = trials[trials["status"].astype(str).isin(statuses)]
    ev = evals[on + ["images_seen", metric] + extra].copy()
    for c in ["images_seen", metric] + extra:
        ev[c] = pd.to_numeric(ev[c], errors="coerce")
    ev = ev[np.isfinite(ev["images_seen"]) & np.isfinite(ev[metric]) & (ev["images_seen"] > 0)]
    curves = {(key if isinstance(key, tuple) else (key,)): g for key, g in ev.sort_values("images_seen").groupby(on)}

    def at(key, col, budget) -> float:
        g = curves.get(key)
        if g is None:
            return math.nan
        ok = np.isfinite(g[col].to_numpy(float))
        return value_at(g["images_seen"].to_numpy(float)[ok], g[col].to_numpy(float)[ok], budget)

    out = []
    for _, group in runs.groupby(["experiment", "dataset"], sort=False):
        keys = [tuple(row) for row in group[on].itertuples(index=False)]
        have = [k for k in keys if k in curves]
        if not have:
            continue
        budget = min(float(curves[k]["images_seen"].iloc[-1]) for k in have)
        values = {column: [at(k, metric, budget) for k in keys]}
        for c in extra:
            values[f"{c}_at_compute"] = [at(k, c, budget) for k in keys]
            if c != "fd_se":
                values[f"final_{c}"] = values[f"{c}_at_compute"]
        out.append(group.assign(**values, budget_images=budget, run_status=group["status"], status=COMPLETED))
    if not out:
        return trials.iloc[0:0].assign(**{column: [], "budget_images": [], "run_status": []})
    view = pd.concat(out)
    view = view[np.isfinite(view[column])]
    # Diverged runs stay in the view as they are, so that each level still counts its failures.
    diverged = trials[(trials["status"].astype(str) == DIVERGED) & trials["experiment"].isin(view["experiment"])]
    return pd.concat([view, diverged.assign(run_status=diverged["status"])], sort=False)


def config_columns(df: pd.DataFrame) -> list[str]:
    """Dotted config columns that define what was trained (NON_MATCHING and data keys removed)."""
    return [c for c in df.columns if "." in c and c not in NON_MATCHING and c not in DATA_KEYS]


def value_token(value) -> str:
    """A config value as text for matching: NaN/None as "-", floats to 6 significant digits."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.6g}"
    return str(value)


def context_key(df: pd.DataFrame, exclude) -> pd.Series:
    """One string per row naming its experiment and its configuration apart from `exclude`.

    Rows with equal keys come from the same experiment and were trained the same way except for the
    excluded keys (and their seed), so they may be compared. Runs of different experiments are never
    pooled: they may differ in code version or hardware although their configs agree. Only columns
    that vary within an experiment are named, which keeps keys short; floats are rounded to 6
    significant digits.
    """
    if "experiment" not in df.columns:
        return _config_key(df, exclude)
    parts = [("experiment=" + str(name) + "|") + _config_key(rows, exclude)
             for name, rows in df.groupby(df["experiment"].astype(str), sort=False)]
    return pd.concat(parts).reindex(df.index) if parts else pd.Series("", index=df.index, dtype=str)


def _config_key(df: pd.DataFrame, exclude) -> pd.Series:
    cols = varying_columns(df, exclude)
    if not cols:
        return pd.Series("", index=df.index, dtype=str)
    return df[cols].apply(lambda row: "|".join(f"{c}={value_token(v)}" for c, v in row.items()), axis=1)


def varying_columns(df: pd.DataFrame, exclude=()) -> list[str]:
    """Config columns that take more than one value in `df` (NaN counts as a value)."""
    out = []
    for c in config_columns(df):
        if c in set(exclude):
            continue
        if df[c].map(value_token).nunique() > 1:
            out.append(c)
    return out


def describe_context(key: str) -> str:
    """Readable text of a context key: "experiment X: a=1, b=2"."""
    items = [i for i in key.split("|") if i]
    experiment = [i.split("=", 1)[1] for i in items if i.startswith("experiment=")]
    config = [i for i in items if not i.startswith("experiment=")]
    text = ", ".join(config) if config else "all runs"
    return f"experiment {experiment[0]}: {text}" if experiment else text


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


def _local_quadratic_min(u: np.ndarray, m: np.ndarray, w: np.ndarray, window: int) -> float:
    """Vertex of a weighted quadratic fitted to `window` points around the smallest mean.

    u: sorted abscissae (already transformed, e.g. log c), m: mean metric at each u, w: run counts.
    Falls back to the best point when the fit is not convex; the vertex is kept inside the fitted
    window (a quadratic says nothing beyond its points).
    """
    ok = np.isfinite(m)
    u, m, w = u[ok], m[ok], w[ok]
    if u.size == 0:
        return math.nan
    best = int(np.argmin(m))
    if u.size < 3:
        return float(u[best])
    width = min(max(window, 3), u.size)
    start = min(max(best - width // 2, 0), u.size - width)
    uu, mm, ww = u[start:start + width], m[start:start + width], w[start:start + width]
    centre = uu.mean()
    a, b, _ = np.polyfit(uu - centre, mm, 2, w=np.sqrt(ww))
    if not np.isfinite(a) or a <= 0:
        return float(u[best])
    return float(np.clip(-b / (2 * a) + centre, uu[0], uu[-1]))


def default_window(num_values: int) -> int:
    """Points in the local fit: 3 on a coarse grid, about a third of the points on a dense one."""
    return 3 if num_values <= 9 else int(math.ceil(num_values / 3))


TWO_SIDED, BELOW, ABOVE, UNLOCATED = "two-sided", "below range", "above range", "not located"


@dataclass
class CurveMinimum(Estimate):
    """Where a curve is lowest. value is the fitted vertex (NaN unless bound is TWO_SIDED); lo, hi bound
    the optimum: for BELOW only hi is informative (lo is 0 on a log axis, -inf otherwise), for ABOVE
    only lo. Interval ends that fall on tested values are those exact values."""

    at_edge: bool = False  # the optimum may lie beyond the smallest or largest value searched
    num_values: int = 0  # distinct x values, diverged ones included
    num_runs: int = 0
    best_x: float = math.nan  # the tested value with the lowest mean (among levels without divergence)
    bound: str = TWO_SIDED
    vertex_far: bool = False  # the vertex sits in an untested gap far from the best tested value
    tied: tuple = ()  # tested values whose mean is within the FD's standard error of the best
    diverged_best: bool = False  # a level with divergence had the lowest survivor mean (it was not taken)
    plateau_x: float = math.nan  # largest tested value within the plateau's standard error of the minimum
    seed_blocked: bool = False  # the bootstrap resampled seeds as blocks


def curve_minimum(x, y, log_x: bool = True, n_boot: int = N_BOOT, level: float = LEVEL, window: int | None = None,
                  rng=None, failed_x=(), tie: float = math.nan, seeds=None) -> CurveMinimum:
    """Where the mean of `y` is smallest as a function of `x`, with an interval.

    x, y: one entry per completed run (e.g. x = huber_c, y = final_fd of one seed); failed_x: the x of
    runs that diverged. A level (distinct x) with any divergence cannot be the best by its survivors:
    it is a tested point with a bad outcome. The best tested level must have tested levels on both
    sides (and so must every level tied with it within `tie`, the FD's standard error); otherwise the
    answer is a one-sided bound (BELOW: the optimum is below the next tested value, ABOVE likewise),
    with no point estimate. A two-sided minimum is refined by the vertex of a quadratic in log x (or x)
    fitted locally around the best level; its interval is the hull of (a) the bootstrap interval of
    the vertex, resampling runs within each level (or all runs together when most levels have a
    single run, as with a random search), and (b) the tested neighbours of the best (and tied) levels,
    which bracket the optimum of any curve with one minimum whatever its shape. seeds: the seed of each
    run of x; when seeds repeat across levels the bootstrap resamples seeds as blocks (all runs of a drawn
    seed together), so an effect a seed has on every level moves the whole curve, not its minimum.
    plateau_x: where the best tested level has tied neighbours (a plateau), the largest tested value whose
    mean is within the plateau's standard error of the lowest mean (docs/ANALYSIS.md, "Plateaus").
    """
    rng = np.random.default_rng(0) if rng is None else rng
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y) & ((x > 0) if log_x else True)
    x, y = x[keep], y[keep]
    seed_of = None if seeds is None else np.asarray(list(seeds), dtype=object)[keep]
    failed = np.asarray(failed_x, dtype=float)
    failed = failed[np.isfinite(failed) & ((failed > 0) if log_x else True)]
    if y.size == 0:
        return CurveMinimum(math.nan, math.nan, math.nan, np.array([]), math.nan, 0, bound=UNLOCATED)
    curve = _Levels(x, failed, log_x, window)
    levels, inverse = curve.levels, curve.inverse
    means, n = curve.means(inverse, y)
    candidates = np.flatnonzero(~curve.bad & np.isfinite(means))
    raw_best = int(np.nanargmin(means))
    best = int(candidates[np.argmin(means[candidates])]) if candidates.size else -1
    base = dict(num_values=int(levels.size), num_runs=int(y.size), diverged_best=bool(curve.bad[raw_best]))
    if best < 0:
        return CurveMinimum(math.nan, math.nan, math.nan, np.array([]), math.nan, int(y.size), **base, bound=UNLOCATED)
    margin = tie if np.isfinite(tie) and tie > 0 else 0.0
    tied_idx = candidates[means[candidates] <= means[best] + margin]
    first, last = int(tied_idx.min()), int(tied_idx.max())
    best_x = float(levels[best])
    tied = tuple(float(levels[j]) for j in tied_idx if j != best)
    base["plateau_x"] = _plateau(levels, inverse, y, means, candidates, best, margin)
    lo_edge, hi_edge = first == 0, last == levels.size - 1
    if lo_edge or hi_edge:
        bound = UNLOCATED if lo_edge and hi_edge else (BELOW if lo_edge else ABOVE)
        lo = (0.0 if log_x else -math.inf) if lo_edge else float(levels[first - 1])
        hi = math.inf if hi_edge else float(levels[last + 1])
        return CurveMinimum(math.nan, lo, hi, np.array([]), math.nan, int(y.size), at_edge=True, best_x=best_x,
                            bound=bound, tied=tied, **base)
    u_star = curve.vertex(means, n)
    samples, df, seed_blocked = _bootstrap_vertex(curve, y, seed_of, n_boot, rng)
    b_lo, b_hi = percentile_ci(samples, level, df=df)
    lo = min(curve.back(b_lo), float(levels[first - 1]))
    hi = max(curve.back(b_hi), float(levels[last + 1]))
    # Far: the vertex lies nearer to the neighbouring tested value on its side than to the best run, or
    # more than a factor 2 from it (log axis) / a tenth of the searched range (linear axis).
    u = curve.u
    side = best + (1 if u_star > u[best] else -1)
    far = math.log(2.0) if log_x else 0.1 * (u[-1] - u[0])
    distance = abs(u_star - u[best])
    vertex_far = bool(distance > 0.5 * abs(u[side] - u[best]) or distance > far)
    return CurveMinimum(curve.back(u_star), lo, hi, np.array([curve.back(v) for v in samples]), df, int(y.size),
                        False, best_x=best_x, bound=TWO_SIDED, vertex_far=vertex_far, tied=tied,
                        seed_blocked=seed_blocked, **base)


class _Levels:
    """The tested levels of a curve (distinct x of the runs and of the diverged runs) on the fitting axis u
    (log x or x): which level each run is at, the mean per level, and the local quadratic's vertex."""

    def __init__(self, x: np.ndarray, failed: np.ndarray, log_x: bool, window: int | None):
        self.levels = np.unique(np.r_[x, failed])  # exact tested values
        self.log_x = log_x
        self.u = np.log(self.levels) if log_x else self.levels
        self.inverse = np.searchsorted(self.levels, x)
        self.counts = np.bincount(self.inverse, minlength=self.levels.size).astype(float)
        self.bad = np.isin(self.levels, failed)
        self.window = default_window(self.levels.size) if window is None else window

    def back(self, v: float) -> float:
        """Exact tested value where the vertex sits on one (clipped to a window end), else exp/identity."""
        j = int(np.argmin(np.abs(self.u - v)))
        if abs(self.u[j] - v) <= 1e-9 * max(1.0, abs(v)):
            return float(self.levels[j])
        return float(np.exp(v) if self.log_x else v)

    def means(self, index_of_run: np.ndarray, y_runs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(mean, number of runs) per level of the runs at levels `index_of_run` with values `y_runs`."""
        sums = np.bincount(index_of_run, weights=y_runs, minlength=self.levels.size)
        n = np.bincount(index_of_run, minlength=self.levels.size).astype(float)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(n > 0, sums / np.maximum(n, 1), np.nan), n

    def vertex(self, means: np.ndarray, n: np.ndarray) -> float:
        ok = ~self.bad & np.isfinite(means)
        return _local_quadratic_min(self.u[ok], means[ok], n[ok], self.window)


def _bootstrap_vertex(curve: _Levels, y: np.ndarray, seed_of, n_boot: int, rng) -> tuple[np.ndarray, float, bool]:
    """(bootstrap vertices, residual degrees of freedom, whether seeds were resampled as blocks): runs resampled
    within each level (inflated to unbias the spread) when most levels have two or more runs, all runs together
    otherwise; seeds as blocks when they repeat across levels."""
    inverse, counts = curve.inverse, curve.counts
    stratified = np.median(counts[counts > 0]) >= 2
    groups = [np.flatnonzero(inverse == j) for j in range(curve.levels.size) if counts[j] > 0]
    y_boot = y.copy()
    if stratified:
        for g in groups:
            y_boot[g] = inflate(y[g])
    blocks = seed_blocks(seed_of) if stratified else None
    if blocks is not None:
        codes, names = blocks
        by_seed = [np.flatnonzero(codes == k) for k in range(len(names))]
    samples = np.empty(n_boot)
    for r in range(n_boot):
        if blocks is not None:
            idx = np.concatenate([by_seed[k] for k in rng.integers(0, len(by_seed), len(by_seed))])
        elif stratified:
            idx = np.concatenate([g[rng.integers(0, g.size, g.size)] for g in groups])
        else:
            idx = rng.integers(0, y.size, y.size)
        samples[r] = curve.vertex(*curve.means(inverse[idx], y_boot[idx]))
    # Residual degrees of freedom behind the local fit: the spread within each level of the window when
    # seeds repeat, else the spread around the quadratic.
    width = min(max(curve.window, 3), curve.levels.size)
    df = float(width * (np.median(counts[counts > 0]) - 1)) if stratified else float(y.size - 3)
    return samples, df, blocks is not None


def _plateau(levels, inverse, y, means, candidates, best: int, margin: float) -> float:
    """The largest tested level whose mean lies within the plateau's standard error of the lowest mean, when
    at least one other level does (NaN otherwise). The standard error is that of a difference between two
    levels' means, sqrt(2 s^2 / n) with s^2 the within-level variance pooled over levels and n the runs at
    the best level, or `margin` (the FD's own evaluation error) when larger: levels closer than that cannot
    be told apart at the seeds spent, so the curve is flat between them and a vertex is not defined; the
    largest such level is the operational optimum (the most regularisation at no cost in FD)."""
    n = np.bincount(inverse, minlength=levels.size)
    resid = y - means[inverse]
    df = int((n[n > 0] - 1).sum())
    se = math.sqrt(2.0 * float((resid ** 2).sum()) / df / max(n[best], 1)) if df >= 1 else 0.0
    width = max(se, margin)
    within = candidates[means[candidates] <= means[best] + width]
    if width <= 0 or within.size < 2:
        return math.nan
    return float(levels[int(within.max())])


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
