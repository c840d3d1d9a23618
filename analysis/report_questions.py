"""The report's question sections: Q1 (the best Pseudo-Huber c against dimension), Q2 (dropout for the
consistency and the diffusion objective), Q3 (curricula at equal compute) and the ablations of the paper's choices.

Each takes the tables (or a view of them), runs its analysis and adds to a `Report` (analysis/report_parts.py): an
answer tagged with the questions it answers, or a gap saying why the tables cannot answer, and its section; what
it computed goes to `rep.results` for the table of answers (analysis/report_answers.answer_rows).
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from analysis import plots
from analysis.ablations import CONTRADICTED, INCONCLUSIVE, NOT_RUN, REPRODUCED, public
from analysis.c_scaling import PAPER_B, estimate_c_star
from analysis.curriculum import PAPER_SHAPE, final_ranking, rank_curricula
from analysis.dropout import analyze_dropout
from analysis.load import SchemaError
from analysis.report_parts import (ABLATIONS, ABLATIONS_NOT_RUN, Q1, Q1_LAW, Q2, Q2_DIFFERENCE, Q3, SMOKE, Report,
                                   caveats, detectable_text, joined, labelled, md_table, optimum_text, runs_text)
from analysis.curve_minimum import TWO_SIDED
from analysis.stats import MIN_SEEDS, fmt, fmt_ci
from ict_core.datasets import dataset_family
from ict_core.records import COMPLETED


def c_scaling_section(rep: Report, trials, metric, n_boot, level, seed) -> None:
    try:
        cs = estimate_c_star(trials, metric=metric, n_boot=n_boot, level=level, seed=seed)
    except SchemaError as err:
        rep.gap(Q1, f"Q1 (c scaling): {err}")
        return
    per = cs.per_dataset
    if per.empty:
        rep.gap(Q1, "Q1 (c scaling): no c-scaling experiment found (no data set has completed "
                    "Pseudo-Huber runs at 3 or more values of loss.huber_c)")
        return
    rep.results["c_scaling"] = cs
    sentence = "Q1, the best Pseudo-Huber c: " + joined([_c_dataset_text(r) for _, r in per.iterrows()])
    if cs.fit is not None:
        sentence += "; " + _law_text(cs.fit, int(per["num_seeds"].min()), _budgets(per["budgets"]))
    for family, law in cs.family_fits.items():
        members = per[per["dataset"].map(dataset_family) == family]
        sentence += (f"; within one image family, the {family} ({', '.join(members['dataset'])}): "
                     + _law_text(law, int(members["num_seeds"].min()), _budgets(members["budgets"])))
    sentence += "."
    if cs.fit is None:
        located = int((per["bound"] == TWO_SIDED).sum())
        rep.gap(Q1_LAW, "Q1, exponent b of c* = a d^b: needs c* located on both sides on two or more data sets "
                        f"of different dimension; found {located}")
    rep.answer(sentence, Q1, *([Q1_LAW] if cs.fit is not None else []))
    _c_scaling_tables(rep, cs, metric, n_boot, level)


def _budgets(column: pd.Series) -> str:
    """The budgets of a table's comma-joined `budgets` column, each once, comma-joined."""
    return ",".join(sorted(set(",".join(column).split(",")) - {""}))


def _c_dataset_text(r) -> tuple[str, list[str]]:
    """Q1's answer for one data set (a row of estimate_c_star's per_dataset) and why it is inconclusive."""
    spans = r["bound"] == TWO_SIDED and r["c_lo"] <= r["c_min"] and r["c_hi"] >= r["c_max"]
    extra = [] if r["bound"] == TWO_SIDED else ["the optimum is not bracketed by tested values"]
    text = (f"on {r['dataset']} (d={int(r['dim'])}, {runs_text(r['num_runs'], r['num_c'], r['num_seeds'], 'c')}) "
            + optimum_text(r["bound"], r["best_c"], r["c_star"], r["c_lo"], r["c_hi"], r["vertex_far"], "c",
                           plateau=r.get("c_plateau", math.nan), edges=(r["c_min"], r["c_max"])))
    if r["diverged_levels"]:
        text += f"; diverged: {r['diverged_levels']}"
    if r["left_out"]:
        text += f"; left out: {r['left_out']}"
    return text, caveats(int(r["num_seeds"]), r["budgets"], spans, extra)


def _law_text(f, seeds: int, budgets: str) -> str:
    """Q1's answer on b and a of c* = a d^b (the fit of estimate_c_star), labelled when inconclusive."""
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
    return labelled(law, reasons)


def _c_scaling_tables(rep: Report, cs, metric: str, n_boot: int, level: float) -> None:
    """Q1's tables, plot and section."""
    per = cs.per_dataset
    laws = ([("all data sets", cs.fit)] if cs.fit is not None else []) + list(cs.family_fits.items())
    fit_df = pd.DataFrame([{
        "family": family, "a": f.a, "a_lo": f.a_lo, "a_hi": f.a_hi, "b": f.b, "b_lo": f.b_lo,
        "b_hi": f.b_hi, "df": f.df, "residual_sd": f.residual_sd, "num_datasets": f.num_datasets,
        "method": f.method, "num_runs": f.num_runs,
        "excluded": ", ".join(f.excluded), "b_contains_0.5": f.b_contains_paper} for family, f in laws])
    files = [rep.csv(per, "c_scaling_per_dataset.csv"), rep.csv(cs.curves, "c_scaling_curves.csv"),
             rep.csv(fit_df, "c_scaling_fit.csv")]
    png = rep.png(plots.plot_c_scaling(cs, level=level), "c_scaling.png")
    rep.section(
        "Q1: best Pseudo-Huber c against dimension",
        f"Per data set the best tested c is the lowest mean {metric} among values where no run diverged; it needs "
        "tested values on both sides, else c* is a one-sided bound kept out of the power law. c* is the vertex of "
        f"a local quadratic in log c around it; its interval is the hull of the vertex's bootstrap interval "
        f"({n_boot} resamples of the runs at each c, or of all runs when most values of c have one) and the tested neighbours of the best value (which bracket the optimum "
        "of any curve with one minimum). b and a are fitted jointly from every run in those local windows (one curve "
        "per data set, its vertex at ln a + b ln d, a height per seed; column `method`), with Student's t over the "
        "runs' residual degrees of freedom; with three or more data sets the interval is widened to the one from "
        "their c*'s scatter about the line when that is wider. When the tables hold several image families (data sets "
        "cut from the same images: ict_core/datasets.py), b is also fitted within each family that has c* located "
        "at two or more dimensions (column `family`), which is how Q1's ladder separates dimension from data set. "
        "Column `detectable`: the smallest difference between two tested values of c that the runs tell apart with "
        f"80% power at the {100 * level:.3g}% level (seed-blocked, no multiplicity correction).\n\n"
        + md_table(per) + "\n" + ("" if fit_df.empty else md_table(fit_df) + "\n")
        + f"![c scaling]({png})\n\nTables: " + ", ".join(files) + "\n")


def dropout_section(rep: Report, trials, metric, n_boot, level, seed) -> None:
    try:
        dr = analyze_dropout(trials, metric=metric, n_boot=n_boot, level=level, seed=seed)
    except SchemaError as err:
        rep.gap(Q2, f"Q2 (dropout): {err}")
        return
    if dr.best.empty:
        rep.gap(Q2, "Q2 (dropout): no dropout experiment found (no objective has completed runs at 3 or "
                    f"more values of network.dropout{_rates_found(trials)})")
        return
    rep.results["dropout"] = dr
    sentence = "Q2, the best dropout: " + joined([_dropout_text(r) for _, r in dr.best.iterrows()])
    budgets = _budgets(dr.best["budgets"])
    for _, r in dr.difference.iterrows():
        spans = r["lo"] <= -1 or r["hi"] >= 1
        sentence += "; " + labelled(f"consistency minus diffusion on {r['dataset']}: "
                                    f"{fmt_ci(r['difference'], r['lo'], r['hi'])} ({r['num_seeds']} seeds)",
                                    caveats(int(r["num_seeds"]), budgets, spans))
    objectives = set(dr.best["objective"])
    if not {"consistency", "diffusion"} <= objectives:
        rep.gap(Q2_DIFFERENCE, "Q2, consistency against diffusion: runs of only one objective "
                               f"({', '.join(sorted(objectives))}) vary network.dropout at 3 or more rates")
    elif dr.difference.empty:
        rep.gap(Q2_DIFFERENCE, "Q2, consistency against diffusion: the best dropout of an objective is a one-sided "
                               "bound, so their difference has no interval")
    why = _dropout_evidence(dr.trends)
    if why:
        sentence += ". Evidence on why, change per +0.1 dropout: " + "; ".join(why)
    sentence += "."
    rep.answer(sentence, Q2, *([Q2_DIFFERENCE] if not dr.difference.empty else []))
    _dropout_tables(rep, dr, level)


def _rates_found(trials: pd.DataFrame) -> str:
    """"; found consistency: 2, ...": how many dropout rates each objective completed ("" when unknown)."""
    if "network.dropout" not in trials.columns or "loss.objective" not in trials.columns:
        return ""
    done = trials[trials["status"].astype(str) == COMPLETED]
    counts = done.groupby(done["loss.objective"].astype(str))["network.dropout"].nunique()
    return "; found " + ", ".join(f"{k}: {v}" for k, v in counts.items()) if len(counts) else ""


def _dropout_text(r) -> tuple[str, list[str]]:
    """Q2's answer for one objective and data set (a row of analyze_dropout's best) and why it is inconclusive."""
    spans = r["bound"] == TWO_SIDED and r["lo"] <= r["p_min"] and r["hi"] >= r["p_max"]
    extra = [] if r["bound"] == TWO_SIDED else ["the optimum is not bracketed by tested values"]
    own = f" with {r['own_keys']}" if r["own_keys"] else ""
    text = (f"for the {r['objective']} objective{own} on {r['dataset']} "
            f"({runs_text(r['num_runs'], r['num_rates'], r['num_seeds'], 'dropout')}) "
            + optimum_text(r["bound"], r["best_tested"], r["best_dropout"], r["lo"], r["hi"], r["vertex_far"],
                           "dropout", floor=0.0, edges=(r["p_min"], r["p_max"])))
    if r["diverged_levels"]:
        text += f"; diverged: {r['diverged_levels']}"
    return text, caveats(int(r["num_seeds"]), r["budgets"], spans, extra)


def _dropout_evidence(trends: pd.DataFrame) -> list[str]:
    """Per data set and objective, how the generalisation gap and the NN-distance ratio change with dropout."""
    why = []
    for (dataset, objective), t in trends.groupby(["dataset", "objective"], sort=False):
        t = t.set_index("column")
        bits = []
        if "gap" in t.index:
            g = t.loc["gap"]
            bits.append(f"held-out minus train loss {fmt_ci(g['slope_per_0.1'], g['lo'], g['hi'])}")
        if "nn_ratio" in t.index:
            g = t.loc["nn_ratio"]
            bits.append(f"NN-distance ratio {fmt_ci(g['slope_per_0.1'], g['lo'], g['hi'])}")
        why.append(f"{objective} on {dataset} ({int(t['num_runs'].iloc[0])} runs): " + ", ".join(bits))
    return why


def _dropout_tables(rep: Report, dr, level: float) -> None:
    """Q2's tables, plot and section."""
    ev = dr.evidence
    files = [rep.csv(dr.best, "dropout_best.csv"), rep.csv(dr.difference, "dropout_difference.csv"),
             rep.csv(ev, "dropout_evidence.csv"), rep.csv(dr.trends, "dropout_trends.csv")]
    png = rep.png(plots.plot_dropout(dr, level=level), "dropout.png")
    rep.section(
        "Q2: dropout for the consistency and the diffusion objective",
        "Best rate: as for c (best tested rate among rates without divergence, tested rates on both sides, vertex "
        "of a local quadratic, interval = hull of the vertex's bootstrap interval and the tested neighbours). Keys "
        "that take one value per objective (own_keys, e.g. the diffusion strata's loss.p_mean/p_std) travel with "
        "the objective. Gap = final_loss_heldout - final_loss_train; NN ratio = final_nn_dist / "
        "final_nn_dist_ref (< 1: samples sit closer to training images than held-out images do). Column "
        "`detectable`: the smallest difference between two tested rates that the runs tell apart with 80% power "
        f"at the {100 * level:.3g}% level (seed-blocked, no multiplicity correction).\n\n"
        + md_table(dr.best) + "\n" + md_table(dr.difference) + "\n" + md_table(dr.trends) + "\n"
        + md_table(ev) + "\n"
        + f"![dropout]({png})\n\nTables: " + ", ".join(files) + "\n")


def curriculum_section(rep: Report, trials, evals, n_boot, level, seed) -> None:
    if evals.empty:
        rep.gap(Q3, "Q3 (curricula): no evals.parquet with evaluations found")
        return
    try:
        cr, pooled = _curriculum_ranking(trials, evals, n_boot, level, seed)
    except SchemaError as err:
        rep.gap(Q3, f"Q3 (curricula): {err}")
        return
    final = final_ranking(cr.ranking)
    if final.empty:
        rep.gap(Q3, "Q3 (curricula): no curriculum experiment found (no configuration was run with two "
                    "or more curricula)")
        return
    rep.results["curriculum"] = final
    parts = []
    for (dataset, _), t in final.groupby(["dataset", "context"], sort=False):
        budgets = ""
        if "budget" in trials.columns:
            budgets = ",".join(sorted(set(trials.loc[trials["dataset"] == dataset, "budget"].dropna().astype(str))))
        parts.append((_curriculum_text(dataset, t, pooled, level), caveats(int(t["num_seeds"].min()), budgets)))
    rep.answer("Q3: " + joined(parts) + ".", Q3)
    files = [rep.csv(cr.ranking, "curriculum_ranking.csv")]
    png = rep.png(plots.plot_curricula(cr, level=level), "curricula.png")
    rep.section(
        "Q3: curricula at equal compute",
        "FD of each run (pruned runs included, through their evaluations) interpolated at compute budgets every run "
        "reached (images seen), mean over seeds with Student-t intervals; rank 1 = lowest FD; rank interval and "
        "P(best) over draws of each mean (from the seed-blocked model when every curriculum ran the same seeds: "
        "seed_blocked); tied_best: within the FD's standard error of the best. A best curriculum is named only when "
        "the global test of \"all equal\" (global_f, global_p: seed-blocked F test, else one-way) rejects at the "
        "report's level and the lowest mean beats the runner-up (runner_up_p); detectable: the smallest difference "
        "between two curricula the design detects with 80% power.\n\n"
        + md_table(final) + "\n" + f"![curricula]({png})\n\nTables: " + ", ".join(files) + "\n")


def _curriculum_ranking(trials, evals, n_boot, level, seed):
    """(rank_curricula's result, pooled): curricula ranked at equal compute, or their shapes when a random search
    sampled s0, s1 with the shape (one run per curriculum) and ranking shapes pools runs."""
    cr = rank_curricula(trials, evals, metric="fd", n_boot=n_boot, level=level, seed=seed)
    if not cr.ranking.empty and cr.ranking["num_seeds"].median() < 2:
        by_shape = rank_curricula(trials, evals, metric="fd", n_boot=n_boot, level=level, seed=seed, by_shape=True)
        if by_shape.ranking["num_seeds"].median() > cr.ranking["num_seeds"].median():
            return by_shape, True
    return cr, False


def _curriculum_text(dataset: str, t: pd.DataFrame, pooled: bool, level: float) -> str:
    """Q3's answer on one data set: `t` is final_ranking's rows there, best first. A best is named only when the
    global test rejects and the best beats the runner-up; ties and the paper's exponential curriculum follow."""
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
                f"(p = {fmt(rp, 2)}{detectable_text(best.get('detectable', math.nan))})")
    else:
        why = (f"they do not differ detectably ({test_name} = {fmt(best['global_f'])}, p = {fmt(gp, 2)}"
               f"{detectable_text(best.get('detectable', math.nan))})" if np.isfinite(gp)
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
    return text


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
        rep.gap(ABLATIONS_NOT_RUN, "ablations not run at matching settings: " + ", ".join(missing))
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
            verdict += f" ({r['reason']}{detectable_text(r.get('detectable', math.nan) if open_ else math.nan)})"
        if not r.get("claim", True):
            verdict += " [not a paper claim: outside the correction's family]"
        pairing = ", paired over seeds" if r["paired"] else ""
        smallest = min(r["_smallest"]) if isinstance(r.get("_smallest"), tuple) else None
        parts.append(f"{r['ablation']} ({r['paper']} - {r['alternative']}): {verdict}, "
                     f"FD difference {fmt_ci(r['effect'], r['lo'], r['hi'], n=smallest)}, {seeds}{pairing}")
    rep.answer(f"Ablations (FD of the paper's choice minus the alternative; {family} paper claim"
               f"{'s' if family != 1 else ''} in the family, Holm-corrected): " + "; ".join(parts) + ".", ABLATIONS)
    table = public(table)
    files = [rep.csv(table, "ablations.csv")]
    png = rep.png(plots.plot_ablations(table), "ablations.png")
    rep.section(
        "Ablations of the paper's choices",
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
        + md_table(table) + "\n" + f"![ablations]({png})\n\nTables: " + ", ".join(files) + "\n")

