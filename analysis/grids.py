"""Sample grids of the best and the worst configuration of each experiment and stratum, for the report.

A number says how far samples are from the data; a grid shows what they look like. Every run folder
holds samples/step_XXXXXXX.png, one grid per evaluation, the newest being the final one; trials.parquet
names each run's folder in its `run_dir` column, relative to the experiment folder (the folder holding
trials.parquet). Tables written before that column have no grids to show, and the report says so.

Best and worst are by the mean `metric` over a configuration's completed seeds, among configurations
none of whose seeds diverged or errored (those are counted apart). The grid shown is that of the
configuration's lowest completed seed, whatever its own FD: picking the best seed's grid would flatter.
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.load import require_columns
from ict_core.records import COMPLETED, DIVERGED, ERRORED

RUN_DIR = "run_dir"
GRID_FOLDER = "grids"


def final_grid(run_dir: Path) -> Path | None:
    """The newest samples/step_*.png of a run folder (by step number, not by name)."""
    steps = []
    for path in Path(run_dir).glob("samples/step_*.png"):
        digits = path.stem[len("step_"):]
        if digits.isdigit():
            steps.append((int(digits), path))
    return max(steps)[1] if steps else None


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("_") or "x"


def _describe(row: pd.Series, keys: list[str]) -> str:
    parts = []
    for k in keys:
        v = row[k]
        parts.append(f"{k}={v:.4g}" if isinstance(v, (float, np.floating)) else f"{k}={v}")
    return ", ".join(parts)


def best_and_worst(trials: pd.DataFrame, metric: str = "final_fd") -> pd.DataFrame:
    """One row per (experiment folder, stratum, best/worst): the configuration, its mean metric over its
    completed seeds, and the run (lowest completed seed) whose grid stands for it; `searched` names the
    config keys that vary within the stratum. Strata with fewer than two ranked configurations give only
    "best". Columns: experiment_dir, experiment, stratum, which, config_id, seed, mean, num_seeds,
    searched, run_dir (NaN without the column)."""
    from analysis.selection import varying_columns

    require_columns(trials, ["experiment", "stratum", "config_id", "seed", "status", metric], "trials")
    folder = "experiment_dir" if "experiment_dir" in trials.columns else "experiment"
    rows = []
    for (where, stratum), group in trials.groupby([folder, "stratum"], sort=True):
        status = group["status"].astype(str)
        broken = set(group.loc[status.isin([DIVERGED, ERRORED]), "config_id"])
        done = group[(status == COMPLETED) & ~group["config_id"].isin(broken)
                     & np.isfinite(pd.to_numeric(group[metric], errors="coerce"))]
        if done.empty:
            continue
        means = done.groupby("config_id")[metric].agg(["mean", "size"]).sort_values("mean", kind="stable")
        keys = varying_columns(group)
        picks = [("best", means.index[0])]
        if len(means) > 1:
            picks.append(("worst", means.index[-1]))
        for which, config_id in picks:
            runs = done[done["config_id"] == config_id].sort_values("seed")
            run = runs.iloc[0]
            rows.append({"experiment_dir": where, "experiment": run["experiment"], "stratum": stratum, "which": which,
                         "config_id": config_id, "seed": int(run["seed"]), "mean": float(means.loc[config_id, "mean"]),
                         "num_seeds": int(means.loc[config_id, "size"]), "searched": _describe(run, keys),
                         RUN_DIR: run[RUN_DIR] if RUN_DIR in run.index else np.nan})
    return pd.DataFrame(rows, columns=["experiment_dir", "experiment", "stratum", "which", "config_id", "seed", "mean",
                                       "num_seeds", "searched", RUN_DIR])


def copy_grids(picks: pd.DataFrame, out: Path) -> pd.DataFrame:
    """Copy each pick's final grid into OUT/grids/ and return `picks` with `grid` (path relative to OUT, so the
    report folder can be moved), `source` (the grid's path in the experiment folder) and `note` (why a grid
    is missing)."""
    picks = picks.copy()
    grids, sources, notes = [], [], []
    for _, p in picks.iterrows():
        run_dir = p[RUN_DIR]
        if not isinstance(run_dir, str) or not run_dir:
            grids.append("")
            sources.append("")
            notes.append("no run_dir in its trials.parquet (a table written before run folders were recorded)")
            continue
        folder = Path(str(p["experiment_dir"])) / run_dir
        png = final_grid(folder)
        if png is None:
            grids.append("")
            sources.append("")
            notes.append(f"no samples/step_*.png in {run_dir}")
            continue
        name = f"{GRID_FOLDER}/{_slug(p['experiment'])}_{_slug(p['stratum'])}_{p['which']}_{_slug(p['config_id'])}.png"
        (out / GRID_FOLDER).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(png, out / name)
        grids.append(name)
        sources.append(f"{run_dir}/samples/{png.name}")
        notes.append("")
    picks["grid"] = grids
    picks["source"] = sources
    picks["note"] = notes
    return picks
