"""Open question 1: how the best Pseudo-Huber c scales with the data dimension d = C*H*W.

The paper's heuristic is c = 0.00054 * sqrt(d) (Song & Dhariwal 2023, Sec. 3.3), checked on two data
sets. Here, per data set, the best c is where FD is smallest against log c (a local quadratic in
log c around the best grid point, refitted on each bootstrap resample of seeds); then
log c* = log a + b log d is fitted across data sets on each replicate, giving an interval for b.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from analysis.load import require_columns
from analysis.stats import (LEVEL, N_BOOT, context_key, curve_minimum, describe_context, left_out, mean_ci,
                            percentile_ci, usable)

PAPER_A = 0.00054
PAPER_B = 0.5
C_KEY = "loss.huber_c"


def paper_c(dim) -> np.ndarray:
    """The paper's heuristic c = 0.00054 * sqrt(d)."""
    return PAPER_A * np.sqrt(np.asarray(dim, dtype=float))


@dataclass
class PowerLaw:
    """c* = a * d^b fitted in log-log; intervals from bootstrap replicates of every data set's c*."""

    a: float
    b: float
    a_lo: float
    a_hi: float
    b_lo: float
    b_hi: float
    num_datasets: int
    b_samples: np.ndarray = field(repr=False)

    @property
    def b_contains_paper(self) -> bool:
        return bool(self.b_lo <= PAPER_B <= self.b_hi)


@dataclass
class CScaling:
    """per_dataset: one row per data set (see estimate_c_star); curves: mean metric at each c;
    fit: None when fewer than two distinct dimensions have an estimate."""

    per_dataset: pd.DataFrame
    curves: pd.DataFrame
    fit: PowerLaw | None
    metric: str
    samples: dict = field(repr=False, default_factory=dict)


def select_runs(trials: pd.DataFrame, metric: str = "final_fd") -> pd.DataFrame:
    """Completed Pseudo-Huber runs with c > 0 and a finite metric."""
    require_columns(trials, ["dataset", "dim", "seed", "experiment", C_KEY], "trials table (c scaling)")
    runs = usable(trials, metric)
    if "loss.metric" in runs.columns:
        runs = runs[runs["loss.metric"].astype(str) == "pseudo_huber"]
    c = pd.to_numeric(runs[C_KEY], errors="coerce")
    return runs[(c > 0) & np.isfinite(c)].assign(**{C_KEY: c})


def estimate_c_star(trials: pd.DataFrame, metric: str = "final_fd", n_boot: int = N_BOOT, level: float = LEVEL,
                    seed: int = 0, window: int | None = None, min_values: int = 3) -> CScaling:
    """Best c per data set with a bootstrap interval, and the power law across data sets.

    trials: one row per run with columns dataset, dim, seed, status, loss.huber_c, `metric` and the
    other dotted config columns. Per data set, runs are split by their configuration apart from
    loss.huber_c; the configuration with the most distinct c values (at least `min_values`) is used.
    per_dataset columns: dataset, dim, context, num_runs, num_seeds, num_c, c_star, c_lo, c_hi, at_edge,
    c_paper, paper_in_ci, left_out (Pseudo-Huber runs of that data set and experiment that were not
    usable, e.g. "2 diverged").
    """
    rng = np.random.default_rng(seed)
    runs = select_runs(trials, metric)
    rows, curves, samples, dfs = [], [], {}, {}
    for dataset, group in runs.groupby("dataset", sort=True):
        ctx = context_key(group, exclude={C_KEY})
        best_key, best_score = None, (0, 0)
        for key, cell in group.groupby(ctx):
            score = (cell[C_KEY].nunique(), len(cell))
            if score > best_score:
                best_key, best_score = key, score
        if best_key is None or best_score[0] < min_values:
            continue
        cell = group[ctx == best_key]
        dim = float(cell["dim"].iloc[0])
        est = curve_minimum(cell[C_KEY], cell[metric], log_x=True, n_boot=n_boot, level=level, window=window,
                            rng=rng)
        samples[dataset] = est.samples
        dfs[dataset] = est.df
        c_ref = float(paper_c(dim))
        same = (trials["dataset"] == dataset) & trials["experiment"].isin(cell["experiment"].unique())
        if "loss.metric" in trials.columns:
            same &= trials["loss.metric"].astype(str) == "pseudo_huber"
        rows.append({
            "dataset": dataset, "dim": dim, "context": describe_context(best_key),
            "num_runs": est.num_runs, "num_seeds": int(cell["seed"].nunique()), "num_c": est.num_values,
            "c_star": est.value, "c_lo": est.lo, "c_hi": est.hi, "at_edge": est.at_edge,
            "c_paper": c_ref, "paper_in_ci": bool(est.lo <= c_ref <= est.hi),
            "left_out": left_out(trials[same], metric),
        })
        for c_value, at_c in cell.groupby(C_KEY):
            m = mean_ci(at_c[metric], n_boot=n_boot, level=level, rng=rng)
            curves.append({"dataset": dataset, "dim": dim, C_KEY: float(c_value), "num_runs": len(at_c),
                           "mean": m.value, "lo": m.lo, "hi": m.hi})
    per_dataset = pd.DataFrame(rows, columns=[
        "dataset", "dim", "context", "num_runs", "num_seeds", "num_c", "c_star", "c_lo", "c_hi", "at_edge",
        "c_paper", "paper_in_ci", "left_out"])
    curves_df = pd.DataFrame(curves, columns=["dataset", "dim", C_KEY, "num_runs", "mean", "lo", "hi"])
    fit = fit_power_law(per_dataset, samples, level=level, dfs=dfs)
    return CScaling(per_dataset, curves_df, fit, metric, samples)


def fit_power_law(per_dataset: pd.DataFrame, samples: dict, level: float = LEVEL, dfs: dict | None = None
                  ) -> PowerLaw | None:
    """Least squares of log c* on log d; replicate r uses replicate r of every data set's c*.

    per_dataset: rows with dataset, dim, c_star; samples: dataset -> (n_boot,) replicates of c*;
    dfs: dataset -> degrees of freedom of its estimate (the smallest widens the interval, see
    stats.expanded_level).
    Returns None with fewer than two distinct dimensions.
    """
    if per_dataset.empty or per_dataset["dim"].nunique() < 2:
        return None
    log_d = np.log(per_dataset["dim"].to_numpy(dtype=float))
    centred = log_d - log_d.mean()

    def ols(log_c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # log_c: (..., num_datasets)
        b = (log_c * centred).sum(-1) / (centred ** 2).sum()
        log_a = log_c.mean(-1) - b * log_d.mean()
        return log_a, b

    log_a, b = ols(np.log(per_dataset["c_star"].to_numpy(dtype=float)))
    reps = np.log(np.stack([samples[d] for d in per_dataset["dataset"]], axis=-1))
    rep_log_a, rep_b = ols(reps)
    df = min(dfs.values()) if dfs else None
    b_lo, b_hi = percentile_ci(rep_b, level, df=df)
    la_lo, la_hi = percentile_ci(rep_log_a, level, df=df)
    return PowerLaw(float(math.exp(log_a)), float(b), math.exp(la_lo), math.exp(la_hi), b_lo, b_hi,
                    len(per_dataset), rep_b)
