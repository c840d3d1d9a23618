"""Curve minima (c*, the best dropout): located on the tested grid first and refined by a local quadratic whose
vertex is bootstrapped over seeds; the interval never claims more than the grid resolves. Random draws come from
a numpy Generator seeded by the caller, so a report is reproducible."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis.selection import value_token
from analysis.stats import (LEVEL, MIN_SEEDS, N_BOOT, Estimate, detectable_effect, inflate, percentile_ci,
                           seed_blocks)

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


def level_detectable(x, y, seeds, level: float = LEVEL) -> float:
    """The smallest difference in mean y between two tested values of x that the runs detect with 80% power, at
    `level` (two-sided): from the additive model y = value + seed + noise fitted by least squares to every run at
    a value with at least MIN_SEEDS seeds (a seed's effect, shared by every value, cancels; with every value at the
    same seeds this is analysis.stats.blocked_anova), for two values at the median number of seeds per value. What
    an optimum left open could have told apart: a difference between tested values smaller than this (the best
    against the edge value it ties with, a dip between neighbours) goes unseen. NaN when fewer than two values
    have MIN_SEEDS seeds or the model leaves no residual degrees of freedom (a random search, one run per value)."""
    frame = pd.DataFrame({"x": np.asarray(x, float), "y": np.asarray(y, float), "seed": [value_token(v) for v in seeds]})
    frame = frame[np.isfinite(frame["x"]) & np.isfinite(frame["y"])]
    per_value = frame.groupby("x")["seed"].nunique()
    frame = frame[frame["x"].isin(per_value.index[per_value >= MIN_SEEDS])]
    if frame["x"].nunique() < 2:
        return math.nan
    values, seeds_ = pd.factorize(frame["x"])[0], pd.factorize(frame["seed"])[0]
    design = np.zeros((len(frame), values.max() + 1 + seeds_.max()))
    design[np.arange(len(frame)), values] = 1.0
    rest = seeds_ > 0  # the first seed is the baseline of the seed effects
    design[np.flatnonzero(rest), values.max() + seeds_[rest]] = 1.0
    target = frame["y"].to_numpy(float)
    coef, _, rank, _ = np.linalg.lstsq(design, target, rcond=None)
    df = len(frame) - int(rank)
    if df < 1:
        return math.nan
    resid_var = float(((target - design @ coef) ** 2).sum()) / df
    per = float(np.median(frame.groupby("x")["seed"].nunique()))
    return detectable_effect(math.sqrt(2.0 * resid_var / per), df, level)

