"""Any space, a user's own included: the metric against each key the search varied.

The open questions have their own modules; this one answers the question every search asks, "how
did the metric move with what I searched?", for whatever keys vary within an experiment and data
set (e.g. optim.lr in a user's space). Numeric keys with many values (a random search) are binned,
in log space when all values are positive and span more than a factor of 10.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from analysis.load import require_columns
from ict_core.records import COMPLETED, DIVERGED
from analysis.stats import LEVEL, N_BOOT, mean_ci, value_token, varying_columns

COLUMNS = ["experiment", "dataset", "key", "value", "num_runs", "num_diverged", "num_other", "mean", "lo", "hi",
           "best"]


def searched_keys(group: pd.DataFrame) -> list[str]:
    """Config keys that take more than one value among the runs of `group` (one experiment and data set)."""
    return varying_columns(group)


def _numeric(values: pd.Series) -> np.ndarray | None:
    numbers = pd.to_numeric(values, errors="coerce")
    if values.notna().sum() == 0 or numbers[values.notna()].isna().any():
        return None
    return numbers.to_numpy(float)


def log_axis(x: np.ndarray) -> bool:
    """Whether values are better read on a log axis: all positive and spanning more than 10x."""
    x = x[np.isfinite(x)]
    return bool(x.size and (x > 0).all() and x.max() / x.min() > 10)


def _bins(x: np.ndarray, max_bins: int) -> tuple[np.ndarray, list[str]]:
    """Bin index per value and a label per bin; each distinct value its own bin when few enough."""
    distinct = np.unique(x[np.isfinite(x)])
    if distinct.size <= max_bins:
        return np.searchsorted(distinct, x), [f"{v:.4g}" for v in distinct]
    u = np.log(x) if log_axis(x) else x
    edges = np.quantile(u[np.isfinite(u)], np.linspace(0, 1, max_bins + 1))
    edges = np.unique(edges)
    index = np.clip(np.searchsorted(edges, u, side="right") - 1, 0, edges.size - 2)
    back = np.exp(edges) if log_axis(x) else edges
    labels = [f"[{back[i]:.3g}, {back[i + 1]:.3g}{']' if i == edges.size - 2 else ')'}" for i in range(edges.size - 1)]
    return index, labels


def metric_by_key(trials: pd.DataFrame, metric: str = "final_fd", n_boot: int = N_BOOT, level: float = LEVEL,
                  seed: int = 0, max_bins: int = 6) -> pd.DataFrame:
    """One row per (experiment, dataset, searched key, value or bin): runs, diverged and other non-completed
    runs, mean `metric` of the completed runs with its t interval, and the best (lowest) run.

    trials: one row per run (experiment, dataset, status, `metric`, dotted config columns).
    """
    require_columns(trials, ["experiment", "dataset", "status", metric], "trials table")
    rng = np.random.default_rng(seed)
    rows = []
    for (experiment, dataset), group in trials.groupby(["experiment", "dataset"], sort=True):
        status = group["status"].astype(str)
        y = pd.to_numeric(group[metric], errors="coerce").to_numpy(float)
        ok = (status == COMPLETED).to_numpy() & np.isfinite(y)
        for key in searched_keys(group):
            x = _numeric(group[key])
            if x is not None:
                index, labels = _bins(x, max_bins)
            else:
                tokens = group[key].map(value_token).to_numpy()
                labels = sorted(set(tokens))
                index = np.searchsorted(np.array(labels), tokens)
            for j, label in enumerate(labels):
                at = index == j
                m = mean_ci(y[at & ok], n_boot=n_boot, level=level, rng=rng)
                rows.append({"experiment": experiment, "dataset": dataset, "key": key, "value": label,
                             "num_runs": int((at & ok).sum()),
                             "num_diverged": int((at & (status == DIVERGED).to_numpy()).sum()),
                             "num_other": int((at & ~ok & (status != DIVERGED).to_numpy()).sum()),
                             "mean": m.value, "lo": m.lo, "hi": m.hi,
                             "best": float(np.min(y[at & ok])) if (at & ok).any() else math.nan})
    return pd.DataFrame(rows, columns=COLUMNS)


def best_runs(trials: pd.DataFrame, metric: str = "final_fd") -> pd.DataFrame:
    """The completed run with the lowest `metric` per (experiment, dataset), with the searched keys' values
    as text in `searched` ("optim.lr=0.001, network.dropout=0.1")."""
    rows = []
    for (experiment, dataset), group in trials.groupby(["experiment", "dataset"], sort=True):
        y = pd.to_numeric(group[metric], errors="coerce")
        done = group[(group["status"].astype(str) == COMPLETED) & np.isfinite(y)]
        if done.empty:
            continue
        best = done.loc[pd.to_numeric(done[metric]).idxmin()]
        keys = searched_keys(group)
        rows.append({"experiment": experiment, "dataset": dataset, metric: float(best[metric]),
                     "seed": best["seed"], "searched": ", ".join(f"{k}={value_token(best[k])}" for k in keys)})
    return pd.DataFrame(rows, columns=["experiment", "dataset", metric, "seed", "searched"])
