"""Open question 1: how the best Pseudo-Huber c scales with the data dimension d = C*H*W.

The paper's heuristic is c = 0.00054 * sqrt(d) (Song & Dhariwal 2023, Sec. 3.3), checked on two data
sets. Here, per data set, the best c is located on the tested grid (tested values on both sides of the
best, a value where runs diverged never the best) and refined by a local quadratic in log c (see
curve_minimum.curve_minimum); an optimum at the edge of the searched range is a one-sided bound and stays out
of the fit. Then b and a are fitted jointly from every run near each data set's optimum (one curve per data
set, its vertex shifted by b ln d; fit_joint), so two data sets already give b an interval; with
three or more, the interval is never narrower than the one from the scatter of the data sets' c*
about the line (fit_power_law, K - 2 df), which runs near each optimum cannot see (docs/ANALYSIS.md).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from analysis.load import require_columns
import scipy.stats
from ict_core.config import HUBER_C_PER_SQRT_DIM
from ict_core.datasets import dataset_family
from ict_core.records import COMPLETED, DIVERGED

from analysis.curve_minimum import TWO_SIDED, curve_minimum, default_window, level_detectable
from analysis.selection import context_key, describe_context, left_out, typical_se, usable
from analysis.stats import LEVEL, N_BOOT, mean_ci

PAPER_A = HUBER_C_PER_SQRT_DIM
PAPER_B = 0.5
C_KEY = "loss.huber_c"


def paper_c(dim) -> np.ndarray:
    """The paper's heuristic c = 0.00054 * sqrt(d), over arrays (ict_core.config.default_huber_c)."""
    return PAPER_A * np.sqrt(np.asarray(dim, dtype=float))


@dataclass
class PowerLaw:
    """c* = a * d^b fitted in log-log over the data sets whose c* is located on both sides.

    The intervals are Student's t with num_datasets - 2 degrees of freedom from the larger of the
    residual scatter about the line and the mean variance of the c* estimates; NaN with fewer than three
    data sets (two points always lie on a line, so their scatter cannot be measured)."""

    a: float
    b: float
    a_lo: float
    a_hi: float
    b_lo: float
    b_hi: float
    num_datasets: int
    b_samples: np.ndarray = field(repr=False, default_factory=lambda: np.array([]))
    residual_sd: float = math.nan  # of log c* about the line
    df: float = math.nan
    excluded: tuple = ()  # data sets with a one-sided or unlocated c*
    method: str = "scatter"  # "joint": fitted from all runs near each optimum (fit_joint); "scatter": from the c*
    num_runs: int = 0  # runs behind a joint fit

    @property
    def b_contains_paper(self) -> bool:
        return bool(self.b_lo <= PAPER_B <= self.b_hi)


@dataclass
class CScaling:
    """per_dataset: one row per data set (see estimate_c_star); curves: mean metric and divergence count at
    each c; fit: None when fewer than two distinct dimensions have a two-sided c*."""

    per_dataset: pd.DataFrame
    curves: pd.DataFrame
    fit: PowerLaw | None
    metric: str
    samples: dict = field(repr=False, default_factory=dict)
    # The power law within each image family (ict_core.datasets.dataset_family) that has c* located at two or
    # more dimensions, when the tables hold other data sets too (else `fit` is that family's law).
    family_fits: dict = field(default_factory=dict)


def select_runs(trials: pd.DataFrame, metric: str = "final_fd", statuses=(COMPLETED,)) -> pd.DataFrame:
    """Pseudo-Huber runs with c > 0 of `statuses`; completed ones need a finite metric."""
    require_columns(trials, ["dataset", "dim", "seed", "experiment", C_KEY], "trials table (c scaling)")
    runs = usable(trials, metric) if statuses == (COMPLETED,) else trials[trials["status"].astype(str).isin(statuses)]
    if "loss.metric" in runs.columns:
        runs = runs[runs["loss.metric"].astype(str) == "pseudo_huber"]
    c = pd.to_numeric(runs[C_KEY], errors="coerce")
    return runs[(c > 0) & np.isfinite(c)].assign(**{C_KEY: c})


PER_DATASET_COLUMNS = ["dataset", "dim", "context", "num_runs", "num_seeds", "num_c", "best_c", "c_star", "c_lo",
                       "c_hi", "bound", "at_edge", "vertex_far", "tied_c", "c_plateau", "diverged_levels", "c_min",
                       "c_max", "detectable",
                       "c_paper", "paper_in_ci", "left_out", "budgets"]


def _c_experiment(group: pd.DataFrame, failed: pd.DataFrame, min_values: int):
    """(context key, completed runs, diverged runs) of the configuration (apart from loss.huber_c) of one data
    set's runs with the most distinct c values (then the most runs), or None below `min_values` values. Contexts
    are taken over completed and diverged runs together, so a diverged run joins its own configuration."""
    pool = pd.concat([group, failed], sort=False)
    pool_ctx = context_key(pool, exclude={C_KEY})
    done = pool["status"].astype(str).to_numpy() == COMPLETED
    ctx = pool_ctx[done]
    best_key, best_score = None, (0, 0)
    for key, cell in group.groupby(ctx.to_numpy()):
        score = (cell[C_KEY].nunique(), len(cell))
        if score > best_score:
            best_key, best_score = key, score
    if best_key is None or best_score[0] < min_values:
        return None
    return best_key, group[ctx.to_numpy() == best_key], pool[~done & (pool_ctx.to_numpy() == best_key)]


def _paper_c_as_searched(cell: pd.DataFrame, dim: float) -> float:
    """The paper's c for `dim`; the search computed it on its own float path, so where a searched value is that
    c, that value."""
    c_ref = float(paper_c(dim))
    searched = cell[C_KEY].to_numpy(float)
    near = searched[np.abs(searched - c_ref) <= 1e-9 * c_ref]
    return float(near[0]) if near.size else c_ref


def _law(per_dataset: pd.DataFrame, samples: dict, variances: dict, near_best: dict, level: float):
    """The power law c* = a d^b across data sets (PowerLaw, or None): fitted jointly from the runs near each
    optimum (fit_joint), its interval never narrower than the data sets' scatter about the law (three or more)
    or, with two, than their c* brackets allow."""
    fit = fit_power_law(per_dataset, samples, level=level, variances=variances)
    if fit is not None:
        joint = fit_joint(near_best, level=level)
        if joint is not None:
            joint.excluded = fit.excluded
            if np.isfinite(fit.b_lo) and (fit.b_hi - fit.b_lo) > (joint.b_hi - joint.b_lo):
                # Three or more data sets can scatter about any law, which the runs near each optimum cannot
                # see: the interval is never narrower than the one from that scatter (K - 2 df).
                joint.b_lo, joint.b_hi = min(joint.b_lo, fit.b_lo), max(joint.b_hi, fit.b_hi)
                joint.a_lo, joint.a_hi = min(joint.a_lo, fit.a_lo), max(joint.a_hi, fit.a_hi)
                joint.method = "joint, widened to the data sets' scatter about the law"
                joint.df = fit.df  # the interval's width is the scatter's, at K - 2 df
            hull = bracket_hull(per_dataset) if joint.num_datasets == 2 else None
            if hull is not None and (hull[0] < joint.b_lo or hull[1] > joint.b_hi):
                # A local quadratic can pin a vertex more tightly than the grid resolves it (a flat curve, a
                # vertex far from the best run), and two data sets show no scatter to check it against: b is
                # then never narrower than their c* brackets allow.
                joint.b_lo, joint.b_hi = min(joint.b_lo, hull[0]), max(joint.b_hi, hull[1])
                joint.method += ", widened to the c* brackets"
            fit = joint
    return fit


def estimate_c_star(trials: pd.DataFrame, metric: str = "final_fd", n_boot: int = N_BOOT, level: float = LEVEL,
                    seed: int = 0, window: int | None = None, min_values: int = 3) -> CScaling:
    """Best c per data set with its interval, and the power law across data sets.

    trials: one row per run with columns dataset, dim, seed, status, loss.huber_c, `metric` and the
    other dotted config columns (and optionally `<metric>_se`, whose median makes ties, see
    stats.typical_se). Per data set, runs are split by their configuration apart from loss.huber_c; the
    configuration with the most distinct c values (at least `min_values`) is used; its diverged runs
    count per level. per_dataset columns: dataset, dim, context, num_runs, num_seeds, num_c, best_c (the
    tested c with the lowest mean), c_star (fitted vertex; NaN unless bound is "two-sided"), c_lo, c_hi,
    bound, at_edge, vertex_far (vertex in an untested gap far from best_c), tied_c, c_plateau (the largest
    tested c within the plateau's standard error of the lowest mean, NaN when no other c is), diverged_levels
    ("c=1e-05: 2/3 diverged"), c_min, c_max (searched range), detectable (the smallest difference between two
    tested c its seeds detect with 80% power: curve_minimum.level_detectable), c_paper, paper_in_ci, left_out.
    """
    rng = np.random.default_rng(seed)
    runs = select_runs(trials, metric)
    failed = select_runs(trials, metric, statuses=(DIVERGED,))
    rows, curves, samples, variances, near_best = [], [], {}, {}, {}
    for dataset, group in runs.groupby("dataset", sort=True):
        chosen = _c_experiment(group, failed[failed["dataset"] == dataset], min_values)
        if chosen is None:
            continue
        best_key, cell, fail = chosen
        dim = float(cell["dim"].iloc[0])
        est = curve_minimum(cell[C_KEY], cell[metric], log_x=True, n_boot=n_boot, level=level, window=window,
                            rng=rng, failed_x=fail[C_KEY], tie=typical_se(cell, metric), seeds=cell["seed"])
        if est.bound == TWO_SIDED:
            near_best[dataset] = _window_runs(cell, fail, metric, est.best_x, window)
            samples[dataset] = est.samples
            logs = np.log(est.samples[np.isfinite(est.samples) & (est.samples > 0)])
            variances[dataset] = float(logs.var(ddof=1)) if logs.size > 1 else 0.0
        c_ref = _paper_c_as_searched(cell, dim)
        same = (trials["dataset"] == dataset) & trials["experiment"].isin(cell["experiment"].unique())
        if "loss.metric" in trials.columns:
            same &= trials["loss.metric"].astype(str) == "pseudo_huber"
        all_c = np.unique(np.r_[cell[C_KEY].to_numpy(float), fail[C_KEY].to_numpy(float)])
        per_level = []
        for c_value in all_c:
            at_c = cell[cell[C_KEY] == c_value]
            n_fail = int((fail[C_KEY] == c_value).sum())
            if n_fail:
                per_level.append(f"c={c_value:.3g}: {n_fail}/{n_fail + len(at_c)} diverged")
            m = mean_ci(at_c[metric], n_boot=n_boot, level=level, rng=rng)
            curves.append({"dataset": dataset, "dim": dim, C_KEY: float(c_value), "num_runs": len(at_c),
                           "num_diverged": n_fail, "mean": m.value, "lo": m.lo, "hi": m.hi})
        rows.append({
            "dataset": dataset, "dim": dim, "context": describe_context(best_key),
            "num_runs": est.num_runs, "num_seeds": int(cell["seed"].nunique()), "num_c": est.num_values,
            "best_c": est.best_x, "c_star": est.value, "c_lo": est.lo, "c_hi": est.hi, "bound": est.bound,
            "at_edge": est.at_edge, "vertex_far": est.vertex_far,
            "tied_c": ", ".join(f"{t:.3g}" for t in est.tied), "c_plateau": est.plateau_x,
            "diverged_levels": "; ".join(per_level),
            "c_min": float(all_c.min()), "c_max": float(all_c.max()),
            "detectable": level_detectable(cell[C_KEY], cell[metric], cell["seed"], level),
            # Ends are exact tested values or interior vertices: a plain comparison is exact.
            "c_paper": c_ref, "paper_in_ci": bool(est.lo <= c_ref <= est.hi),
            "left_out": left_out(trials[same], metric),
            "budgets": ",".join(sorted(set(cell["budget"].dropna().astype(str)))) if "budget" in cell else "",
        })
    per_dataset = pd.DataFrame(rows, columns=PER_DATASET_COLUMNS)
    curves_df = pd.DataFrame(curves, columns=["dataset", "dim", C_KEY, "num_runs", "num_diverged", "mean", "lo", "hi"])
    fit = _law(per_dataset, samples, variances, near_best, level)
    family_fits = _family_laws(per_dataset, samples, variances, near_best, level, fit)
    return CScaling(per_dataset, curves_df, fit, metric, samples, family_fits)


def _family_laws(per_dataset: pd.DataFrame, samples: dict, variances: dict, near_best: dict, level: float,
                 pooled) -> dict:
    """{family: PowerLaw} within each image family of the tables' data sets, when they hold more than one family
    (Q1's ladder: the same photographs at several sizes and channel counts, apart from digits' plateau). A family
    whose law rests on the same data sets as the pooled one (the others' c* one-sided) adds nothing and is left out."""
    families = per_dataset["dataset"].map(dataset_family)
    laws = {}
    if families.nunique() < 2:
        return laws
    for family, sub in per_dataset.groupby(families, sort=True):
        keys = set(sub["dataset"])
        law = _law(sub.reset_index(drop=True), {k: v for k, v in samples.items() if k in keys},
                   {k: v for k, v in variances.items() if k in keys},
                   {k: v for k, v in near_best.items() if k in keys}, level)
        if law is not None and (pooled is None or law.num_datasets < pooled.num_datasets):
            laws[family] = law
    return laws


def bracket_hull(per_dataset: pd.DataFrame) -> tuple[float, float] | None:
    """The range of b that the c* intervals of the smallest- and largest-dimension two-sided data sets allow:
    slopes from (d_small, c in [c_lo, c_hi]) to (d_large, c in [c_lo, c_hi]) in log-log. None when fewer
    than two distinct dimensions have a two-sided c* with finite, positive ends."""
    ok = per_dataset[(per_dataset["bound"] == TWO_SIDED) & (per_dataset["c_lo"] > 0) &
                     np.isfinite(per_dataset["c_hi"].astype(float))]
    if ok["dim"].nunique() < 2:
        return None
    small, large = ok.loc[ok["dim"].idxmin()], ok.loc[ok["dim"].idxmax()]
    span = math.log(float(large["dim"]) / float(small["dim"]))
    lo = (math.log(large["c_lo"]) - math.log(small["c_hi"])) / span
    hi = (math.log(large["c_hi"]) - math.log(small["c_lo"])) / span
    return float(lo), float(hi)


def _window_runs(cell: pd.DataFrame, fail: pd.DataFrame, metric: str, best_c: float, window: int | None
                 ) -> pd.DataFrame:
    """The runs of `cell` at the tested c of curve_minimum's local window around best_c (levels with
    divergence left out), with dim and seed: what the joint fit of the power law reads."""
    levels = np.unique(cell[C_KEY].to_numpy(float))
    levels = levels[~np.isin(levels, fail[C_KEY].to_numpy(float))]
    width = min(max(default_window(levels.size) if window is None else window, 3), levels.size)
    best = int(np.argmin(np.abs(levels - best_c)))
    start = min(max(best - width // 2, 0), levels.size - width)
    keep = cell[C_KEY].isin(levels[start:start + width])
    return cell.loc[keep, [C_KEY, metric, "seed", "dim"]].rename(columns={metric: "y"})


def fit_joint(near_best: dict, level: float = LEVEL) -> PowerLaw | None:
    """c* = a d^b fitted jointly from every run near each data set's optimum.

    near_best: dataset -> runs (loss.huber_c, y, seed, dim) in the local window around its best c. Model:
    y = h_(dataset, seed) + k_dataset (ln c - ln a - b ln d)^2, one curve per data set whose vertex is shifted
    by b ln d, with its own curvature and a height per seed (a seed's offset, shared by the c it ran, cancels).
    Least squares over all runs; the intervals of b and ln a are Student's t from the Gauss-Newton covariance
    with N - p degrees of freedom (N runs, p parameters), so two data sets already give an interval, and the
    degrees of freedom grow with the runs instead of being K - 2 for K data sets. None with fewer than two
    distinct dimensions, no residual degrees of freedom or a fit that does not converge to convex curves."""
    import scipy.optimize

    parts = [(name, runs) for name, runs in sorted(near_best.items()) if len(runs)]
    if len({float(r["dim"].iloc[0]) for _, r in parts}) < 2:
        return None
    u, y, log_d, dset, block = [], [], [], [], []
    blocks: dict = {}
    for j, (name, runs) in enumerate(parts):
        u.append(np.log(runs[C_KEY].to_numpy(float)))
        y.append(runs["y"].to_numpy(float))
        log_d.append(np.full(len(runs), math.log(float(runs["dim"].iloc[0]))))
        dset.append(np.full(len(runs), j))
        block.append(np.array([blocks.setdefault((name, str(s)), len(blocks)) for s in runs["seed"]]))
    u, y, log_d, dset, block = map(np.concatenate, (u, y, log_d, dset, block))
    k_sets, k_blocks = len(parts), len(blocks)
    p = 2 + k_sets + k_blocks
    df = y.size - p
    if df < 1:
        return None
    # Start from the per-data-set vertices' line and each set's own quadratic.
    vertex = np.array([u[dset == j][np.argmin(y[dset == j])] for j in range(k_sets)])
    dims = np.array([log_d[dset == j][0] for j in range(k_sets)])
    b0, la0 = np.polyfit(dims, vertex, 1) if np.unique(dims).size > 1 else (0.5, vertex.mean())
    start = np.r_[la0, b0, np.ones(k_sets), [y[block == i].mean() for i in range(k_blocks)]]

    def residual(theta):
        log_a, b, k, h = theta[0], theta[1], theta[2:2 + k_sets], theta[2 + k_sets:]
        return h[block] + k[dset] * (u - log_a - b * log_d) ** 2 - y

    fit = scipy.optimize.least_squares(residual, start, method="lm")
    theta = fit.x
    if not fit.success or (theta[2:2 + k_sets] <= 0).any():
        return None
    s2 = float((fit.fun ** 2).sum() / df)
    try:
        cov = s2 * np.linalg.inv(fit.jac.T @ fit.jac)
    except np.linalg.LinAlgError:
        return None
    log_a, b = float(theta[0]), float(theta[1])
    se_la, se_b = math.sqrt(max(cov[0, 0], 0.0)), math.sqrt(max(cov[1, 1], 0.0))
    t = float(scipy.stats.t.ppf(0.5 + level / 2.0, df))
    draws = b + se_b * np.random.default_rng(0).standard_t(df, N_BOOT)
    return PowerLaw(math.exp(log_a), b, math.exp(log_a - t * se_la), math.exp(log_a + t * se_la), b - t * se_b,
                    b + t * se_b, k_sets, draws, math.sqrt(s2), float(df), (), "joint", int(y.size))


def fit_power_law(per_dataset: pd.DataFrame, samples: dict | None = None, level: float = LEVEL,
                  variances: dict | None = None) -> PowerLaw | None:
    """Least squares of log c* on log d over the rows whose bound is "two-sided".

    per_dataset: rows with dataset, dim, c_star (and bound); variances: dataset -> variance of its log c*
    estimate (bootstrap), a floor under the residual variance. The interval of b is
    b -/+ t_{K-2} s / sqrt(sum (log d - mean)^2) with s^2 = max(residual variance, mean of variances), K
    data sets (Student's interval for a regression slope; it widens with the scatter of data sets about
    the law, which resampling seeds cannot see). Returns None with fewer than two distinct dimensions.
    """
    located = per_dataset
    if "bound" in per_dataset.columns:
        located = per_dataset[per_dataset["bound"] == TWO_SIDED]
    located = located[np.isfinite(located["c_star"].astype(float))]
    excluded = tuple(sorted(set(per_dataset["dataset"]) - set(located["dataset"])))
    if located.empty or located["dim"].nunique() < 2:
        return None
    log_d = np.log(located["dim"].to_numpy(dtype=float))
    log_c = np.log(located["c_star"].to_numpy(dtype=float))
    k = log_d.size
    centred = log_d - log_d.mean()
    sxx = float((centred ** 2).sum())
    b = float((log_c * centred).sum() / sxx)
    log_a = float(log_c.mean() - b * log_d.mean())
    df = float(k - 2)
    if k < 3:
        return PowerLaw(math.exp(log_a), b, math.nan, math.nan, math.nan, math.nan, k, np.array([]), math.nan, df,
                        excluded)
    resid = log_c - (log_a + b * log_d)
    var = float((resid ** 2).sum() / df)
    floor = float(np.mean([variances.get(d, 0.0) for d in located["dataset"]])) if variances else 0.0
    s2 = max(var, floor)
    t = float(scipy.stats.t.ppf(0.5 + level / 2.0, df))
    se_b = math.sqrt(s2 / sxx)
    se_log_a = math.sqrt(s2 * (1.0 / k + log_d.mean() ** 2 / sxx))
    draws = b + se_b * np.random.default_rng(0).standard_t(df, N_BOOT)
    return PowerLaw(math.exp(log_a), b, math.exp(log_a - t * se_log_a), math.exp(log_a + t * se_log_a),
                    b - t * se_b, b + t * se_b, k, draws, math.sqrt(var), df, excluded)
