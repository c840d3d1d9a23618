"""The table that opens a report: one row per question or claim, built from what the question sections computed
(rep.results, never their prose), and the line under it on what the compute decided.

Columns: the question or claim, the answer or verdict, its interval, the seeds behind it, whether it is decided,
and, where it stayed open, the smallest effect the runs could have detected. Every kind of row needs the report's
min_seeds (3 by default) per configuration and a budget other than smoke to be decided, and then:
- an ablation claim: reproduced or contradicted (analysis/ablations.py's corrected verdict);
- Q1 or Q2 per data set: an optimum located on both sides with an interval inside the searched range (as the
  prose says; its width is in the interval column: "decided" means located, not pinned down). An open one's
  detectable effect is the smallest FD difference between two tested values its seeds tell apart with 80% power
  (curve_minimum.level_detectable): a difference between tested values smaller than that (the best against the
  edge value it ties with, a dip between neighbours) goes unseen;
- Q1's exponent b: an interval that excludes the paper's 0.5, or is within +-0.15 (issue 22's target precision);
  where the tables hold c at two or more dimensions but locate c* at fewer than two, b is an open row that says so.
  When b is also fitted within image families, the family rows are graded and the pooled row is shown ungraded
  ("-"), so one question is not counted twice;
- Q3: the curricula differ (global F test), the lowest mean beats the runner-up, both at the report's level, and
  no other curriculum is within the FD's standard error of it.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from analysis.ablations import CONTRADICTED, NOT_RUN, REPRODUCED
from analysis.c_scaling import PAPER_B
from analysis.curve_minimum import ABOVE, BELOW, TWO_SIDED
from analysis.report_parts import Report, caveats
from analysis.report_sections import trained
from analysis.stats import LEVEL, fmt
from ict_core.datasets import dataset_family
from ict_core.records import ERRORED

B_PRECISION = 0.15  # Q1's b counts as estimated when its interval is within +-0.15 (issue 22)
UNGRADED = "-"


def _optimum_cells(bound: str, best: float, value: float, lo: float, hi: float, what: str) -> tuple[str, str]:
    """(answer, interval) cells of a located optimum or a one-sided bound."""
    if bound == BELOW:
        return f"{what}* < {fmt(hi)} (at the low end of the searched range)", f"(-, {fmt(hi)}]"
    if bound == ABOVE:
        return f"{what}* > {fmt(lo)} (at the high end of the searched range)", f"[{fmt(lo)}, -)"
    if bound == TWO_SIDED:
        return f"{what}* {fmt(value)} (best tested {fmt(best)})", f"[{fmt(lo)}, {fmt(hi)}]"
    return f"no {what}* located (best tested {fmt(best)})", "-"


def _open(seeds: int, budgets: str, min_seeds: int, spans: bool = False, extra=()) -> bool:
    """Whether an answer stays open for the report's caveats (one seed, a smoke budget, a spanning interval, the
    `extra` reasons) or for fewer than min_seeds seeds per configuration."""
    return bool(caveats(seeds, budgets, spans, extra)) or seeds < min_seeds


def _verdict(answer: str, row, low: str, high: str, lo: str, hi: str, min_seeds: int) -> tuple[str, bool]:
    """(`answer` prefixed "inconclusive: " for the sections' reasons (report_parts.caveats), decided)."""
    spans = row["bound"] == TWO_SIDED and row[lo] <= row[low] and row[hi] >= row[high]
    extra = [row["bound"] != TWO_SIDED and "not bracketed"]
    labelled = bool(caveats(int(row["num_seeds"]), row.get("budgets", ""), spans, extra))
    decided = not _open(int(row["num_seeds"]), row.get("budgets", ""), min_seeds, spans, extra)
    return (f"inconclusive: {answer}" if labelled else answer), decided


def _row(question: str, answer: str, interval: str, seeds, decided, detectable: float = math.nan) -> dict:
    """decided: True, False, or None for a row shown but not graded."""
    return {"question or claim": question, "answer or verdict": answer, "interval": interval, "seeds": seeds,
            "decided": UNGRADED if decided is None else "yes" if decided else "no",
            "detectable": f"{fmt(detectable)} FD" if decided is False and np.isfinite(detectable) else "-"}


def _law_row(label: str, fit, members: pd.DataFrame, min_seeds: int, graded: bool = True) -> dict:
    """Q1's b: decided when its interval excludes 0.5 or is within +-B_PRECISION, at min_seeds on a real budget
    in every data set behind it (`members`: their per_dataset rows)."""
    n = int(getattr(fit, "num_datasets", 0) or 0)
    has = np.isfinite(fit.b_lo) and np.isfinite(fit.b_hi)
    budgets = ",".join(members["budgets"].astype(str)) if "budgets" in members else ""
    seeds = int(members["num_seeds"].min()) if len(members) else 0
    decided = (has and (not fit.b_contains_paper or (fit.b_hi - fit.b_lo) <= 2 * B_PRECISION)
               and not _open(seeds, budgets, min_seeds))
    answer = (f"b = {fmt(fit.b)}" if decided else
              f"inconclusive: b = {fmt(fit.b)} (its interval holds {PAPER_B} and is wider than +-{B_PRECISION})"
              if has and (fit.b_contains_paper and (fit.b_hi - fit.b_lo) > 2 * B_PRECISION) else
              f"inconclusive: b = {fmt(fit.b)} (too few seeds or a smoke budget)" if has
              else f"no answer: {n} data set(s), a 2-parameter fit needs 3")
    return _row(f"Q1 c* = a d^b {label} (paper: b = {PAPER_B})", answer,
                f"[{fmt(fit.b_lo)}, {fmt(fit.b_hi)}]" if has else "-", f"{n} data sets",
                decided if graded else None)


def _q1_rows(cs, min_seeds: int) -> list[dict]:
    rows, per = [], cs.per_dataset
    for _, r in per.iterrows():
        answer, interval = _optimum_cells(r["bound"], r["best_c"], r["c_star"], r["c_lo"], r["c_hi"], "c")
        answer, decided = _verdict(answer, r, "c_min", "c_max", "c_lo", "c_hi", min_seeds)
        rows.append(_row(f"Q1 best Pseudo-Huber c, {r['dataset']} (d={int(r['dim'])})", answer, interval,
                         int(r["num_seeds"]), decided, r.get("detectable", math.nan)))
    located = per[per["bound"] == TWO_SIDED]
    if cs.fit is not None:
        rows.append(_law_row("across data sets", cs.fit, located, min_seeds, graded=not cs.family_fits))
    elif per["dim"].nunique() >= 2:
        # The tables ask for b (c* at several dimensions) and cannot fit it: an open answer, counted as one.
        rows.append(_row(f"Q1 c* = a d^b across data sets (paper: b = {PAPER_B})",
                         f"no answer: c* located on both sides at "
                         f"{located.loc[np.isfinite(located['c_star'].astype(float)), 'dim'].nunique()} of "
                         f"{per['dim'].nunique()} dimensions; the fit needs 2", "-",
                         f"{len(per)} data sets", False))
    for family, fit in cs.family_fits.items():
        members = located[located["dataset"].map(dataset_family) == family]
        rows.append(_law_row(f"within the {family} family", fit, members, min_seeds))
    return rows


def _q2_rows(dr, min_seeds: int) -> list[dict]:
    rows = []
    for _, r in dr.best.iterrows():
        answer, interval = _optimum_cells(r["bound"], r["best_tested"], r["best_dropout"], r["lo"], r["hi"],
                                          "dropout")
        answer, decided = _verdict(answer, r, "p_min", "p_max", "lo", "hi", min_seeds)
        rows.append(_row(f"Q2 best dropout, {r['objective']} objective, {r['dataset']}", answer, interval,
                         int(r["num_seeds"]), decided, r.get("detectable", math.nan)))
    return rows


def _q3_rows(final: pd.DataFrame, level: float, min_seeds: int, budgets: dict) -> list[dict]:
    rows = []
    for (dataset, _), table in final.groupby(["dataset", "context"], sort=True):
        top = table.iloc[0]
        gp, rp = top.get("global_p", math.nan), top.get("runner_up_p", math.nan)
        tied = int(table["tied_best"].sum()) if "tied_best" in table else 1
        differ = bool(np.isfinite(gp) and gp < 1 - level and np.isfinite(rp) and rp < 1 - level)
        decided = differ and tied <= 1 and not _open(int(table["num_seeds"].min()), budgets.get(dataset, ""),
                                                     min_seeds)
        answer = (f"{top['curriculum']} (FD {fmt(top['mean'])})" if decided else
                  f"inconclusive: no best named; lowest mean {top['curriculum']} (FD {fmt(top['mean'])})")
        rows.append(_row(f"Q3 best curriculum at equal compute, {dataset}",
                         answer + (f", tied with {tied - 1} other(s)" if tied > 1 else ""),
                         f"[{fmt(top['lo'])}, {fmt(top['hi'])}]", int(top["num_seeds"]), decided,
                         top.get("detectable", math.nan)))
    return rows


def _ablation_rows(ablations: pd.DataFrame) -> list[dict]:
    rows = []
    for _, r in ablations[ablations["verdict"] != NOT_RUN].iterrows():
        level = f" ({100 * r['level']:.3g}%)" if "level" in r and np.isfinite(r["level"]) else ""
        rows.append(_row(f"{r['ablation']}: {r['paper']} - {r['alternative']}",
                         f"{r['verdict']}, FD difference {fmt(r['effect'])}", f"[{fmt(r['lo'])}, {fmt(r['hi'])}]{level}",
                         f"{int(r['num_paper'])} vs {int(r['num_alt'])}", r["verdict"] in (REPRODUCED, CONTRADICTED),
                         r.get("detectable", math.nan)))
    return rows


def answer_rows(rep: Report, ablations: pd.DataFrame, metric: str, level: float = LEVEL, min_seeds: int = 3,
                budgets: dict | None = None) -> list[dict]:
    """One row per answer: question or claim, answer or verdict, interval, seeds, decided, detectable. budgets:
    {dataset: the comma-joined budgets of its runs}. A space that asks none of the project's questions gets its
    best run per experiment and stratum (no decided column)."""
    rows = []
    if (cs := rep.results.get("c_scaling")) is not None:
        rows += _q1_rows(cs, min_seeds)
    if (dr := rep.results.get("dropout")) is not None:
        rows += _q2_rows(dr, min_seeds)
    if (final := rep.results.get("curriculum")) is not None:
        rows += _q3_rows(final, level, min_seeds, budgets or {})
    if ablations is not None and not ablations.empty:
        rows += _ablation_rows(ablations)
    if not rows and not rep.best.empty:
        for _, r in rep.best.iterrows():
            rows.append({"question or claim": f"best run of {r['experiment']} / {r['stratum']}",
                         "answer or verdict": f"{r['searched'] or 'its config'}: {metric} {fmt(r[metric])}",
                         "interval": "-", "seeds": f"1 (seed {r['seed']})"})
    return rows


def decided_line(rows: list[dict], trials: pd.DataFrame) -> str:
    """The sentence under the table: how many graded answers are decided, and the run hours (the runs' own wall
    time, each run counted once, errored runs included: they cost compute too) per decided answer."""
    graded = [r for r in rows if r.get("decided", UNGRADED) != UNGRADED]
    if not graded:
        return ""
    decided = [r["question or claim"] for r in graded if r["decided"] == "yes"]
    t = trained(trials)
    hours = float(t["_wall"].sum()) / 3600
    runs = int((~t["_reused"] & (t["status"].astype(str) != ERRORED)).sum())
    text = (f"Decided: {len(decided)} of {len(graded)} answers" + (f" ({'; '.join(decided)})" if decided else "")
            + f". Compute: {fmt(hours)} run hours, {runs} runs trained")
    if decided:
        text += f", {fmt(hours / len(decided))} run hours per decided answer"
    return text + (" (run hours: the runs' own training wall time, summed over runs; see \"Compute behind each "
                   "answer\").\n")
