"""The report's other sections and its opening: the metric against each searched key, parameter importances,
Pareto fronts, sample grids, the compute behind each answer and the line on whether the budgets can give a verdict.
The table of answers that opens the report is analysis/report_answers.py.
"""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from analysis import plots
from analysis.grids import RUN_DIR, best_and_worst, copy_grids
from analysis.importance import MIN_COMPLETED, export_journal, importance_table, live_journal, rebuild_studies
from analysis.report_parts import SMOKE, Report, md_table
from analysis.searched import best_runs, metric_by_key
from analysis.stats import fmt
from ict_core.records import COMPLETED, JOURNAL_FILE


def searched_section(rep: Report, trials, metric, n_boot, level, seed) -> None:
    """The metric against every searched key of every experiment (any space, a user's own included)."""
    table = metric_by_key(trials, metric=metric, n_boot=n_boot, level=level, seed=seed)
    best = best_runs(trials, metric)
    if table.empty and best.empty:
        return
    files = [rep.csv(table, "searched_keys.csv"), rep.csv(best, "best_runs.csv")]
    png = rep.png(plots.plot_searched(trials, table, metric), "searched_keys.png") if not table.empty else None
    rep.section(
        "Metric against each searched key",
        f"For every experiment and stratum (each stratum is its own search, e.g. one objective), each key it "
        f"searched (the plan's params; without a plan, each config key that varies): mean `{metric}` of the completed "
        "runs per value (numeric keys with many values in quantile bins) with its Student-t interval over runs, "
        "diverged and other unfinished runs counted, and the best run.\n\n"
        + md_table(best) + "\n" + md_table(table, max_rows=80) + "\n"
        + (f"![searched keys]({png})\n\n" if png else "") + "Tables: " + ", ".join(files) + "\n")
    rep.best = best


def importance_section(rep: Report, trials, metric, seed, write_journal: bool = True) -> None:
    """Per (experiment, stratum): Optuna's parameter importances from a study rebuilt out of the trials, and
    that study written as an Optuna journal file in the experiment folder for optuna-dashboard."""
    studies = rebuild_studies(trials, metric=metric, seed=seed)
    if not studies:
        return
    table = importance_table(studies)
    journals = []
    if write_journal:
        for folder in sorted({s.experiment_dir for s in studies}):
            path = Path(folder) / JOURNAL_FILE
            shown = os.path.relpath(path, rep.out)  # relative to the report, as its links are
            if live_journal(folder):  # the search's own studies, kept as they ran (tune/searcher.py)
                journals.append(f"`{shown}` (the search's live studies)")
                continue
            try:
                export_journal([s for s in studies if s.experiment_dir == folder], path)
                journals.append(f"`{shown}`")
            except OSError as err:
                journals.append(f"`{shown}` not written ({err.strerror or err})")
    files = [rep.csv(table, "importances.csv")]
    several = [s for s in studies if len(s.importances) > 1]
    png = rep.png(plots.plot_importances(table), "importances.png") if several else None
    lines = []
    for s in studies:
        if s.importances:
            top = ", ".join(f"{k} {v:.2f}" for k, v in s.importances.items())
            lines.append(f"- {s.name}: {top} ({s.num_complete} completed configurations)")
        else:
            lines.append(f"- {s.name}: no importances: {s.reason}")
    rep.section(
        "Which searched key mattered: parameter importances",
        "Per experiment and stratum the runs are rebuilt as an Optuna study: one trial per configuration, its "
        f"value the mean `{metric}` over its completed seeds, FAIL when a seed diverged or errored, PRUNED when "
        "the scheduler stopped it; distributions from the searched params of experiment.json's plan (inferred "
        "from the tables when it has none). Importance is Optuna's fANOVA: the share of the variance of the "
        "metric over the completed configurations that each key explains (the shares sum to 1; one key gets 1 by "
        f"construction). It needs {MIN_COMPLETED} or more completed configurations, and says nothing about which "
        "value is best: see the metric against each searched key.\n\n"
        + "\n".join(lines) + "\n\n" + md_table(table, max_rows=80) + "\n"
        + (f"![importances]({png})\n\n" if png else "")
        + ("Optuna journal files (open one with `optuna-dashboard FILE`; the study of each stratum is named "
           "experiment/stratum): " + ", ".join(journals) + "\n\n" if journals else "")
        + "Tables: " + ", ".join(files) + "\n")


def pareto_section(rep: Report, trials) -> None:
    """The Pareto front per stratum of each multi-objective experiment (analysis/pareto.py)."""
    from analysis.pareto import objectives, pareto_table, plot_front

    for folder, group in trials.groupby("experiment_dir", sort=True):
        metrics, modes = objectives(folder)
        if not metrics or not all(f"final_{m}" in group.columns for m in metrics):
            continue
        table = pareto_table(group, metrics, modes)
        if table.empty:
            continue
        name = str(group["experiment"].iloc[0])
        files = [rep.csv(table, f"pareto_{name}.csv")]
        png = rep.png(plot_front(table, metrics), f"pareto_{name}.png")
        lines = []
        for (experiment, stratum), rows in table.groupby(["experiment", "stratum"], sort=True):
            front = rows[rows["on_front"]]
            points = "; ".join(f"{r['config'] or r['config_id']}: " + ", ".join(
                f"{m} {fmt(r[f'final_{m}'])}" for m in metrics) for _, r in front.iterrows())
            lines.append(f"- {experiment}/{stratum}: {len(front)} of {len(rows)} configurations on the front: {points}")
        wanted = ", ".join(f"{m} ({'lower' if d == 'min' else 'higher'} is better)" for m, d in zip(metrics, modes))
        rep.section(
            f"Pareto front: {name}",
            f"A multi-objective search over {wanted}. Each configuration whose seeds all completed is a point (the "
            "mean over its seeds of each final value); it is on the front when no other configuration of the same "
            "stratum is at least as good on every objective and better on one.\n\n"
            + "\n".join(lines) + "\n\n" + md_table(table, max_rows=60) + "\n"
            + f"![pareto front]({png})\n\nTables: " + ", ".join(files) + "\n")


def grids_section(rep: Report, trials, metric) -> None:
    """Sample grids of the best and the worst configuration of each experiment and stratum, copied into the
    report folder and linked relatively, so the folder can be moved."""
    picks = best_and_worst(trials, metric)
    if picks.empty:
        return
    if RUN_DIR not in trials.columns or trials[RUN_DIR].isna().all():
        rep.section(
            "Samples of the best and the worst configuration", "No sample grids are available: trials.parquet "
            f"has no `{RUN_DIR}` column (tables written before run folders were recorded), so the runs' "
            "samples/step_*.png cannot be found.\n")
        return
    picks = copy_grids(picks, rep.out)
    rep.files += [rep.out / g for g in picks["grid"] if g]
    blocks = []
    for (experiment, stratum), g in picks.groupby(["experiment", "stratum"], sort=True):
        head = "| | " + " | ".join(g["which"]) + " |\n|---|" + "---|" * len(g) + "\n"
        config = "| configuration | " + " | ".join(
            str(r["searched"] or r["config_id"]).replace("|", "/") for _, r in g.iterrows()) + " |\n"
        value = f"| mean {metric} | " + " | ".join(
            f"{fmt(r['mean'])} ({r['num_seeds']} seed{'s' if r['num_seeds'] != 1 else ''})" for _, r in g.iterrows()) + " |\n"
        grid = "| samples (seed shown) | " + " | ".join(
            (f"![{r['which']}]({r['grid']}) seed {r['seed']}" if r["grid"] else f"none: {r['note']}")
            for _, r in g.iterrows()) + " |\n"
        blocks.append(f"### {experiment} / {stratum}\n\n" + head + config + value + grid)
    files = [rep.csv(picks.drop(columns=["experiment_dir"]), "sample_grids.csv")]
    rep.section(
        "Samples of the best and the worst configuration",
        f"Per experiment and stratum, the configurations with the lowest and the highest mean `{metric}` over "
        "their completed seeds (configurations with a diverged or errored seed left out); each shows the final "
        "sample grid (the newest evaluation's; its panels are named in the image) of its lowest completed "
        "seed, not of its best seed.\n\n" + "\n".join(blocks) + "\nTables: " + ", ".join(files) + "\n")


def trained(trials: pd.DataFrame) -> pd.DataFrame:
    """A copy of `trials` with what each row trained: _reused (copied from another experiment, tune/reuse.py, or a
    later row repeating a run_key already listed: trained once, counted once), _images and _wall (images seen and
    the run's own wall seconds, 0 for a reused row)."""
    t = trials.copy()
    reused = t["reused"].fillna(False).astype(bool) if "reused" in t.columns else pd.Series(False, index=t.index)
    if "run_key" in t.columns:
        keys = t["run_key"].where((t["status"].astype(str) != "errored") & ~reused)
        reused |= keys.notna() & keys.duplicated(keep="first")
    t["_reused"] = reused
    t.loc[reused, ["images_seen", "wall_s"]] = 0
    t["_images"] = pd.to_numeric(t.get("images_seen"), errors="coerce").fillna(0)
    t["_wall"] = pd.to_numeric(t.get("wall_s"), errors="coerce").fillna(0)
    return t


def compute_table(trials: pd.DataFrame) -> pd.DataFrame:
    """Per experiment and stratum: what its answers rest on (configurations, runs, seeds per configuration, steps
    per run, images trained, and the runs' own training wall time, summed over runs). A run is trained once:
    rows marked `reused` (copied from another experiment, tune/reuse.py) and later rows repeating a run_key
    already listed count under "reused runs", not in the images and hours trained."""
    if trials.empty:
        return pd.DataFrame()
    t = trained(trials)
    t["_steps"] = pd.to_numeric(t.get("steps"), errors="coerce")
    t["_done"] = t["status"].astype(str) == COMPLETED
    rows = []
    for (experiment, stratum), g in t.groupby(["experiment", "stratum"], sort=True):
        seeds = g[g["_done"]].groupby("config_id")["seed"].nunique()
        rows.append({"experiment": experiment, "stratum": stratum, "dataset": g["dataset"].iloc[0],
                     "configurations": int(g["config_id"].nunique()), "runs": len(g),
                     "reused runs": int(g["_reused"].sum()),
                     "completed": int(g["_done"].sum()),
                     "seeds per configuration": (f"{seeds.min()}-{seeds.max()}" if len(seeds) and seeds.min() != seeds.max()
                                                 else str(int(seeds.max())) if len(seeds) else "0"),
                     "steps per run": int(g["_steps"].max()) if g["_steps"].notna().any() else 0,
                     "images trained": int(g["_images"].sum()),
                     "run hours": round(float(g["_wall"].sum()) / 3600, 2)})
    return pd.DataFrame(rows)


def compute_section(rep: Report, trials: pd.DataFrame) -> None:
    table = compute_table(trials)
    if table.empty:
        return
    name = rep.csv(table, "compute.csv")
    rep.section(
        "Compute behind each answer", "Per experiment and stratum: the configurations and runs its answers rest "
        "on, the seeds each configuration completed, the images trained (pruned runs included) and the runs' own "
        "training wall time summed over runs (concurrent runs overlap, so this exceeds the search's wall time).\n\n"
        + md_table(table) + f"\nTable: {name}\n")


def budget_line(trials: pd.DataFrame, min_seeds: int) -> str:
    """First words of the report: whether the budgets behind the tables can give a verdict at all."""
    done = trials[trials["status"].astype(str) == COMPLETED]
    key = [c for c in ("experiment_dir", "stratum", "config_id") if c in done.columns]
    most = done.groupby(key)["seed"].nunique().groupby(level=0).max() if len(done) else pd.Series(dtype=int)
    experiments = sorted(set(trials["experiment_dir"])) if "experiment_dir" in trials.columns else []
    names = dict(zip(trials.get("experiment_dir", []), trials.get("experiment", [])))
    few = [e for e in experiments if int(most.get(e, 0)) < min_seeds]
    parts = []
    if few and len(few) == len(experiments):
        top = int(most.max()) if len(most) else 0
        parts.append(f"These tables cannot give a verdict: at most {top} seed{'s' if top != 1 else ''} per "
                     f"configuration, and a verdict needs {min_seeds}; every answer below is inconclusive")
    elif few:
        parts.append(f"Experiment{'s' if len(few) > 1 else ''} {', '.join(str(names[e]) for e in few)} cannot give a "
                     f"verdict: fewer than {min_seeds} seeds per configuration, so {'their' if len(few) > 1 else 'its'} "
                     "answers below are inconclusive")
    if "budget" in trials.columns:
        smoke = [e for e in experiments if SMOKE in set(trials.loc[trials["experiment_dir"] == e, "budget"].astype(str))]
        if smoke and len(smoke) == len(experiments):
            parts.append("The budget is smoke, a pipeline check whose runs are too short to rank models")
        elif smoke:
            parts.append(f"Experiment{'s' if len(smoke) > 1 else ''} {', '.join(str(names[e]) for e in smoke)} ran "
                         "the smoke budget, a pipeline check whose runs are too short to rank models")
    return ". ".join(parts) + ("." if parts else "")


def metric_name(metric: str) -> str:
    return metric.replace("final_", "")
