"""Run selection and matching of configurations: which runs a metric can use, what was left out and why,
values at a common compute budget, and the keys that say which runs share a configuration."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from analysis.load import require_columns
from ict_core.records import COMPLETED, DIVERGED, PRUNED

# Config keys that say where or how a run was executed, not what was trained: they never split
# otherwise identical configurations into separate cells.
NON_MATCHING = frozenset({
    "train.seed", "data.path", "eval.cache_dir", "eval.inception_path", "eval.grid", "train.device",
    "train.num_threads", "train.compile", "train.channels_last", "train.log_every", "train.checkpoint_every",
    "train.keep_checkpoints", "train.fault_step",
})

# data.name and data.resolution are carried by the `dataset` column, which every analysis groups by.
DATA_KEYS = frozenset({"data.name", "data.resolution"})


def se_column(metric: str) -> str:
    """The column holding the FD standard error of `metric`: final_fd -> final_fd_se, fd -> fd_se,
    fd_at_compute -> fd_se_at_compute."""
    if metric.endswith("_at_compute"):
        return se_column(metric[: -len("_at_compute")]) + "_at_compute"
    return metric + "_se"


def typical_se(rows: pd.DataFrame, metric: str) -> float:
    """Median FD standard error of the runs in `rows` (NaN when the tables do not record it).

    Differences of `metric` smaller than this are ties: one evaluation cannot resolve them (see
    docs/ANALYSIS.md, "Ties")."""
    column = se_column(metric)
    if column not in rows.columns:
        return math.nan
    values = pd.to_numeric(rows[column], errors="coerce").to_numpy(float)
    values = values[np.isfinite(values)]
    return float(np.median(values)) if values.size else math.nan


def usable(trials: pd.DataFrame, metric: str = "final_fd") -> pd.DataFrame:
    """Runs that count in estimates: status "completed" and a finite `metric`.

    Diverged, errored and pruned runs are left out here (report.py counts them); a pruned run stopped
    early, so its final metric is not comparable with those of finished runs.
    """
    require_columns(trials, ["status", metric], "trials table")
    values = pd.to_numeric(trials[metric], errors="coerce")
    keep = (trials["status"].astype(str) == COMPLETED) & np.isfinite(values)
    return trials.loc[keep].assign(**{metric: values[keep]})


def left_out(trials: pd.DataFrame, metric: str = "final_fd") -> str:
    """The runs of `trials` that usable() drops, counted by reason: "2 diverged, 1 pruned" ("" if none)."""
    values = pd.to_numeric(trials[metric], errors="coerce")
    status = trials["status"].astype(str)
    reasons = status.where(status != COMPLETED, f"completed without finite {metric}")
    counts = reasons[(status != COMPLETED) | ~np.isfinite(values)].value_counts()
    return ", ".join(f"{n} {reason}" for reason, n in counts.items())


def value_at(images_seen: np.ndarray, values: np.ndarray, budget: float) -> float:
    """The metric of one run at `budget` images, linear in log(images_seen); NaN outside its range."""
    if images_seen.size == 0 or budget < images_seen[0] - 1e-9 or budget > images_seen[-1] + 1e-9:
        return math.nan
    return float(np.interp(math.log(budget), np.log(images_seen), values))


# Evaluation columns that the equal-compute view interpolates beside the metric; each replaces the run's
# final_<column> in the view, so evidence is read at the same compute as the FD (fd_se and fd_student
# are optional: older tables lack them).
EVIDENCE_COLUMNS = ("fd_se", "fd_student", "fd_2step", "kid", "loss_train", "loss_heldout", "nn_dist", "nn_dist_ref")


def at_common_compute(trials: pd.DataFrame, evals: pd.DataFrame, metric: str = "fd",
                      statuses=(COMPLETED, PRUNED)) -> pd.DataFrame:
    """Runs compared at equal training compute, so that runs an early-stopping scheduler pruned count.

    trials, evals: as loaded (see load.py). For each experiment and dataset, the budget is the largest
    images_seen that every run of `statuses` reached; each run's `metric` there (see value_at) becomes
    the column `<metric>_at_compute`, with `budget_images` beside it. The evidence columns of evals
    (EVIDENCE_COLUMNS present) are interpolated the same way into `<column>_at_compute` and replace
    `final_<column>` (fd_se becomes fd_se_at_compute only). Returned rows are those runs with status set
    to "completed" (their own status is kept in `run_status`) so that every analysis takes them; runs
    without evaluations are dropped. Diverged runs of the same experiments follow unchanged (status
    "diverged"), so analyses still count failures per level. An unbiased view: a scheduler selects on
    the metric, so the finished runs alone over-represent good configurations.
    """
    require_columns(evals, ["trial_id", "images_seen", metric], "evals table")
    column = f"{metric}_at_compute"
    extra = [c for c in EVIDENCE_COLUMNS if c in evals.columns and c != metric]
    on = ["trial_id"] + (["experiment_dir"] if "experiment_dir" in trials and "experiment_dir" in evals else [])
    runs = trials[trials["status"].astype(str).isin(statuses)]
    ev = evals[on + ["images_seen", metric] + extra].copy()
    for c in ["images_seen", metric] + extra:
        ev[c] = pd.to_numeric(ev[c], errors="coerce")
    ev = ev[np.isfinite(ev["images_seen"]) & np.isfinite(ev[metric]) & (ev["images_seen"] > 0)]
    curves = {(key if isinstance(key, tuple) else (key,)): g for key, g in ev.sort_values("images_seen").groupby(on)}

    def at(key, col, budget) -> float:
        g = curves.get(key)
        if g is None:
            return math.nan
        ok = np.isfinite(g[col].to_numpy(float))
        return value_at(g["images_seen"].to_numpy(float)[ok], g[col].to_numpy(float)[ok], budget)

    out = []
    for _, group in runs.groupby(["experiment", "dataset"], sort=False):
        keys = [tuple(row) for row in group[on].itertuples(index=False)]
        have = [k for k in keys if k in curves]
        if not have:
            continue
        budget = min(float(curves[k]["images_seen"].iloc[-1]) for k in have)
        values = {column: [at(k, metric, budget) for k in keys]}
        for c in extra:
            values[f"{c}_at_compute"] = [at(k, c, budget) for k in keys]
            if c != "fd_se":
                values[f"final_{c}"] = values[f"{c}_at_compute"]
        out.append(group.assign(**values, budget_images=budget, run_status=group["status"], status=COMPLETED))
    if not out:
        return trials.iloc[0:0].assign(**{column: [], "budget_images": [], "run_status": []})
    view = pd.concat(out)
    view = view[np.isfinite(view[column])]
    # Diverged runs stay in the view as they are, so that each level still counts its failures.
    diverged = trials[(trials["status"].astype(str) == DIVERGED) & trials["experiment"].isin(view["experiment"])]
    return pd.concat([view, diverged.assign(run_status=diverged["status"])], sort=False)


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
