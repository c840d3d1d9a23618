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
from analysis.selection import value_token, varying_columns
from analysis.stats import LEVEL, N_BOOT, mean_ci

COLUMNS = ["experiment", "stratum", "dataset", "key", "value", "num_runs", "num_diverged", "num_other", "mean", "lo", "hi",
           "best"]


def searched_keys(group: pd.DataFrame) -> list[str]:
    """The keys a search varied among the runs of `group` (one experiment and stratum): the searched params of its
    experiment.json's plan when known (a key the objective or the stratum fixes, e.g. loss.p_mean, is no searched
    key), else the config keys that take more than one value."""
    params = _plan(group)
    if params:
        return [k for k in params if k in group.columns and group[k].nunique(dropna=False) > 1]
    return varying_columns(group)


def _plan(group: pd.DataFrame) -> dict:
    if "experiment_dir" not in group.columns or group["experiment_dir"].isna().all():
        return {}
    from analysis.importance import plan_params

    return plan_params(str(group["experiment_dir"].dropna().iloc[0]))


def log_key(group: pd.DataFrame, key: str, x: np.ndarray) -> bool:
    """Whether `key` is read on a log axis: the plan searched it log-distributed (loguniform, or int with log),
    else (no plan) its values are all positive and span more than 10x."""
    spec = _plan(group).get(key)
    if isinstance(spec, dict):
        return spec.get("type") == "loguniform" or bool(spec.get("log"))
    return log_axis(x)


def search_groups(trials: pd.DataFrame):
    """(experiment, stratum, dataset, runs) per search unit: each stratum is its own search (e.g. one objective of
    the dropout space), so strata are never pooled; tables without a stratum column group by data set."""
    by = ["experiment", "stratum"] if "stratum" in trials.columns and trials["stratum"].notna().all() else \
        ["experiment", "dataset"]
    for keys, group in trials.groupby(by, sort=True):
        experiment, unit = keys
        yield experiment, unit, str(group["dataset"].iloc[0]), group


def _numeric(values: pd.Series) -> np.ndarray | None:
    numbers = pd.to_numeric(values, errors="coerce")
    if values.notna().sum() == 0 or numbers[values.notna()].isna().any():
        return None
    return numbers.to_numpy(float)


def log_axis(x: np.ndarray) -> bool:
    """Whether values are better read on a log axis: all positive and spanning more than 10x."""
    x = x[np.isfinite(x)]
    return bool(x.size and (x > 0).all() and x.max() / x.min() > 10)


def _bins(x: np.ndarray, max_bins: int, log: bool | None = None) -> tuple[np.ndarray, list[str]]:
    """Bin index per value and a label per bin; each distinct value its own bin when few enough."""
    distinct = np.unique(x[np.isfinite(x)])
    if distinct.size <= max_bins:
        return np.searchsorted(distinct, x), [f"{v:.4g}" for v in distinct]
    log = log_axis(x) if log is None else log and bool((x[np.isfinite(x)] > 0).all())
    u = np.log(x) if log else x
    edges = np.quantile(u[np.isfinite(u)], np.linspace(0, 1, max_bins + 1))
    edges = np.unique(edges)
    index = np.clip(np.searchsorted(edges, u, side="right") - 1, 0, edges.size - 2)
    back = np.exp(edges) if log else edges
    labels = [f"[{back[i]:.3g}, {back[i + 1]:.3g}{']' if i == edges.size - 2 else ')'}" for i in range(edges.size - 1)]
    return index, labels


def metric_by_key(trials: pd.DataFrame, metric: str = "final_fd", n_boot: int = N_BOOT, level: float = LEVEL,
                  seed: int = 0, max_bins: int = 6) -> pd.DataFrame:
    """One row per (experiment, stratum, searched key, value or bin): runs, diverged and other non-completed
    runs, mean `metric` of the completed runs with its t interval, and the best (lowest) run. Strata are kept
    apart (search_groups) and only searched keys are listed (searched_keys).

    trials: one row per run (experiment, dataset, status, `metric`, dotted config columns).
    """
    require_columns(trials, ["experiment", "dataset", "status", metric], "trials table")
    rng = np.random.default_rng(seed)
    rows = []
    for experiment, stratum, dataset, group in search_groups(trials):
        status = group["status"].astype(str)
        y = pd.to_numeric(group[metric], errors="coerce").to_numpy(float)
        ok = (status == COMPLETED).to_numpy() & np.isfinite(y)
        for key in searched_keys(group):
            x = _numeric(group[key])
            if x is not None:
                index, labels = _bins(x, max_bins, log_key(group, key, x))
            else:
                tokens = group[key].map(value_token).to_numpy()
                labels = sorted(set(tokens))
                index = np.searchsorted(np.array(labels), tokens)
            for j, label in enumerate(labels):
                at = index == j
                m = mean_ci(y[at & ok], n_boot=n_boot, level=level, rng=rng)
                rows.append({"experiment": experiment, "stratum": stratum, "dataset": dataset, "key": key, "value": label,
                             "num_runs": int((at & ok).sum()),
                             "num_diverged": int((at & (status == DIVERGED).to_numpy()).sum()),
                             "num_other": int((at & ~ok & (status != DIVERGED).to_numpy()).sum()),
                             "mean": m.value, "lo": m.lo, "hi": m.hi,
                             "best": float(np.min(y[at & ok])) if (at & ok).any() else math.nan})
    return pd.DataFrame(rows, columns=COLUMNS)


def best_runs(trials: pd.DataFrame, metric: str = "final_fd") -> pd.DataFrame:
    """The completed run with the lowest `metric` per (experiment, stratum), with the searched keys' values
    as text in `searched` ("optim.lr=0.001, network.dropout=0.1")."""
    rows = []
    for experiment, stratum, dataset, group in search_groups(trials):
        y = pd.to_numeric(group[metric], errors="coerce")
        done = group[(group["status"].astype(str) == COMPLETED) & np.isfinite(y)]
        if done.empty:
            continue
        best = done.loc[pd.to_numeric(done[metric]).idxmin()]
        keys = searched_keys(group)
        rows.append({"experiment": experiment, "stratum": stratum, "dataset": dataset, metric: float(best[metric]),
                     "seed": best["seed"], "searched": ", ".join(f"{k}={value_token(best[k])}" for k in keys)})
    return pd.DataFrame(rows, columns=["experiment", "stratum", "dataset", metric, "seed", "searched"])
