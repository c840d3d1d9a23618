"""Plots of the analysis results; each takes a result object or table and returns a Figure.

Figures are built on matplotlib's Agg canvas directly, so importing this module never changes the
backend of a notebook; `save(fig, path)` writes a PNG.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from analysis.ablations import CONTRADICTED, INCONCLUSIVE, NOT_RUN, REPRODUCED
from analysis.c_scaling import C_KEY, PAPER_A, PAPER_B, CScaling
from analysis.curriculum import CurriculumResult, final_ranking
from analysis.dropout import DropoutResult
from ict_core.records import COMPLETED, DIVERGED

FD_LABEL = "{metric} (Frechet distance, lower is better)"
VERDICT_COLOURS = {REPRODUCED: "tab:green", CONTRADICTED: "tab:red", INCONCLUSIVE: "tab:gray", NOT_RUN: "white"}


def _figure(ncols: int, nrows: int = 1, width: float = 5.0, height: float = 4.0) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = np.atleast_2d(fig.subplots(nrows, ncols, squeeze=False))
    return fig, axes


def save(fig: Figure, path: str | Path, dpi: int = 110) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path


def _yerr(mean, lo, hi) -> np.ndarray:
    mean, lo, hi = (np.asarray(v, dtype=float) for v in (mean, lo, hi))
    return np.nan_to_num(np.stack([mean - lo, hi - mean]), nan=0.0).clip(min=0)


def plot_c_scaling(result: CScaling) -> Figure:
    """One panel per data set: metric against c with the estimated c* (each data set on its own metric
    scale: FD values of different data sets are not comparable); last panel: c* against d, log-log, with
    the fitted power law and the paper's 0.00054 sqrt(d)."""
    datasets = sorted(result.curves["dataset"].unique()) if not result.curves.empty else []
    panels = len(datasets) + 1
    ncols = min(3, panels)
    fig, axes = _figure(ncols, -(-panels // ncols), width=4.6, height=3.6)
    flat = list(axes.flat)
    for ax in flat[panels:]:
        ax.set_visible(False)
    ax2 = flat[len(datasets)]
    for ax, dataset in zip(flat, datasets):
        g = result.curves[result.curves["dataset"] == dataset].sort_values(C_KEY)
        line = ax.errorbar(g[C_KEY], g["mean"], yerr=_yerr(g["mean"], g["lo"], g["hi"]), marker="o", capsize=3)
        colour = line[0].get_color()
        for _, row in result.per_dataset[result.per_dataset["dataset"] == dataset].iterrows():
            if np.isfinite(row["c_star"]):
                ax.axvline(row["c_star"], color=colour, linestyle="--", linewidth=1, label="c* (fitted vertex)")
            # A one-sided bound is open on one end: shade it to the searched range's edge.
            lo = row["c_lo"] if row["c_lo"] > 0 else row["c_min"]
            hi = row["c_hi"] if np.isfinite(row["c_hi"]) else row["c_max"]
            ax.axvspan(lo, hi, color=colour, alpha=0.12, label=f"c* 95% interval ({row['bound']})")
        ax.set_xscale("log")
        ax.set_xlabel("Pseudo-Huber c (whole-sample L2 units)")
        ax.set_ylabel(FD_LABEL.format(metric=result.metric))
        ax.set_title(f"{dataset} (d={int(g['dim'].iloc[0])}): metric against c", fontsize=10)
        ax.legend(fontsize=7)
    per = result.per_dataset
    if "bound" in per.columns:
        per = per[per["bound"] == "two-sided"]
    if not per.empty:
        ax2.errorbar(per["dim"], per["c_star"], yerr=_yerr(per["c_star"], per["c_lo"], per["c_hi"]), fmt="o",
                     capsize=3, color="black", label="c* per data set (95% interval)")
        d = np.geomspace(per["dim"].min() / 1.5, per["dim"].max() * 1.5, 50)
        ax2.plot(d, PAPER_A * d ** PAPER_B, color="tab:orange", label="paper: 0.00054 d^0.5")
        if result.fit is not None:
            f = result.fit
            ax2.plot(d, f.a * d ** f.b, color="tab:blue", linestyle="--",
                     label=f"fit: {f.a:.2g} d^{f.b:.2f} " + (f"(b in [{f.b_lo:.2f}, {f.b_hi:.2f}])"
                                                               if np.isfinite(f.b_lo) and np.isfinite(f.b_hi)
                                                               else "(no interval: too few data sets)"))
        for _, row in per.iterrows():
            ax2.annotate(row["dataset"], (row["dim"], row["c_star"]), textcoords="offset points", xytext=(5, -10),
                         fontsize=8)
    ax2.set_xscale("log")
    ax2.set_yscale("log")
    ax2.set_xlabel("dimension d = C*H*W (number of values per image)")
    ax2.set_ylabel("best c* (whole-sample L2 units)")
    ax2.set_title("Best c against dimension (log-log)")
    ax2.legend(fontsize=8)
    return fig


def plot_dropout(result: DropoutResult) -> Figure:
    """Per data set (rows): metric, generalisation gap and nearest-neighbour ratio against dropout,
    one line per objective, with 95% intervals over seeds."""
    ev = result.evidence
    datasets = sorted(ev["dataset"].unique()) if not ev.empty else []
    fig, axes = _figure(3, max(len(datasets), 1), width=4.6, height=3.6)
    panels = ((result.metric, FD_LABEL.format(metric=result.metric), "Metric against dropout"),
              ("gap", "held-out minus train loss (loss units)", "Generalisation gap"),
              ("nn_ratio", "NN distance / held-out NN distance", "Memorisation (< 1: copies)"))
    for r, dataset in enumerate(datasets):
        for c, (column, ylabel, title) in enumerate(panels):
            ax = axes[r, c]
            for objective, g in ev[ev["dataset"] == dataset].groupby("objective", sort=True):
                g = g.sort_values("dropout")
                line = ax.errorbar(g["dropout"], g[column], yerr=_yerr(g[column], g[f"{column}_lo"], g[f"{column}_hi"]),
                                   marker="o", capsize=3, label=objective)
                if column == result.metric:
                    best = result.best[(result.best["dataset"] == dataset) & (result.best["objective"] == objective)]
                    for _, b in best.iterrows():
                        if np.isfinite(b["best_dropout"]):
                            ax.axvline(b["best_dropout"], color=line[0].get_color(), linestyle="--", linewidth=1)
                        lo = b["lo"] if np.isfinite(b["lo"]) else b["p_min"]
                        hi = b["hi"] if np.isfinite(b["hi"]) else b["p_max"]
                        ax.axvspan(lo, hi, color=line[0].get_color(), alpha=0.12)
            if column == "nn_ratio":
                ax.axhline(1.0, color="black", linewidth=0.8, linestyle=":")
            if column == "gap":
                ax.axhline(0.0, color="black", linewidth=0.8, linestyle=":")
            ax.set_xlabel("dropout rate (probability)")
            ax.set_ylabel(ylabel)
            ax.set_title(f"{title} - {dataset}", fontsize=10)
            ax.legend(fontsize=8)
    return fig


def plot_curricula(result: CurriculumResult, max_groups: int = 3) -> Figure:
    """Per (data set, configuration): metric against images seen (log-log), mean over seeds with each
    seed faint; right: the metric at the largest common compute with 95% intervals, by rank."""
    cur, metric = result.curves, result.metric
    final = final_ranking(result.ranking)
    groups = list(final.groupby(["dataset", "context"], sort=True))[:max_groups] if not final.empty else []
    fig, axes = _figure(2, max(len(groups), 1), width=5.5, height=4.0)
    for r, ((dataset, context), table) in enumerate(groups):
        ax, ax2 = axes[r]
        sub = cur[cur["dataset"] == dataset]
        budget = float(table["images_seen"].iloc[0])
        for name in table["curriculum"]:
            runs = sub[sub["curriculum"] == name]
            mean = runs.groupby("images_seen")[metric].mean()
            line = ax.plot(mean.index, mean.values, marker=".", label=name)[0]
            for _, run in runs.groupby("trial_id"):
                ax.plot(run["images_seen"], run[metric], color=line.get_color(), alpha=0.2, linewidth=0.8)
        ax.axvline(budget, color="black", linestyle=":", linewidth=0.8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("training compute (images seen)")
        ax.set_ylabel(FD_LABEL.format(metric=metric))
        ax.set_title(f"Metric against compute - {dataset}", fontsize=10)
        ax.legend(fontsize=8)
        y = np.arange(len(table))[::-1]
        ax2.errorbar(table["mean"], y, xerr=_yerr(table["mean"], table["lo"], table["hi"]), fmt="o", capsize=3)
        ax2.set_yticks(y, [f"{n} (rank {k})" for n, k in zip(table["curriculum"], table["rank"])], fontsize=8)
        ax2.set_xlabel(FD_LABEL.format(metric=metric))
        ax2.set_title(f"At equal compute: {budget:.3g} images", fontsize=10)
    return fig


def plot_ablations(table: pd.DataFrame) -> Figure:
    """Forest plot: FD(paper's choice) - FD(alternative) with 95% intervals; left of 0 favours the paper."""
    rows = table[table["verdict"] != NOT_RUN].reset_index(drop=True)
    fig, axes = _figure(1, 1, width=8.0, height=max(2.5, 0.55 * len(rows) + 1.6))
    ax = axes[0, 0]
    y = np.arange(len(rows))[::-1]
    for yi, (_, row) in zip(y, rows.iterrows()):
        ax.errorbar(row["effect"], yi, xerr=_yerr([row["effect"]], [row["lo"]], [row["hi"]]), fmt="o", capsize=3,
                    color=VERDICT_COLOURS[row["verdict"]])
    ax.set_yticks(y, [f"{r.ablation}: {r.paper} - {r.alternative} ({r.verdict})" for r in rows.itertuples()],
                  fontsize=8)
    ax.axvline(0.0, color="black", linewidth=0.8)
    ax.set_xlabel("FD(paper's choice) - FD(alternative)\n(Frechet distance; below 0 favours the paper)")
    ax.set_title("Ablations: effect with 95% interval over seeds")
    return fig


def plot_searched(trials: pd.DataFrame, table: pd.DataFrame, metric: str, max_panels: int = 12) -> Figure:
    """One panel per (experiment, data set, searched key): the metric of every completed run against the
    key's value, diverged runs as red crosses along the top; log axis where the values span > 10x."""
    from analysis.searched import _numeric, log_axis

    panels = list(table.groupby(["experiment", "dataset", "key"], sort=True).groups)[:max_panels]
    ncols = min(3, max(len(panels), 1))
    nrows = max(1, -(-len(panels) // ncols))
    fig, axes = _figure(ncols, nrows, width=4.6, height=3.6)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, (experiment, dataset, key) in zip(axes.flat, panels):
        group = trials[(trials["experiment"] == experiment) & (trials["dataset"] == dataset)]
        y = pd.to_numeric(group[metric], errors="coerce").to_numpy(float)
        status = group["status"].astype(str).to_numpy()
        x = _numeric(group[key])
        if x is None:
            labels = sorted(set(group[key].astype(str)))
            x = np.array([labels.index(v) for v in group[key].astype(str)], dtype=float)
            ax.set_xticks(range(len(labels)), labels, fontsize=8, rotation=20)
        elif log_axis(x):
            ax.set_xscale("log")
        done = (status == COMPLETED) & np.isfinite(y)
        ax.plot(x[done], y[done], "o", alpha=0.7, label=COMPLETED)
        failed = status == DIVERGED
        if failed.any() and done.any():
            ax.plot(x[failed], np.full(failed.sum(), np.nanmax(y[done])), "x", color="tab:red", label=DIVERGED)
        ax.set_xlabel(key)
        ax.set_ylabel(FD_LABEL.format(metric=metric))
        ax.set_title(f"{experiment} / {dataset}", fontsize=10)
        ax.legend(fontsize=8)
    return fig


def plot_importances(table: pd.DataFrame, max_panels: int = 12) -> Figure:
    """One panel per (experiment, stratum) with two or more ranked keys (one key gets 1 by construction):
    fANOVA importance of each searched key (share of the metric's variance it explains, summing to 1),
    largest on top."""
    ranked = table[table["importance"].notna()]
    ranked = ranked[ranked.groupby(["experiment", "stratum"])["key"].transform("size") > 1]
    groups = list(ranked.groupby(["experiment", "stratum"], sort=True))[:max_panels]
    ncols = min(3, max(len(groups), 1))
    fig, axes = _figure(ncols, max(1, -(-len(groups) // ncols)), width=4.6,
                        height=max(2.2, 0.4 * ranked.groupby(["experiment", "stratum"]).size().max() + 1.2)
                        if len(ranked) else 2.2)
    for ax in list(axes.flat)[len(groups):]:
        ax.set_visible(False)
    for ax, ((experiment, stratum), g) in zip(axes.flat, groups):
        g = g.sort_values("importance")
        ax.barh(np.arange(len(g)), g["importance"], color="tab:blue")
        ax.set_yticks(np.arange(len(g)), g["key"], fontsize=8)
        ax.set_xlim(0, 1)
        ax.set_xlabel("importance (fANOVA share of variance)")
        ax.set_title(f"{experiment} / {stratum} ({int(g['completed'].iloc[0])} configs)", fontsize=10)
    return fig
