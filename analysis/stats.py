"""Shared statistics: run selection, matching of configurations, bootstrap intervals, curve minima.

Every interval here is a percentile bootstrap over runs (seeds), resampled within each cell
(configuration) so that cells keep their size. Random draws come from a numpy Generator seeded by
the caller, so a report is reproducible.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.stats

from analysis.load import require_columns

LEVEL = 0.95
N_BOOT = 2000
# Config keys that say where or how a run was executed, not what was trained: they never split
# otherwise identical configurations into separate cells.
NON_MATCHING = frozenset({
    "train.seed", "data.path", "eval.cache_dir", "eval.inception_path", "eval.grid", "train.device",
    "train.num_threads", "train.compile", "train.channels_last", "train.log_every", "train.checkpoint_every",
    "train.keep_checkpoints", "train.fault_step",
})
# data.name and data.resolution are carried by the `dataset` column, which every analysis groups by.
DATA_KEYS = frozenset({"data.name", "data.resolution"})


def usable(trials: pd.DataFrame, metric: str = "final_fd") -> pd.DataFrame:
    """Runs that count in estimates: status "completed" and a finite `metric`.

    Diverged, errored and pruned runs are left out here (report.py counts them); a pruned run stopped
    early, so its final metric is not comparable with those of finished runs.
    """
    require_columns(trials, ["status", metric], "trials table")
    values = pd.to_numeric(trials[metric], errors="coerce")
    keep = (trials["status"].astype(str) == "completed") & np.isfinite(values)
    return trials.loc[keep].assign(**{metric: values[keep]})


def left_out(trials: pd.DataFrame, metric: str = "final_fd") -> str:
    """The runs of `trials` that usable() drops, counted by reason: "2 diverged, 1 pruned" ("" if none)."""
    values = pd.to_numeric(trials[metric], errors="coerce")
    status = trials["status"].astype(str)
    reasons = status.where(status != "completed", f"completed without finite {metric}")
    counts = reasons[(status != "completed") | ~np.isfinite(values)].value_counts()
    return ", ".join(f"{n} {reason}" for reason, n in counts.items())


def value_at(images_seen: np.ndarray, values: np.ndarray, budget: float) -> float:
    """The metric of one run at `budget` images, linear in log(images_seen); NaN outside its range."""
    if images_seen.size == 0 or budget < images_seen[0] - 1e-9 or budget > images_seen[-1] + 1e-9:
        return math.nan
    return float(np.interp(math.log(budget), np.log(images_seen), values))


def at_common_compute(trials: pd.DataFrame, evals: pd.DataFrame, metric: str = "fd",
                      statuses=("completed", "pruned")) -> pd.DataFrame:
    """Runs compared at equal training compute, so that runs an early-stopping scheduler pruned count.

    trials, evals: as loaded (see load.py). For each experiment and dataset, the budget is the largest
    images_seen that every run of `statuses` reached; each run's `metric` there (see value_at) becomes
    the column `<metric>_at_compute`, with `budget_images` beside it. Returned rows are those runs with
    status set to "completed" (their own status is kept in `run_status`) so that every analysis takes
    them; runs without evaluations are dropped. An unbiased view: a scheduler selects on the metric,
    so the finished runs alone over-represent good configurations.
    """
    require_columns(evals, ["trial_id", "images_seen", metric], "evals table")
    column = f"{metric}_at_compute"
    on = ["trial_id"] + (["experiment_dir"] if "experiment_dir" in trials and "experiment_dir" in evals else [])
    runs = trials[trials["status"].astype(str).isin(statuses)]
    ev = evals[on + ["images_seen", metric]].copy()
    ev["images_seen"] = pd.to_numeric(ev["images_seen"], errors="coerce")
    ev[metric] = pd.to_numeric(ev[metric], errors="coerce")
    ev = ev[np.isfinite(ev["images_seen"]) & np.isfinite(ev[metric]) & (ev["images_seen"] > 0)]
    curves = {(key if isinstance(key, tuple) else (key,)): (g["images_seen"].to_numpy(float), g[metric].to_numpy(float))
              for key, g in ev.sort_values("images_seen").groupby(on)}
    out = []
    for _, group in runs.groupby(["experiment", "dataset"], sort=False):
        keys = [tuple(row) for row in group[on].itertuples(index=False)]
        have = [k for k in keys if k in curves]
        if not have:
            continue
        budget = min(curves[k][0][-1] for k in have)
        values = [value_at(*curves[k], budget) if k in curves else math.nan for k in keys]
        out.append(group.assign(**{column: values, "budget_images": budget, "run_status": group["status"],
                                   "status": "completed"}))
    if not out:
        return trials.iloc[0:0].assign(**{column: [], "budget_images": [], "run_status": []})
    view = pd.concat(out)
    return view[np.isfinite(view[column])]


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


def inflate(values: np.ndarray) -> np.ndarray:
    """Deviations from the mean scaled by sqrt(n / (n - 1)).

    Resampling n values with replacement gives means whose variance is (n - 1) / n times the unbiased
    one; with 3-5 seeds per cell that alone makes 95% intervals cover about 90%. Resampling the
    inflated values removes that factor (the variance-adjusted bootstrap).
    """
    values = np.asarray(values, dtype=float)
    if values.size < 2:
        return values
    centre = values.mean()
    return centre + (values - centre) * math.sqrt(values.size / (values.size - 1))


def resample_means(values, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot,) means of `values` resampled with replacement (variance-adjusted, see inflate); NaN
    when `values` is empty."""
    values = inflate(np.asarray(values, dtype=float))
    if values.size == 0:
        return np.full(n_boot, math.nan)
    idx = rng.integers(0, values.size, size=(n_boot, values.size))
    return values[idx].mean(axis=1)


@dataclass
class Estimate:
    """A point estimate, its bootstrap interval and the bootstrap replicates behind it."""

    value: float
    lo: float
    hi: float
    samples: np.ndarray
    df: float = math.nan  # degrees of freedom of the residual spread, for expanded intervals

    def contains(self, x: float) -> bool:
        return bool(self.lo <= x <= self.hi)


def mean_ci(values, n_boot: int = N_BOOT, level: float = LEVEL, rng=None) -> Estimate:
    """Mean of `values` with a percentile bootstrap interval."""
    rng = np.random.default_rng(0) if rng is None else rng
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    samples = resample_means(values, n_boot, rng)
    lo, hi = percentile_ci(samples, level, df=values.size - 1) if values.size > 1 else (math.nan, math.nan)
    return Estimate(float(values.mean()) if values.size else math.nan, lo, hi, samples, values.size - 1)


def _local_quadratic_min(u: np.ndarray, m: np.ndarray, w: np.ndarray, window: int) -> tuple[float, bool]:
    """Vertex of a weighted quadratic fitted to `window` points around the smallest mean.

    u: sorted abscissae (already transformed, e.g. log c), m: mean metric at each u, w: run counts.
    Returns (u_star, at_edge). Falls back to the best point when the fit is not convex; the vertex is
    kept inside the fitted window, so an optimum beyond the searched range is reported at its edge.
    """
    ok = np.isfinite(m)
    u, m, w = u[ok], m[ok], w[ok]
    if u.size == 0:
        return math.nan, False
    best = int(np.argmin(m))
    at_edge = best == 0 or best == u.size - 1
    if u.size < 3:
        return float(u[best]), at_edge
    width = min(max(window, 3), u.size)
    start = min(max(best - width // 2, 0), u.size - width)
    uu, mm, ww = u[start:start + width], m[start:start + width], w[start:start + width]
    centre = uu.mean()
    a, b, _ = np.polyfit(uu - centre, mm, 2, w=np.sqrt(ww))
    if not np.isfinite(a) or a <= 0:
        return float(u[best]), at_edge
    vertex = float(np.clip(-b / (2 * a) + centre, uu[0], uu[-1]))
    return vertex, at_edge


def default_window(num_values: int) -> int:
    """Points in the local fit: 3 on a coarse grid, about a third of the points on a dense one."""
    return 3 if num_values <= 9 else int(math.ceil(num_values / 3))


@dataclass
class CurveMinimum(Estimate):
    at_edge: bool = False  # the best grid point is the smallest or largest value searched
    num_values: int = 0  # distinct x values
    num_runs: int = 0


def curve_minimum(x, y, log_x: bool = True, n_boot: int = N_BOOT, level: float = LEVEL, window: int | None = None,
                  rng=None) -> CurveMinimum:
    """Where the mean of `y` is smallest as a function of `x`, with a bootstrap interval.

    x, y: one entry per run (e.g. x = huber_c, y = final_fd of one seed). The mean of y is taken at
    each distinct x; a quadratic in log x (or x) is fitted locally around the smallest mean and its
    vertex is the estimate. Each bootstrap replicate resamples runs within each x value (or all runs
    together when most x values have a single run, as with a random search) and repeats the fit.
    """
    rng = np.random.default_rng(0) if rng is None else rng
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y) & ((x > 0) if log_x else True)
    x, y = x[keep], y[keep]
    u_all = np.log(x) if log_x else x
    levels, inverse = np.unique(np.round(u_all, 9), return_inverse=True)
    counts = np.bincount(inverse, minlength=levels.size).astype(float)
    window = default_window(levels.size) if window is None else window
    back = np.exp if log_x else (lambda v: v)

    def fit(index_of_run: np.ndarray, y_runs: np.ndarray) -> tuple[float, bool]:
        sums = np.bincount(index_of_run, weights=y_runs, minlength=levels.size)
        n = np.bincount(index_of_run, minlength=levels.size).astype(float)
        with np.errstate(invalid="ignore", divide="ignore"):
            means = np.where(n > 0, sums / np.maximum(n, 1), np.nan)
        return _local_quadratic_min(levels, means, n, window)

    if y.size == 0:
        return CurveMinimum(math.nan, math.nan, math.nan, np.array([]), math.nan, False, 0, 0)
    u_star, at_edge = fit(inverse, y)
    samples = np.empty(n_boot)
    stratified = np.median(counts) >= 2
    groups = [np.flatnonzero(inverse == j) for j in range(levels.size)]
    if stratified:
        y = y.copy()
        for g in groups:
            y[g] = inflate(y[g])
    for r in range(n_boot):
        if stratified:
            idx = np.concatenate([g[rng.integers(0, g.size, g.size)] for g in groups])
        else:
            idx = rng.integers(0, y.size, y.size)
        samples[r] = fit(inverse[idx], y[idx])[0]
    # Residual degrees of freedom behind the local fit: the spread within each x value of the window when
    # seeds repeat, else the spread around the quadratic.
    width = min(max(window, 3), levels.size)
    df = float(width * (np.median(counts) - 1)) if stratified else float(y.size - 3)
    lo, hi = percentile_ci(samples, level, df=df)
    return CurveMinimum(float(back(u_star)), float(back(lo)), float(back(hi)), back(samples), df, at_edge,
                        int(levels.size), int(y.size))


def fmt(value: float, digits: int = 3) -> str:
    """Compact number for text and tables: 3 significant digits."""
    if value is None or not np.isfinite(value):
        return "n/a"
    return f"{value:.{digits}g}"


def fmt_ci(est_value: float, lo: float, hi: float, digits: int = 3) -> str:
    return f"{fmt(est_value, digits)} [{fmt(lo, digits)}, {fmt(hi, digits)}]"
