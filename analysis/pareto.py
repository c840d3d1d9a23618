"""The Pareto front of a multi-objective search (a space with `metric: [fd, fd_2step]`), per experiment and stratum.

A configuration's point is the mean over its seeds of each objective's final value (final_<metric> of
trials.parquet), counted only when every seed of it completed (a pruned, diverged or errored seed leaves no
comparable value). A configuration is on the front when no other configuration of the same experiment and
stratum is at least as good on every objective and better on one; the front is listed best first on the first
objective. The objectives and their directions come from experiment.json's plan (`metrics`, `modes`).

Shape: trials as load_results gives them (experiment_dir, experiment, stratum, config_id, seed, status, the
final_<metric> columns and the dotted config columns).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.load import EXPERIMENT_FILE
from analysis.selection import config_columns, value_token
from ict_core.records import COMPLETED


def objectives(experiment_dir) -> tuple[list[str], list[str]]:
    """(metrics, modes) of a multi-objective experiment's plan; ([], []) for a single-objective one."""
    try:
        plan = json.loads((Path(experiment_dir) / EXPERIMENT_FILE).read_text()).get("plan") or {}
    except (OSError, ValueError, AttributeError):
        return [], []
    metrics, modes = plan.get("metrics") or [], plan.get("modes") or []
    return (list(metrics), list(modes)) if len(metrics) > 1 and len(modes) == len(metrics) else ([], [])


def on_front(points: np.ndarray, modes: list[str]) -> np.ndarray:
    """Which rows of `points` (configurations x objectives) no other row dominates."""
    signs = np.array([1.0 if m == "min" else -1.0 for m in modes])
    x = points * signs  # every objective minimised
    front = np.ones(len(x), dtype=bool)
    for i in range(len(x)):
        others = np.delete(x, i, axis=0)
        front[i] = not np.any(np.all(others <= x[i], axis=1) & np.any(others < x[i], axis=1))
    return front


def pareto_table(trials: pd.DataFrame, metrics: list[str], modes: list[str]) -> pd.DataFrame:
    """One row per configuration whose seeds all completed: experiment, stratum, config_id, its varying config
    keys as text (`config`), seeds, the mean of each final_<metric>, and `on_front`."""
    columns = [f"final_{m}" for m in metrics]
    rows = []
    for (experiment, stratum), group in trials.groupby(["experiment", "stratum"], sort=True):
        keys = [c for c in config_columns(group) if c != "train.seed" and group[c].map(value_token).nunique() > 1]
        for config_id, runs in group.groupby("config_id", sort=False):
            values = runs[columns].apply(pd.to_numeric, errors="coerce")
            if not (runs["status"].astype(str) == COMPLETED).all() or not np.isfinite(values.to_numpy(float)).all():
                continue
            first = runs.iloc[0]
            rows.append({"experiment": experiment, "stratum": stratum, "config_id": str(config_id),
                         "config": ", ".join(f"{k}={value_token(first[k])}" for k in keys), "seeds": len(runs),
                         **{c: float(values[c].mean()) for c in columns}})
    table = pd.DataFrame(rows, columns=["experiment", "stratum", "config_id", "config", "seeds", *columns])
    table["on_front"] = False
    for _, group in table.groupby(["experiment", "stratum"]):
        table.loc[group.index, "on_front"] = on_front(group[columns].to_numpy(float), modes)
    ascending = modes[0] == "min"
    return table.sort_values(["experiment", "stratum", "on_front", columns[0]],
                             ascending=[True, True, False, ascending]).reset_index(drop=True)


def plot_front(table: pd.DataFrame, metrics: list[str]):
    """One panel per (experiment, stratum): every configuration's first two objectives, the front joined."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure  # no backend change (as analysis/plots.py)

    x, y = f"final_{metrics[0]}", f"final_{metrics[1]}"
    groups = list(table.groupby(["experiment", "stratum"], sort=True))
    fig = Figure(figsize=(4.2 * len(groups), 3.6))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(groups), squeeze=False)
    for ax, ((experiment, stratum), group) in zip(axes[0], groups):
        ax.scatter(group[x], group[y], color="0.6", s=18, label="configuration")
        front = group[group["on_front"]].sort_values(x)
        ax.plot(front[x], front[y], "o-", color="C3", ms=5, label="Pareto front")
        ax.set_xlabel(metrics[0])
        ax.set_ylabel(metrics[1])
        ax.set_title(f"{experiment} / {stratum}", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
