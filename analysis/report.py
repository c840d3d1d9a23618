"""Write a Markdown report with plots and CSV tables from one or several experiment folders.

    python analysis/report.py RESULTS_DIR [RESULTS_DIR ...] [--out DIR]

The first paragraph says first whether the budgets behind the tables can give a verdict at all, then
answers each open question the tables support, with its 95% interval and the number of seeds behind
it, labels an answer "inconclusive" with the reason when it rests on one seed, on a smoke budget, on a
one-sided bound or on an interval that spans the searched range, and names the questions the tables
cannot answer. Every space, a user's own included, also gets the metric against each searched key.
Only completed runs enter the estimates; diverged runs count per level, and pruned runs enter the
equal-compute sections through their evaluations. For a reader's eye it also shows the final sample grids
of the best and the worst configuration of each experiment and stratum, and per stratum Optuna's parameter
importances, whose rebuilt studies it writes into each experiment folder as an Optuna journal file.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from analysis import plots
from analysis.ablations import CONTRADICTED, INCONCLUSIVE, NOT_RUN, REPRODUCED, analyze_ablations, apply_correction, \
    eligible, public
from analysis.c_scaling import PAPER_B, estimate_c_star
from analysis.curriculum import PAPER_SHAPE, final_ranking, rank_curricula
from analysis.dropout import analyze_dropout
from analysis.grids import RUN_DIR, best_and_worst, copy_grids
from analysis.importance import (JOURNAL_FILE, MIN_COMPLETED, export_journal, importance_table, live_journal,
                                 rebuild_studies)
from analysis.load import SchemaError, load_results, status_counts
from ict_core.records import COMPLETED, PRUNED
from ict_core.cli import bad_input
from ict_core.errors import BadInput
from ict_core.fileio import atomic_write_text
from analysis.searched import best_runs, metric_by_key
from analysis.stats import ABOVE, BELOW, LEVEL, MIN_SEEDS, N_BOOT, TWO_SIDED, UNLOCATED, at_common_compute, fmt, fmt_ci

SMOKE = "smoke"


def caveats(num_seeds: int, budgets: str = "", spans: bool = False, extra=()) -> list[str]:
    """Why an answer is inconclusive: one seed, a smoke budget, an interval spanning the searched range."""
    reasons = []
    if num_seeds < MIN_SEEDS:
        reasons.append(f"{num_seeds} seed per configuration, so no spread between seeds is known")
    if SMOKE in str(budgets).split(","):
        reasons.append("smoke budget: a pipeline check, too short to rank models")
    if spans:
        reasons.append("its interval spans the searched range")
    return reasons + [e for e in extra if e]


def labelled(text: str, reasons: list[str]) -> str:
    return f"inconclusive ({'; '.join(reasons)}): {text}" if reasons else text


def joined(parts: list[tuple[str, list[str]]]) -> str:
    """Answers with their reasons, "; "-joined; reasons that every part shares are said once, in front."""
    if not parts:
        return ""
    common = [r for r in parts[0][1] if all(r in reasons for _, reasons in parts)]
    body = "; ".join(labelled(text, [r for r in reasons if r not in common]) for text, reasons in parts)
    return labelled(body, common)


def _md_table(df: pd.DataFrame, max_rows: int = 40) -> str:
    if df.empty:
        return "(no rows)\n"
    df = df.head(max_rows)
    cells = [[fmt(v) if isinstance(v, (float, np.floating)) else str(v) for v in row] for row in df.itertuples(index=False)]
    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in cells]
    return "\n".join(lines) + "\n"


def _runs(num_runs: int, num_values: int, num_seeds: int, what: str) -> str:
    """"35 runs: 7 values of c x 5 seeds" or, for a random search, "12 runs at 12 values of c, 1 seed"."""
    if num_runs == num_values * num_seeds:
        return f"{num_runs} runs: {num_values} values of {what} x {num_seeds} seed{'s' if num_seeds != 1 else ''}"
    return f"{num_runs} runs at {num_values} values of {what}, {num_seeds} seed{'s' if num_seeds != 1 else ''}"


class Report:
    """Collects answers, unanswered questions and sections, then writes report.md."""

    def __init__(self, out: Path, prefix: str = ""):
        self.out = out
        self.prefix = prefix  # file-name prefix of a second view of the same tables
        self.answers: list[str] = []
        self.unanswered: list[str] = []
        self.sections: list[str] = []
        self.files: list[Path] = []
        self.best = pd.DataFrame()  # best run per experiment and stratum (searched_section)
        self.results: dict = {}  # what the question sections computed, for the table of answers (answer_rows)

    def csv(self, df: pd.DataFrame, name: str) -> str:
        name = self.prefix + name
        path = self.out / name
        df.to_csv(path, index=False)
        self.files.append(path)
        return name

    def png(self, fig, name: str) -> str:
        name = self.prefix + name
        self.files.append(plots.save(fig, self.out / name))
        return name


def _optimum_text(bound: str, best: float, value: float, lo: float, hi: float, far: bool, what: str,
                  floor: float | None = None, plateau: float = math.nan) -> str:
    """"best tested c 0.03; fitted c* 0.028 [0.015, 0.06]" or a one-sided bound. floor: the smallest value
    `what` can take (0 for dropout): a best tested value there is an answer, not a bound. plateau: the largest
    tested value within the plateau's standard error of the minimum (stats.curve_minimum), when it is flat."""
    text = _optimum_core(bound, best, value, lo, hi, far, what, floor)
    if plateau is not None and np.isfinite(plateau):
        text += (f"; the curve is flat around its minimum: the largest {what} within the plateau's standard error "
                 f"of the lowest mean is {fmt(plateau)}")
    return text


def _optimum_core(bound, best, value, lo, hi, far, what, floor) -> str:
    if bound == BELOW and floor is not None and best == floor:
        return (f"{what} {fmt(best)} is best at this budget (it is the smallest possible {what}, so the optimum "
                f"cannot lie below it; the next tested value is {fmt(hi)})")
    if bound == BELOW:
        return (f"{what}* < {fmt(hi)}: the best tested {what} ({fmt(best)}) is the smallest searched value, so "
                "the optimum may lie below the range (a one-sided bound)")
    if bound == UNLOCATED:
        return f"no {what}* located: values at both ends of the range tie with the best ({fmt(best)})"
    if bound != TWO_SIDED:
        return (f"{what}* > {fmt(lo)}: the best tested {what} ({fmt(best)}) is the largest searched value, so the "
                "optimum may lie above the range (a one-sided bound)")
    text = f"best tested {what} {fmt(best)}, fitted {what}* {fmt_ci(value, lo, hi)}"
    if far:
        text += (f" (the fitted vertex lies in an untested gap far from the best run: trust the best tested {what} "
                 "and the interval, not the vertex)")
    return text


def _detectable_text(detectable: float) -> str:
    """"; cannot detect effects below 12 FD at the compute spent" ("" when the spread was not measured)."""
    if detectable is None or not np.isfinite(detectable):
        return ""
    return f"; cannot detect effects below {fmt(detectable)} FD at the compute spent"


def c_scaling_section(rep: Report, trials, metric, n_boot, level, seed) -> None:
    try:
        cs = estimate_c_star(trials, metric=metric, n_boot=n_boot, level=level, seed=seed)
    except SchemaError as err:
        rep.unanswered.append(f"Q1 (c scaling): {err}")
        return
    per = cs.per_dataset
    if per.empty:
        rep.unanswered.append("Q1 (c scaling): no c-scaling experiment found (no data set has completed "
                              "Pseudo-Huber runs at 3 or more values of loss.huber_c)")
        return
    rep.results["c_scaling"] = cs
    parts = []
    for _, r in per.iterrows():
        spans = r["bound"] == TWO_SIDED and r["c_lo"] <= r["c_min"] and r["c_hi"] >= r["c_max"]
        extra = [] if r["bound"] == TWO_SIDED else ["the optimum is not bracketed by tested values"]
        text = (f"on {r['dataset']} (d={int(r['dim'])}, {_runs(r['num_runs'], r['num_c'], r['num_seeds'], 'c')}) "
                + _optimum_text(r["bound"], r["best_c"], r["c_star"], r["c_lo"], r["c_hi"], r["vertex_far"], "c",
                                plateau=r.get("c_plateau", math.nan)))
        if r["diverged_levels"]:
            text += f"; diverged: {r['diverged_levels']}"
        if r["left_out"]:
            text += f"; left out: {r['left_out']}"
        parts.append((text, caveats(int(r["num_seeds"]), r["budgets"], spans, extra)))
    sentence = "Q1, the best Pseudo-Huber c: " + joined(parts)
    budgets = ",".join(sorted(set(",".join(per["budgets"]).split(",")) - {""}))
    seeds = int(per["num_seeds"].min())
    if cs.fit is not None:
        f = cs.fit
        law = f"fitting c* = a d^b across {f.num_datasets} data sets gives "
        if np.isfinite(f.b_lo):
            inside = "contains" if f.b_contains_paper else "excludes"
            how = (f"Student t over the data sets' scatter about the law, {int(f.df)} df" if f.method == "scatter" else
                   f"fitted jointly from the {f.num_runs} runs near the optima, one curve shifted by b ln d, "
                   f"{int(f.df)} df" + ("; widened to the data sets' scatter about the law" if "scatter" in f.method
                                        else "") + ("; widened to the slopes the two c* brackets allow"
                                                    if "brackets" in f.method else "")
                   + ("; two data sets cannot show scatter about the law" if f.num_datasets < 3 else ""))
            law += (f"b = {fmt_ci(f.b, f.b_lo, f.b_hi)} and a = {fmt_ci(f.a, f.a_lo, f.a_hi)} ({how}), whose "
                    f"interval {inside} the paper's b = {PAPER_B} (a = 0.00054)")
            reasons = caveats(seeds, budgets)
        else:
            law += f"b = {fmt(f.b)} with no interval (n < 3 data sets: two points always lie on a line)"
            reasons = caveats(seeds, budgets, extra=["only two data sets"])
        if f.excluded:
            law += f"; kept out of the fit (one-sided c*): {', '.join(f.excluded)}"
        sentence += "; " + labelled(law, reasons) + "."
    else:
        sentence += "."
        located = int((per["bound"] == TWO_SIDED).sum())
        rep.unanswered.append("Q1, exponent b of c* = a d^b: needs c* located on both sides on two or more data sets "
                              f"of different dimension; found {located}")
    rep.answers.append(sentence)
    fit_df = pd.DataFrame([] if cs.fit is None else [{
        "a": cs.fit.a, "a_lo": cs.fit.a_lo, "a_hi": cs.fit.a_hi, "b": cs.fit.b, "b_lo": cs.fit.b_lo,
        "b_hi": cs.fit.b_hi, "df": cs.fit.df, "residual_sd": cs.fit.residual_sd, "num_datasets": cs.fit.num_datasets,
        "method": cs.fit.method, "num_runs": cs.fit.num_runs,
        "excluded": ", ".join(cs.fit.excluded), "b_contains_0.5": cs.fit.b_contains_paper}])
    files = [rep.csv(per, "c_scaling_per_dataset.csv"), rep.csv(cs.curves, "c_scaling_curves.csv"),
             rep.csv(fit_df, "c_scaling_fit.csv")]
    png = rep.png(plots.plot_c_scaling(cs, level=level), "c_scaling.png")
    rep.sections.append(
        "## Q1: best Pseudo-Huber c against dimension\n\n"
        f"Per data set the best tested c is the lowest mean {metric} among values where no run diverged; it needs "
        "tested values on both sides, else c* is a one-sided bound kept out of the power law. c* is the vertex of "
        f"a local quadratic in log c around it; its interval is the hull of the vertex's bootstrap interval "
        f"({n_boot} resamples of the runs at each c, or of all runs when most values of c have one) and the tested neighbours of the best value (which bracket the optimum "
        "of any curve with one minimum). b and a are fitted jointly from every run in those local windows (one curve "
        "per data set, its vertex at ln a + b ln d, a height per seed; column `method`), with Student's t over the "
        "runs' residual degrees of freedom; with three or more data sets the interval is widened to the one from "
        "their c*'s scatter about the line when that is wider.\n\n"
        + _md_table(per) + "\n" + ("" if fit_df.empty else _md_table(fit_df) + "\n")
        + f"![c scaling]({png})\n\nTables: " + ", ".join(files) + "\n")


def dropout_section(rep: Report, trials, metric, n_boot, level, seed) -> None:
    try:
        dr = analyze_dropout(trials, metric=metric, n_boot=n_boot, level=level, seed=seed)
    except SchemaError as err:
        rep.unanswered.append(f"Q2 (dropout): {err}")
        return
    if dr.best.empty:
        rates = ""
        if "network.dropout" in trials.columns and "loss.objective" in trials.columns:
            done = trials[trials["status"].astype(str) == COMPLETED]
            counts = done.groupby(done["loss.objective"].astype(str))["network.dropout"].nunique()
            rates = "; found " + ", ".join(f"{k}: {v}" for k, v in counts.items()) if len(counts) else ""
        rep.unanswered.append("Q2 (dropout): no dropout experiment found (no objective has completed runs at 3 or "
                              f"more values of network.dropout{rates})")
        return
    rep.results["dropout"] = dr
    parts = []
    for _, r in dr.best.iterrows():
        spans = r["bound"] == TWO_SIDED and r["lo"] <= r["p_min"] and r["hi"] >= r["p_max"]
        extra = [] if r["bound"] == TWO_SIDED else ["the optimum is not bracketed by tested values"]
        own = f" with {r['own_keys']}" if r["own_keys"] else ""
        text = (f"for the {r['objective']} objective{own} on {r['dataset']} "
                f"({_runs(r['num_runs'], r['num_rates'], r['num_seeds'], 'dropout')}) "
                + _optimum_text(r["bound"], r["best_tested"], r["best_dropout"], r["lo"], r["hi"], r["vertex_far"],
                                "dropout", floor=0.0))
        if r["diverged_levels"]:
            text += f"; diverged: {r['diverged_levels']}"
        parts.append((text, caveats(int(r["num_seeds"]), r["budgets"], spans, extra)))
    sentence = "Q2, the best dropout: " + joined(parts)
    budgets = ",".join(sorted(set(",".join(dr.best["budgets"]).split(",")) - {""}))
    for _, r in dr.difference.iterrows():
        spans = r["lo"] <= -1 or r["hi"] >= 1
        sentence += "; " + labelled(f"consistency minus diffusion on {r['dataset']}: "
                                    f"{fmt_ci(r['difference'], r['lo'], r['hi'])} ({r['num_seeds']} seeds)",
                                    caveats(int(r["num_seeds"]), budgets, spans))
    objectives = set(dr.best["objective"])
    if not {"consistency", "diffusion"} <= objectives:
        rep.unanswered.append("Q2, consistency against diffusion: runs of only one objective "
                              f"({', '.join(sorted(objectives))}) vary network.dropout at 3 or more rates")
    elif dr.difference.empty:
        rep.unanswered.append("Q2, consistency against diffusion: the best dropout of an objective is a one-sided "
                              "bound, so their difference has no interval")
    ev = dr.evidence
    why = []
    for (dataset, objective), t in dr.trends.groupby(["dataset", "objective"], sort=False):
        t = t.set_index("column")
        bits = []
        if "gap" in t.index:
            g = t.loc["gap"]
            bits.append(f"held-out minus train loss {fmt_ci(g['slope_per_0.1'], g['lo'], g['hi'])}")
        if "nn_ratio" in t.index:
            g = t.loc["nn_ratio"]
            bits.append(f"NN-distance ratio {fmt_ci(g['slope_per_0.1'], g['lo'], g['hi'])}")
        why.append(f"{objective} on {dataset} ({int(t['num_runs'].iloc[0])} runs): " + ", ".join(bits))
    if why:
        sentence += ". Evidence on why, change per +0.1 dropout: " + "; ".join(why)
    sentence += "."
    rep.answers.append(sentence)
    files = [rep.csv(dr.best, "dropout_best.csv"), rep.csv(dr.difference, "dropout_difference.csv"),
             rep.csv(ev, "dropout_evidence.csv"), rep.csv(dr.trends, "dropout_trends.csv")]
    png = rep.png(plots.plot_dropout(dr, level=level), "dropout.png")
    rep.sections.append(
        "## Q2: dropout for the consistency and the diffusion objective\n\n"
        "Best rate: as for c (best tested rate among rates without divergence, tested rates on both sides, vertex "
        "of a local quadratic, interval = hull of the vertex's bootstrap interval and the tested neighbours). Keys "
        "that take one value per objective (own_keys, e.g. the diffusion strata's loss.p_mean/p_std) travel with "
        "the objective. Gap = final_loss_heldout - final_loss_train; NN ratio = final_nn_dist / "
        "final_nn_dist_ref (< 1: samples sit closer to training images than held-out images do).\n\n"
        + _md_table(dr.best) + "\n" + _md_table(dr.difference) + "\n" + _md_table(dr.trends) + "\n"
        + _md_table(ev) + "\n"
        + f"![dropout]({png})\n\nTables: " + ", ".join(files) + "\n")


def curriculum_section(rep: Report, trials, evals, n_boot, level, seed) -> None:
    if evals.empty:
        rep.unanswered.append("Q3 (curricula): no evals.parquet with evaluations found")
        return
    try:
        cr = rank_curricula(trials, evals, metric="fd", n_boot=n_boot, level=level, seed=seed)
        pooled = False
        if not cr.ranking.empty and cr.ranking["num_seeds"].median() < 2:
            # A random search samples s0, s1 with the shape: one run per curriculum, so rank shapes instead
            # (when that pools runs at all).
            by_shape = rank_curricula(trials, evals, metric="fd", n_boot=n_boot, level=level, seed=seed,
                                      by_shape=True)
            if by_shape.ranking["num_seeds"].median() > cr.ranking["num_seeds"].median():
                cr, pooled = by_shape, True
    except SchemaError as err:
        rep.unanswered.append(f"Q3 (curricula): {err}")
        return
    final = final_ranking(cr.ranking)
    if final.empty:
        rep.unanswered.append("Q3 (curricula): no curriculum experiment found (no configuration was run with two "
                              "or more curricula)")
        return
    rep.results["curriculum"] = final
    parts = []
    for (dataset, _), t in final.groupby(["dataset", "context"], sort=False):
        best = t.iloc[0]
        kind = "curriculum shapes (pooled over the sampled s0, s1)" if pooled else "curricula"
        figures = (f"FD {fmt_ci(best['mean'], best['lo'], best['hi'], n=best['num_seeds'])}, P(best) = "
                   f"{fmt(best['p_best'], 2)}, {best['num_seeds']} {'run' if pooled else 'seed'}"
                   f"{'s' if best['num_seeds'] != 1 else ''}")
        gp = best.get("global_p", math.nan)
        test_name = "seed-blocked F" if best.get("seed_blocked", False) else "one-way F"
        rp = best.get("runner_up_p", math.nan)
        second = t.iloc[1]["curriculum"] if len(t) > 1 else ""
        if np.isfinite(gp) and gp < 1.0 - level and np.isfinite(rp) and rp < 1.0 - level:
            text = (f"on {dataset} at {best['images_seen']:.3g} images the {len(t)} {kind} differ ({test_name} = "
                    f"{fmt(best['global_f'])}, p = {fmt(gp, 2)}) and the best is {best['curriculum']} ({figures}; "
                    f"against the runner-up {second}: p = {fmt(rp, 2)})")
        elif np.isfinite(gp) and gp < 1.0 - level:
            text = (f"on {dataset} at {best['images_seen']:.3g} images the {len(t)} {kind} differ ({test_name} = "
                    f"{fmt(best['global_f'])}, p = {fmt(gp, 2)}) but no best is named: the lowest mean, "
                    f"{best['curriculum']} ({figures}), does not differ detectably from the runner-up {second} "
                    f"(p = {fmt(rp, 2)}{_detectable_text(best.get('detectable', math.nan))})")
        else:
            why = (f"they do not differ detectably ({test_name} = {fmt(best['global_f'])}, p = {fmt(gp, 2)}"
                   f"{_detectable_text(best.get('detectable', math.nan))})" if np.isfinite(gp)
                   else "no test of a difference is possible (fewer than 2 seeds per curriculum)")
            text = (f"on {dataset} at {best['images_seen']:.3g} images no best of the {len(t)} {kind} is named: "
                    f"{why}; the lowest mean is {best['curriculum']} ({figures})")
        tied = t[t["tied_best"] & (t["curriculum"] != best["curriculum"])]
        if len(tied):
            text += (f", tied within the FD's standard error ({fmt(best['fd_se'])}) with "
                     + ", ".join(tied["curriculum"]))
        if t["num_pruned"].sum():
            text += f" ({int(t['num_pruned'].sum())} pruned runs ranked through their evaluations)"
        exp = t[t["curriculum"].str.split().str[0] == PAPER_SHAPE]
        for _, e in exp.iterrows():
            if e["curriculum"] != best["curriculum"]:
                text += (f"; {e['curriculum']} ranks {e['rank']} (rank interval [{fmt(e['rank_lo'])}, "
                         f"{fmt(e['rank_hi'])}], FD {fmt_ci(e['mean'], e['lo'], e['hi'], n=e['num_seeds'])}, "
                         f"{e['num_seeds']} {'run' if pooled else 'seed'}{'s' if e['num_seeds'] != 1 else ''})")
        if exp.empty:
            text += " (the exponential curriculum was not run there)"
        budgets = ""
        if "budget" in trials.columns:
            budgets = ",".join(sorted(set(trials.loc[trials["dataset"] == dataset, "budget"].dropna().astype(str))))
        parts.append((text, caveats(int(t["num_seeds"].min()), budgets)))
    rep.answers.append("Q3: " + joined(parts) + ".")
    files = [rep.csv(cr.ranking, "curriculum_ranking.csv")]
    png = rep.png(plots.plot_curricula(cr, level=level), "curricula.png")
    rep.sections.append(
        "## Q3: curricula at equal compute\n\n"
        "FD of each run (pruned runs included, through their evaluations) interpolated at compute budgets every run "
        "reached (images seen), mean over seeds with Student-t intervals; rank 1 = lowest FD; rank interval and "
        "P(best) over draws of each mean (from the seed-blocked model when every curriculum ran the same seeds: "
        "seed_blocked); tied_best: within the FD's standard error of the best. A best curriculum is named only when "
        "the global test of \"all equal\" (global_f, global_p: seed-blocked F test, else one-way) rejects at the "
        "report's level and the lowest mean beats the runner-up (runner_up_p); detectable: the smallest difference "
        "between two curricula the design detects with 80% power.\n\n"
        + _md_table(final) + "\n" + f"![curricula]({png})\n\nTables: " + ", ".join(files) + "\n")


def ablation_section(rep: Report, table: pd.DataFrame, min_seeds: int, family: int) -> None:
    """table: analyze_ablations' output, corrected over the report's `family` of verdicts (the comparisons
    with enough seeds for a verdict; the correction divides by at least 1)."""
    smoke = table["budgets"].astype(str).str.split(",").map(lambda b: SMOKE in b)
    decided = table["verdict"].isin([REPRODUCED, CONTRADICTED])
    table = table.copy()
    table.loc[smoke & decided, "reason"] = ("smoke budget: a pipeline check, too short to rank models (interval "
                                            "alone: " + table.loc[smoke & decided, "verdict"] + ")")
    table.loc[smoke & decided, "verdict"] = INCONCLUSIVE
    tested = table[table["verdict"] != NOT_RUN]
    missing = sorted(set(table.loc[table["verdict"] == NOT_RUN, "ablation"]) - set(tested["ablation"]))
    if missing:
        rep.unanswered.append("ablations not run at matching settings: " + ", ".join(missing))
    if tested.empty:
        return
    parts = []
    for _, r in tested.iterrows():
        seeds = (f"{r['num_paper']} vs {r['num_alt']} seeds" if r["num_cells"] == 1 else
                 f"{r['num_paper']} vs {r['num_alt']} runs (seeds) over {r['num_cells']} matched settings")
        verdict = r["verdict"]
        if verdict == INCONCLUSIVE:
            # Beside an open verdict, what it could have found; a smoke budget's verdict was not open.
            open_ = not str(r["reason"]).startswith("smoke budget")
            verdict += f" ({r['reason']}{_detectable_text(r.get('detectable', math.nan) if open_ else math.nan)})"
        if not r.get("claim", True):
            verdict += " [not a paper claim: outside the correction's family]"
        pairing = ", paired over seeds" if r["paired"] else ""
        smallest = min(r["_smallest"]) if isinstance(r.get("_smallest"), tuple) else None
        parts.append(f"{r['ablation']} ({r['paper']} - {r['alternative']}): {verdict}, "
                     f"FD difference {fmt_ci(r['effect'], r['lo'], r['hi'], n=smallest)}, {seeds}{pairing}")
    rep.answers.append(f"Ablations (FD of the paper's choice minus the alternative; {family} paper claim"
                       f"{'s' if family != 1 else ''} in the family, Holm-corrected): " + "; ".join(parts) + ".")
    table = public(table)
    files = [rep.csv(table, "ablations.csv")]
    png = rep.png(plots.plot_ablations(table), "ablations.png")
    rep.sections.append(
        "## Ablations of the paper's choices\n\n"
        "Effect = mean FD of the paper's choice minus the alternative, between runs that agree on every other "
        "config column; Student-t interval, paired over seeds where both arms ran the same seeds and their seed "
        "correlation (column `correlation`) exceeds the threshold above which pairing gives the narrower interval "
        "(Welch's otherwise; docs/ANALYSIS.md). "
        f"The family is the report's {family} paper claim{'s' if family != 1 else ''} (column `claim`; the "
        "equal-compute view re-reads the same claims and does not enlarge it), Holm-corrected: the claim with the "
        "j-th smallest p is tested at level 1 - 0.05/(m - j + 1) (column `level`), p_adj is Holm's adjusted p; "
        "lines that are not a paper claim get the strictest level 1 - 0.05/m. `detectable`: the smallest effect "
        "each line's test detects with 80% power at the seeds spent. Reproduced: interval below 0; "
        f"contradicted: above 0; inconclusive: contains 0, fewer than {min_seeds} seeds per arm, "
        f"fewer than {MIN_SEEDS} (no interval), |effect| within the FD's standard error, a winning arm that lost runs "
        "to divergence (paper_diverged, alt_diverged), or a smoke budget.\n\n"
        + _md_table(table) + "\n" + f"![ablations]({png})\n\nTables: " + ", ".join(files) + "\n")


def searched_section(rep: Report, trials, metric, n_boot, level, seed) -> None:
    """The metric against every searched key of every experiment (any space, a user's own included)."""
    table = metric_by_key(trials, metric=metric, n_boot=n_boot, level=level, seed=seed)
    best = best_runs(trials, metric)
    if table.empty and best.empty:
        return
    files = [rep.csv(table, "searched_keys.csv"), rep.csv(best, "best_runs.csv")]
    png = rep.png(plots.plot_searched(trials, table, metric), "searched_keys.png") if not table.empty else None
    rep.sections.append(
        "## Metric against each searched key\n\n"
        f"For every experiment and stratum (each stratum is its own search, e.g. one objective), each key it "
        f"searched (the plan's params; without a plan, each config key that varies): mean `{metric}` of the completed "
        "runs per value (numeric keys with many values in quantile bins) with its Student-t interval over runs, "
        "diverged and other unfinished runs counted, and the best run.\n\n"
        + _md_table(best) + "\n" + _md_table(table, max_rows=80) + "\n"
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
    rep.sections.append(
        "## Which searched key mattered: parameter importances\n\n"
        "Per experiment and stratum the runs are rebuilt as an Optuna study: one trial per configuration, its "
        f"value the mean `{metric}` over its completed seeds, FAIL when a seed diverged or errored, PRUNED when "
        "the scheduler stopped it; distributions from the searched params of experiment.json's plan (inferred "
        "from the tables when it has none). Importance is Optuna's fANOVA: the share of the variance of the "
        "metric over the completed configurations that each key explains (the shares sum to 1; one key gets 1 by "
        f"construction). It needs {MIN_COMPLETED} or more completed configurations, and says nothing about which "
        "value is best: see the metric against each searched key.\n\n"
        + "\n".join(lines) + "\n\n" + _md_table(table, max_rows=80) + "\n"
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
        rep.sections.append(
            f"## Pareto front: {name}\n\n"
            f"A multi-objective search over {wanted}. Each configuration whose seeds all completed is a point (the "
            "mean over its seeds of each final value); it is on the front when no other configuration of the same "
            "stratum is at least as good on every objective and better on one.\n\n"
            + "\n".join(lines) + "\n\n" + _md_table(table, max_rows=60) + "\n"
            + f"![pareto front]({png})\n\nTables: " + ", ".join(files) + "\n")


def grids_section(rep: Report, trials, metric) -> None:
    """Sample grids of the best and the worst configuration of each experiment and stratum, copied into the
    report folder and linked relatively, so the folder can be moved."""
    picks = best_and_worst(trials, metric)
    if picks.empty:
        return
    if RUN_DIR not in trials.columns or trials[RUN_DIR].isna().all():
        rep.sections.append(
            "## Samples of the best and the worst configuration\n\nNo sample grids are available: trials.parquet "
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
    rep.sections.append(
        "## Samples of the best and the worst configuration\n\n"
        f"Per experiment and stratum, the configurations with the lowest and the highest mean `{metric}` over "
        "their completed seeds (configurations with a diverged or errored seed left out); each shows the final "
        "sample grid (the newest evaluation's; its panels are named in the image) of its lowest completed "
        "seed, not of its best seed.\n\n" + "\n".join(blocks) + "\nTables: " + ", ".join(files) + "\n")


def compute_table(trials: pd.DataFrame) -> pd.DataFrame:
    """Per experiment and stratum: what its answers rest on (configurations, runs, seeds per configuration, steps
    per run, images trained, and the runs' own training wall time, summed over runs). A run is trained once:
    rows marked `reused` (copied from another experiment, tune/reuse.py) and later rows repeating a run_key
    already listed count under "reused runs", not in the images and hours trained."""
    if trials.empty:
        return pd.DataFrame()
    t = trials.copy()
    reused = t["reused"].fillna(False).astype(bool) if "reused" in t.columns else pd.Series(False, index=t.index)
    if "run_key" in t.columns:
        keys = t["run_key"].where((t["status"].astype(str) != "errored") & ~reused)
        reused |= keys.notna() & keys.duplicated(keep="first")
    t["_reused"] = reused
    t.loc[reused, ["images_seen", "wall_s"]] = 0
    t["_images"] = pd.to_numeric(t.get("images_seen"), errors="coerce").fillna(0)
    t["_wall"] = pd.to_numeric(t.get("wall_s"), errors="coerce").fillna(0)
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
    rep.sections.append(
        "## Compute behind each answer\n\nPer experiment and stratum: the configurations and runs its answers rest "
        "on, the seeds each configuration completed, the images trained (pruned runs included) and the runs' own "
        "training wall time summed over runs (concurrent runs overlap, so this exceeds the search's wall time).\n\n"
        + _md_table(table) + f"\nTable: {name}\n")


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


def _optimum_cells(bound: str, best: float, value: float, lo: float, hi: float, what: str) -> tuple[str, str]:
    """(answer, interval) cells of a located optimum or a one-sided bound."""
    if bound == BELOW:
        return f"{what}* < {fmt(hi)} (below the searched range)", f"(-, {fmt(hi)}]"
    if bound == ABOVE:
        return f"{what}* > {fmt(lo)} (above the searched range)", f"[{fmt(lo)}, -)"
    if bound == TWO_SIDED:
        return f"{what}* {fmt(value)} (best tested {fmt(best)})", f"[{fmt(lo)}, {fmt(hi)}]"
    return f"no {what}* located (best tested {fmt(best)})", "-"


def _verdict(answer: str, row, low: str, high: str, lo: str, hi: str) -> str:
    """`answer` prefixed "inconclusive: " for the sections' reasons (caveats): few seeds, a smoke budget, a
    one-sided bound, an interval spanning the searched range."""
    spans = row["bound"] == TWO_SIDED and row[lo] <= row[low] and row[hi] >= row[high]
    reasons = caveats(int(row["num_seeds"]), row.get("budgets", ""), spans,
                      [row["bound"] != TWO_SIDED and "not bracketed"])
    return f"inconclusive: {answer}" if reasons else answer


def answer_rows(rep: Report, ablations: pd.DataFrame, metric: str) -> list[dict]:
    """The table that opens the report, one row per answer, built from what the sections computed (not from
    their prose): question or claim, answer or verdict, interval, seeds. A space that asks none of the
    project's questions gets its best run per experiment and stratum."""
    rows = []
    cs = rep.results.get("c_scaling")
    if cs is not None:
        for _, r in cs.per_dataset.iterrows():
            answer, interval = _optimum_cells(r["bound"], r["best_c"], r["c_star"], r["c_lo"], r["c_hi"], "c")
            answer = _verdict(answer, r, "c_min", "c_max", "c_lo", "c_hi")
            rows.append({"question or claim": f"Q1 best Pseudo-Huber c, {r['dataset']} (d={int(r['dim'])})",
                         "answer or verdict": answer, "interval": interval, "seeds": int(r["num_seeds"])})
        fit = cs.fit
        if fit is not None:
            n = int(getattr(fit, "num_datasets", 0) or 0)
            has = np.isfinite(fit.b_lo) and np.isfinite(fit.b_hi)
            rows.append({"question or claim": "Q1 c* = a d^b across data sets (paper: b = 0.5)",
                         "answer or verdict": (f"b = {fmt(fit.b)}" if has else
                                               f"no answer: {n} data set(s), a 2-parameter fit needs 3"),
                         "interval": f"[{fmt(fit.b_lo)}, {fmt(fit.b_hi)}]" if has else "-",
                         "seeds": f"{n} data sets"})
    dr = rep.results.get("dropout")
    if dr is not None:
        for _, r in dr.best.iterrows():
            answer, interval = _optimum_cells(r["bound"], r["best_tested"], r["best_dropout"], r["lo"], r["hi"],
                                              "dropout")
            answer = _verdict(answer, r, "p_min", "p_max", "lo", "hi")
            rows.append({"question or claim": f"Q2 best dropout, {r['objective']} objective, {r['dataset']}",
                         "answer or verdict": answer, "interval": interval, "seeds": int(r["num_seeds"])})
    final = rep.results.get("curriculum")
    if final is not None:
        for (dataset, _), table in final.groupby(["dataset", "context"], sort=True):
            top = table.iloc[0]
            tied = int(table["tied_best"].sum()) if "tied_best" in table else 1
            rows.append({"question or claim": f"Q3 best curriculum at equal compute, {dataset}",
                         "answer or verdict": f"{top['curriculum']} ({metric_name('fd')} {fmt(top['mean'])})"
                         + (f", tied with {tied - 1} other(s)" if tied > 1 else ""),
                         "interval": f"[{fmt(top['lo'])}, {fmt(top['hi'])}]", "seeds": int(top["num_seeds"])})
    if ablations is not None and not ablations.empty:
        for _, r in ablations[ablations["verdict"] != NOT_RUN].iterrows():
            level = f" ({100 * r['level']:.3g}%)" if "level" in r and np.isfinite(r["level"]) else ""
            rows.append({"question or claim": f"{r['ablation']}: {r['paper']} - {r['alternative']}",
                         "answer or verdict": f"{r['verdict']}, FD difference {fmt(r['effect'])}",
                         "interval": f"[{fmt(r['lo'])}, {fmt(r['hi'])}]{level}",
                         "seeds": f"{int(r['num_paper'])} vs {int(r['num_alt'])}"})
    if not rows and not rep.best.empty:
        for _, r in rep.best.iterrows():
            rows.append({"question or claim": f"best run of {r['experiment']} / {r['stratum']}",
                         "answer or verdict": f"{r['searched'] or 'its config'}: {metric} {fmt(r[metric])}",
                         "interval": "-", "seeds": f"1 (seed {r['seed']})"})
    return rows


def metric_name(metric: str) -> str:
    return metric.replace("final_", "")


def write_report(paths, out=None, metric: str = "final_fd", n_boot: int = N_BOOT, level: float = LEVEL,
                 seed: int = 0, min_seeds: int = 3, journal: bool = True) -> Path:
    """Analyse every experiment at or below `paths` and write OUT/report.md, PNGs and CSVs.

    out defaults to PATHS[0]/report. With `journal`, each experiment folder also gets an Optuna journal file
    of its rebuilt studies (analysis/importance.py). Returns the path of report.md.
    """
    from tune.store import FolderSync, Store, experiment_cache, is_uri, report_copy

    paths = [p for p in ([paths] if isinstance(paths, (str, Path)) else paths)]
    # Experiments in storage (s3://...) are read from a local copy; what the report writes goes back there.
    copies = {str(p): report_copy(str(p)) for p in paths if is_uri(p)}
    paths = [copies[str(p)].local if str(p) in copies else Path(p) for p in paths]
    out_sync = None
    if out is not None and is_uri(out):
        out_sync = FolderSync(Store(str(out)), "", experiment_cache(str(out)))
        out = out_sync.local
    results = load_results(paths)
    out = Path(out) if out is not None else paths[0] / "report"
    out.mkdir(parents=True, exist_ok=True)
    rep = Report(out)
    trials = results.trials
    if metric not in trials.columns:
        raise SchemaError(f"--metric {metric!r} is not a column of trials.parquet; numeric columns: "
                          + ", ".join(c for c in trials.columns if c.startswith("final_") or c == "best_fd"))
    counts = status_counts(trials)
    view = None
    if counts[PRUNED] and not results.evals.empty:
        # A scheduler keeps the promising runs, so finished runs alone are a selected sample: repeat the
        # analyses at the largest compute every run reached, pruned runs included.
        view = at_common_compute(trials, results.evals)
    # One family of verdicts per report: the ablations of both views share the correction.
    tables = [analyze_ablations(trials, metric=metric, level=level, min_seeds=min_seeds, seed=seed)]
    if view is not None:
        tables.append(analyze_ablations(view, metric="fd_at_compute", level=level, min_seeds=min_seeds, seed=seed))
    # The family is the paper claims: the equal-compute view tests the same claims again and does not enlarge it.
    family = max(eligible(t) for t in tables)
    tables = [apply_correction(t, max(family, 1), level) for t in tables]

    c_scaling_section(rep, trials, metric, n_boot, level, seed)
    dropout_section(rep, trials, metric, n_boot, level, seed)
    curriculum_section(rep, trials, results.evals, n_boot, level, seed)
    ablation_section(rep, tables[0], min_seeds, family)
    if view is not None:
        sub = Report(out, prefix="compute_")
        c_scaling_section(sub, view, "fd_at_compute", n_boot, level, seed)
        dropout_section(sub, view, "fd_at_compute", n_boot, level, seed)
        ablation_section(sub, tables[1], min_seeds, family)
        budgets = ", ".join(f"{int(b)}" for b in sorted(view["budget_images"].dropna().unique()))
        label = f"At equal compute with the {counts[PRUNED]} pruned runs included ({budgets} images): "
        answered = {a.split(",")[0].split(" (")[0].split(":")[0] for a in sub.answers}
        rep.unanswered = [u for u in rep.unanswered
                          if u in sub.unanswered or not any(u.startswith(tag) for tag in answered)]
        rep.answers += [label + a for a in sub.answers]
        rep.sections += [s.replace("## ", "## Equal compute, pruned runs included - ", 1) for s in sub.sections]
        rep.files += sub.files
    compute_section(rep, trials)
    searched_section(rep, trials, metric, n_boot, level, seed)
    importance_section(rep, trials, metric, seed, write_journal=journal)
    pareto_section(rep, trials)
    grids_section(rep, trials, metric)
    counts_df = pd.DataFrame([{"status": k, "runs": v} for k, v in counts.items()])
    by_experiment = trials.groupby(["experiment", "status"]).size().unstack(fill_value=0).reset_index()
    rep.csv(by_experiment, "runs_by_status.csv")
    # A user's own space: no answer, and none of the questions' keys varies in its runs (it asks none of them).
    question_keys = ["loss.huber_c", "network.dropout", "curriculum.shape", "curriculum.s0", "curriculum.s1",
                     *(tables[0]["key"].dropna().astype(str) if "key" in tables[0] else [])]
    own_space = not rep.answers and not any(
        trials[k].nunique(dropna=False) > 1 for k in set(question_keys) if k in trials.columns)
    if rep.answers:
        first = " ".join(rep.answers)
    else:  # a user's own space: its table of answers is its best runs; no word on questions it does not ask
        first = f"The metric against each key this search varied is below (`{metric}`, lower is better)."
    if rep.unanswered and not own_space:
        first += " The tables cannot answer: " + "; ".join(rep.unanswered) + "."
    verdict_line = budget_line(trials, min_seeds)
    if verdict_line:
        first = verdict_line + " " + first
    level_pct = f"{100 * level:.0f}%"
    repeated = trials.attrs.get("repeated_rows", 0)
    answers = answer_rows(rep, tables[0], metric)
    text = [
        "# iCT experiment report\n",
        *([_md_table(pd.DataFrame(answers))] if answers else []),
        first + "\n",
        f"Intervals are {level_pct} Student-t intervals over seeds (none below {MIN_SEEDS} seeds: \"n < "
        f"{MIN_SEEDS}\"); c* and the best dropout use the bootstrap ({n_boot} resamples) and the tested grid, see "
        f"their sections; ablation verdicts are Holm-corrected over the paper claims. The metric is `{metric}` "
        f"(lower is better). {len(trials)} runs from {len(results.experiments)} experiment folder(s): "
        + ", ".join(f"{v} {k}" for k, v in counts.items())
        + (f" ({repeated} repeated row{'s' if repeated != 1 else ''} of the same run dropped)" if repeated else "")
        + ". Only completed runs enter the estimates; diverged runs count per level, errored and pruned runs are "
        "counted here and left out" + (", except in the equal-compute sections, which take pruned runs at the "
                                       "largest compute every run of their experiment reached"
                                       if view is not None else "")
        + ".\n",
        _md_table(counts_df),
        # Relative to the report, so that a committed report names no machine's folders.
        "Experiments: " + ", ".join(f"`{os.path.relpath(p, out)}`" for p in results.experiments) + "\n",
        *rep.sections,
    ]
    path = out / "report.md"
    atomic_write_text(path, "\n".join(text))
    for sync in [*copies.values(), *([out_sync] if out_sync else [])]:
        sync.push()  # the report folder and the journals, back into storage
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="+",
                        help="experiment folders, or folders above them; a URI such as s3://BUCKET/PREFIX/NAME is "
                             "read from a local copy, and the report is stored back under it")
    parser.add_argument("--out", default=None, help="output folder or URI (default: FIRST_RESULTS_DIR/report)")
    parser.add_argument("--metric", default="final_fd", help="trials column to minimise (default final_fd)")
    parser.add_argument("--n-boot", type=int, default=N_BOOT, help="bootstrap resamples")
    parser.add_argument("--level", type=float, default=LEVEL, help="interval level in (0, 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    parser.add_argument("--min-seeds", type=int, default=3, help="seeds per arm before an ablation gets a verdict")
    parser.add_argument("--no-journal", action="store_true",
                        help=f"do not write {JOURNAL_FILE} (Optuna journal of the rebuilt studies) into each "
                             "experiment folder")
    args = parser.parse_args(argv)
    if not 0 < args.level < 1:
        parser.error(f"--level must be in (0, 1), got {args.level}")
    if args.n_boot < 10:
        parser.error(f"--n-boot must be at least 10, got {args.n_boot}")
    try:
        path = write_report(args.results, args.out, args.metric, args.n_boot, args.level, args.seed, args.min_seeds,
                            journal=not args.no_journal)
    except BadInput as err:
        return bad_input(err)
    print(f"report written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
