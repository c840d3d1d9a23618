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
from matplotlib.ticker import NullFormatter

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


def _yerr(mean, lo, hi, floor: float | None = None) -> np.ndarray:
    """Error-bar lengths of intervals [lo, hi] around `mean`; with `floor` (FD >= 0) the interval is clipped there."""
    mean, lo, hi = (np.asarray(v, dtype=float) for v in (mean, lo, hi))
    if floor is not None:
        lo = np.maximum(lo, floor)
    return np.nan_to_num(np.stack([mean - lo, hi - mean]), nan=0.0).clip(min=0)


def _below_floor(lo, floor: float = 0.0) -> bool:
    """Whether any interval reaches below the metric's floor (and is clipped there in the plot)."""
    lo = np.asarray(lo, dtype=float)
    return bool((lo[np.isfinite(lo)] < floor).any())


def _pct(level: float) -> str:
    return f"{100 * level:.3g}%"


def _wrap(text: str, width: int = 40) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(str(text), width)) or str(text)


def _robust_limits(lo: np.ndarray, hi: np.ndarray, points: np.ndarray, factor: float = 4.0) -> tuple | None:
    """x-limits that show every interval but one that is `factor` times wider than the median width (it would
    flatten the others): None when no interval is that much wider."""
    width = hi - lo
    ok = np.isfinite(width)
    if ok.sum() < 2:
        return None
    typical = np.median(width[ok])
    keep = ok & (width <= factor * max(typical, 1e-12))
    if keep.all() or not keep.any():
        return None
    left = min(np.min(lo[keep]), np.nanmin(points), 0.0)
    right = max(np.max(hi[keep]), np.nanmax(points), 0.0)
    pad = 0.08 * (right - left or 1.0)
    return left - pad, right + pad


def plot_c_scaling(result: CScaling, level: float = 0.95) -> Figure:
    """One panel per data set: metric against c with the estimated c* (each data set on its own metric
    scale: FD values of different data sets are not comparable; a grid's tested values label the c axis); last
    panel: c* against d, log-log, with the fitted power law (drawn only through at least 3 data sets: two points
    always lie on a line), one-sided bounds as arrows into their open side, and the paper's 0.00054 sqrt(d).
    Metric intervals are clipped at 0, the Frechet distance's floor, and say so."""
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
        clipped = _below_floor(g["lo"])
        line = ax.errorbar(g[C_KEY], g["mean"], yerr=_yerr(g["mean"], g["lo"], g["hi"], floor=0.0), marker="o",
                           capsize=3, label=f"mean over seeds, {_pct(level)} interval"
                           + (" (clipped at 0, FD's floor)" if clipped else ""))
        colour = line[0].get_color()
        for _, row in result.per_dataset[result.per_dataset["dataset"] == dataset].iterrows():
            if np.isfinite(row["c_star"]):
                ax.axvline(row["c_star"], color=colour, linestyle="--", linewidth=1, label="c* (fitted vertex)")
            # A one-sided bound is open on one end: shade it to the searched range's edge.
            lo = row["c_lo"] if row["c_lo"] > 0 else row["c_min"]
            hi = row["c_hi"] if np.isfinite(row["c_hi"]) else row["c_max"]
            ax.axvspan(lo, hi, color=colour, alpha=0.12, label=f"c* {_pct(level)} interval ({row['bound']})")
        ax.set_xscale("log")
        _tested_ticks(ax, g[C_KEY].to_numpy(float))
        ax.set_xlabel("Pseudo-Huber c (whole-sample L2 units)")
        ax.set_ylabel(FD_LABEL.format(metric=result.metric))
        ax.set_title(f"{dataset} (d={int(g['dim'].iloc[0])}): metric against c", fontsize=10)
        ax.legend(fontsize=7)
    _dimension_panel(ax2, result, level)
    return fig


def _dimension_panel(ax2, result: CScaling, level: float) -> None:
    """The last panel of plot_c_scaling: c* against d (log-log) with intervals, one-sided bounds as arrows, the
    paper's line and the fitted law (drawn through 3 or more located data sets only)."""
    per = result.per_dataset
    bounds = per[per["bound"].isin(["below range", "above range"])] if "bound" in per.columns else per.iloc[:0]
    if "bound" in per.columns:
        per = per[per["bound"] == "two-sided"]
    _bound_arrows(ax2, bounds)
    unlocated = (result.per_dataset[result.per_dataset["bound"] == "not located"]
                 if "bound" in result.per_dataset.columns else result.per_dataset.iloc[:0])
    if not unlocated.empty:  # values at both ends tie with the best: no point to draw, but not silently dropped
        ax2.plot([], [], " ", label="c* not located (both ends tie with the best): "
                                    + ", ".join(unlocated["dataset"].astype(str)))
    dims = (pd.concat([per["dim"], bounds["dim"], unlocated["dim"]]) if "dim" in per.columns
            else pd.Series(dtype=float))
    if not dims.empty:
        d = np.geomspace(dims.min() / 1.5, dims.max() * 1.5, 50)
        ax2.plot(d, PAPER_A * d ** PAPER_B, color="tab:orange", label="paper: 0.00054 d^0.5")
    if not per.empty:
        ax2.errorbar(per["dim"], per["c_star"], yerr=_yerr(per["c_star"], per["c_lo"], per["c_hi"]), fmt="o",
                     capsize=3, color="black", label=f"c* per data set ({_pct(level)} interval)")
        if result.fit is not None and len(per) < 3:
            f = result.fit  # the joint fit uses every run, but a line through 2 c* values would look like evidence
            joint = (f"; b from every run (joint fit): {f.b:.2f} [{f.b_lo:.2f}, {f.b_hi:.2f}]"
                     if np.isfinite(f.b_lo) and np.isfinite(f.b_hi) else "")
            ax2.plot([], [], " ", label=f"no fit drawn: {len(per)} data set(s), a line needs 3{joint}")
        elif result.fit is not None:
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
    shown = np.r_[per["c_lo"].to_numpy(float) if not per.empty else [], per["c_hi"].to_numpy(float) if not per.empty else [],
                  bounds["c_hi"].where(bounds["bound"] == "below range", bounds["c_lo"]).to_numpy(float)]
    shown = shown[np.isfinite(shown) & (shown > 0)]
    if shown.size:  # room for the arrows, which autoscaling leaves out
        ax2.set_ylim(min(shown.min(), PAPER_A * dims.min() ** PAPER_B) / 3,
                     max(shown.max(), PAPER_A * dims.max() ** PAPER_B) * 3)
    if ax2.get_legend_handles_labels()[1]:
        ax2.legend(fontsize=7)
    else:
        ax2.text(0.5, 0.5, "no data set searched enough values of c (3)", transform=ax2.transAxes, ha="center",
                 fontsize=8)


def _bound_arrows(ax2, bounds: pd.DataFrame) -> None:
    """One-sided c* bounds on the dimension panel: a caret at the bound with an arrow into the open side."""
    for bound, marker, side in (("below range", "v", "c_hi"), ("above range", "^", "c_lo")):
        rows = bounds[bounds["bound"] == bound]
        if rows.empty:
            continue
        ax2.errorbar(rows["dim"], rows[side], yerr=0.4 * rows[side].to_numpy(float), fmt=marker,
                     uplims=bound == "below range", lolims=bound == "above range", capsize=3,
                     color="tab:grey", label=f"c* {'<' if bound == 'below range' else '>'} bound per data set "
                                             f"(best at, or tied with, the range's "
                                             f"{'low' if bound == 'below range' else 'high'} end)")
        for _, row in rows.iterrows():
            ax2.annotate(row["dataset"], (row["dim"], row[side]), textcoords="offset points", xytext=(5, 4),
                         fontsize=7, color="tab:grey")


def _tested_ticks(ax, values: np.ndarray) -> None:
    """Label a log axis at the tested values when they are few and at least a factor 1.3 apart (a grid), instead
    of matplotlib's crowded minor labels; a random search's values keep the default ticks."""
    tested = np.unique(values[np.isfinite(values) & (values > 0)])
    if 2 <= tested.size <= 8 and np.min(tested[1:] / tested[:-1]) >= 1.3:
        ax.set_xticks(tested)
        ax.set_xticklabels([f"{v:.2g}" for v in tested], rotation=30, fontsize=7)
        ax.xaxis.set_minor_formatter(NullFormatter())


def plot_dropout(result: DropoutResult, level: float = 0.95) -> Figure:
    """Per data set (rows): metric, generalisation gap and nearest-neighbour ratio against dropout,
    one line per objective, with `level` intervals over seeds (the metric's clipped at 0, FD's floor)."""
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
                floor = 0.0 if column == result.metric else None
                clipped = floor is not None and _below_floor(g[f"{column}_lo"])
                line = ax.errorbar(g["dropout"], g[column],
                                   yerr=_yerr(g[column], g[f"{column}_lo"], g[f"{column}_hi"], floor=floor),
                                   marker="o", capsize=3,
                                   label=objective + (" (interval clipped at 0)" if clipped else ""))
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
            ax.set_title(f"{title} - {dataset} ({_pct(level)} intervals)", fontsize=10)
            ax.legend(fontsize=8)
    return fig


def plot_curricula(result: CurriculumResult, max_groups: int = 3, level: float = 0.95) -> Figure:
    """Per (data set, configuration): metric against images seen (log-log), mean over seeds with each
    seed faint; right: the metric at the largest common compute with 95% intervals, by rank."""
    cur, metric = result.curves, result.metric
    final = final_ranking(result.ranking)
    groups = list(final.groupby(["dataset", "context"], sort=True))[:max_groups] if not final.empty else []
    longest = max((len(table) for _, table in groups), default=1)
    fig, axes = _figure(2, max(len(groups), 1), width=6.0, height=max(4.0, 0.8 * longest + 2.5))
    for r, ((dataset, context), table) in enumerate(groups):
        ax, ax2 = axes[r]
        sub = cur[cur["dataset"] == dataset]
        budget = float(table["images_seen"].iloc[0])
        for name in table["curriculum"]:
            runs = sub[sub["curriculum"] == name]
            mean = runs.groupby("images_seen")[metric].mean()
            line = ax.plot(mean.index, mean.values, marker=".", label=_wrap(name, 34))[0]
            for _, run in runs.groupby("trial_id"):
                ax.plot(run["images_seen"], run[metric], color=line.get_color(), alpha=0.2, linewidth=0.8)
        ax.axvline(budget, color="black", linestyle=":", linewidth=0.8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("training compute (images seen)")
        ax.set_ylabel(FD_LABEL.format(metric=metric))
        ax.set_title(f"Metric against compute - {dataset}", fontsize=10)
        ax.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=2)
        y = np.arange(len(table))[::-1]
        clipped = _below_floor(table["lo"])
        ax2.errorbar(table["mean"], y, xerr=_yerr(table["mean"], table["lo"], table["hi"], floor=0.0), fmt="o",
                     capsize=3)
        ax2.set_yticks(y, [_wrap(f"{n} (rank {k})", 34) for n, k in zip(table["curriculum"], table["rank"])],
                       fontsize=7)
        ax2.set_xlabel(FD_LABEL.format(metric=metric))
        ax2.set_title(f"At equal compute: {budget:.3g} images, {_pct(level)} intervals"
                      + (" (clipped at 0)" if clipped else ""), fontsize=10)
    return fig


def plot_ablations(table: pd.DataFrame) -> Figure:
    """Forest plot: FD(paper's choice) - FD(alternative) with the table's intervals (its `level` column: the
    corrected level); left of 0 favours the paper. An interval much wider than the others is clipped at the axis
    edge with an arrow and its bounds written beside it, so it does not flatten the rest."""
    rows = table[table["verdict"] != NOT_RUN].reset_index(drop=True)
    fig, axes = _figure(1, 1, width=8.0, height=max(2.5, 0.55 * len(rows) + 1.6))
    ax = axes[0, 0]
    y = np.arange(len(rows))[::-1]
    lo, hi = rows["lo"].to_numpy(float), rows["hi"].to_numpy(float)
    limits = _robust_limits(lo, hi, rows["effect"].to_numpy(float))
    clipped = 0
    for yi, (_, row) in zip(y, rows.iterrows()):
        colour = VERDICT_COLOURS[row["verdict"]]
        a, b = row["lo"], row["hi"]
        if limits is not None and (a < limits[0] or b > limits[1]):
            clipped += 1
            a, b = max(a, limits[0]), min(b, limits[1])
            for edge, end, marker in ((limits[0], row["lo"], "<"), (limits[1], row["hi"], ">")):
                if (end < edge) if marker == "<" else (end > edge):
                    ax.plot([edge], [yi], marker=marker, color=colour, markersize=7)
            ax.annotate(f"interval clipped: [{row['lo']:.3g}, {row['hi']:.3g}]", (row["effect"], yi),
                        textcoords="offset points", xytext=(0, 7), ha="center", fontsize=7, color=colour)
        ax.errorbar(row["effect"], yi, xerr=_yerr([row["effect"]], [a], [b]), fmt="o", capsize=3, color=colour)
    if limits is not None:
        ax.set_xlim(*limits)
    ax.set_yticks(y, [f"{r.ablation}: {r.paper} - {r.alternative} ({r.verdict})" for r in rows.itertuples()],
                  fontsize=8)
    ax.axvline(0.0, color="black", linewidth=0.8)
    ax.set_xlabel("FD(paper's choice) - FD(alternative)\n(Frechet distance; below 0 favours the paper)"
                  + (f"\n{clipped} interval(s) cut at the axis edge (arrows)" if clipped else ""))
    levels = sorted({float(v) for v in rows.get("level", pd.Series(dtype=float)).dropna()})
    level_text = (f"{_pct(levels[0])} interval" if len(levels) == 1 else
                  f"intervals at {', '.join(_pct(v) for v in levels)}" if levels else "interval")
    ax.set_title(f"Ablations: effect, {level_text} over seeds", fontsize=10)
    return fig


def plot_searched(trials: pd.DataFrame, table: pd.DataFrame, metric: str, max_panels: int = 12) -> Figure:
    """One panel per (experiment, stratum, searched key): the metric of every completed run against the key's
    value with its standard error (the `<metric>_se` column, e.g. final_fd_se) as an error bar, diverged runs as
    red crosses along the top; a log axis for a key the plan searched log-distributed (searched.log_key)."""
    from analysis.searched import _numeric, log_key, search_groups, searched_keys

    panels = [(experiment, stratum, dataset, group, key) for experiment, stratum, dataset, group in
              search_groups(trials) for key in searched_keys(group)][:max_panels]
    ncols = min(3, max(len(panels), 1))
    nrows = max(1, -(-len(panels) // ncols))
    fig, axes = _figure(ncols, nrows, width=4.6, height=3.6)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    se_column = f"{metric}_se"
    for ax, (experiment, stratum, dataset, group, key) in zip(axes.flat, panels):
        y = pd.to_numeric(group[metric], errors="coerce").to_numpy(float)
        se = (pd.to_numeric(group[se_column], errors="coerce").to_numpy(float) if se_column in group.columns
              else np.full(len(group), np.nan))
        status = group["status"].astype(str).to_numpy()
        x = _numeric(group[key])
        if x is None:
            labels = sorted(set(group[key].astype(str)))
            x = np.array([labels.index(v) for v in group[key].astype(str)], dtype=float)
            ax.set_xticks(range(len(labels)), labels, fontsize=8, rotation=20)
        elif log_key(group, key, x):
            ax.set_xscale("log")
        done = (status == COMPLETED) & np.isfinite(y)
        has_se = np.isfinite(se[done]).any()
        ax.errorbar(x[done], y[done], yerr=np.nan_to_num(se[done]) if has_se else None, fmt="o", alpha=0.7,
                    capsize=2, label=COMPLETED + (f" (+- {se_column})" if has_se else ""))
        failed = status == DIVERGED
        if failed.any() and done.any():
            ax.plot(x[failed], np.full(failed.sum(), np.nanmax(y[done])), "x", color="tab:red", label=DIVERGED)
        ax.set_xlabel(key)
        ax.set_ylabel(FD_LABEL.format(metric=metric))
        ax.set_title(f"{experiment} / {stratum}" + (f" ({dataset})" if dataset not in str(stratum) else ""),
                     fontsize=10)
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
