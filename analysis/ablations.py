"""The paper's ablation claims: does each iCT choice beat its alternative at matched settings?

Claims (Song & Dhariwal 2023): no EMA teacher beats CT's EMA teacher (Sec. 3.2), Pseudo-Huber with
c = 0.00054 sqrt(d) beats squared L2 (Sec. 3.3), lognormal noise sampling beats uniform and the
1/(sigma_{i+1} - sigma_i) weighting beats uniform weights (Sec. 3.5), and a Fourier scale of 0.02
beats CT's 16 (Sec. 3.1). The effect is FD(paper's choice) - FD(alternative) between runs that
agree on every other config column; negative favours the paper. Intervals are Student's t, paired over
seeds where both arms ran the same seeds and their seed correlation makes pairing the narrower interval
(stats.difference_stats). The family of verdicts is the paper's claims (CLAIMS: one contrast per ablation,
the paper's value against the one it was claimed to beat), corrected by Holm's step-down so the chance of
any spurious claim verdict is at most 1 - level; other lines (e.g. intermediate Fourier scales) are
reported at the family's strictest level but do not enlarge the family (docs/ANALYSIS.md).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from analysis.c_scaling import paper_c
from analysis.selection import context_key, typical_se, usable, value_token
from analysis.stats import (LEVEL, MIN_SEEDS, N_BOOT, detectable_effect, difference_stats, experiment_correlation, holm,
                            pool_cells, t_interval, t_pvalue)
from ict_core.records import COMPLETED, DIVERGED

REPRODUCED, CONTRADICTED, INCONCLUSIVE, NOT_RUN = "reproduced", "contradicted", "inconclusive", "not run"


@dataclass(frozen=True)
class Ablation:
    """One claim: `key` set to `paper` against every other value found in the tables.

    ignore: keys that may differ between the arms (e.g. loss.huber_c is meaningless for L2);
    paper_filter: optional test on the paper arm's rows (e.g. c at the paper's heuristic).
    """

    name: str
    key: str
    paper: object
    ignore: tuple = ()
    paper_filter: object = field(default=None, compare=False)
    claimed_against: object = None  # the alternative the paper claims to beat: (ablation, it) is a paper claim


def _heuristic_c(rows: pd.DataFrame) -> pd.Series:
    c = pd.to_numeric(rows["loss.huber_c"], errors="coerce")
    ref = paper_c(pd.to_numeric(rows["dim"], errors="coerce"))
    return (c - ref).abs() <= 0.05 * ref


ABLATIONS = (
    Ablation("EMA teacher vs none", "loss.teacher", "none", ignore=("loss.ema_mu0",), claimed_against="ema"),
    Ablation("Pseudo-Huber vs L2", "loss.metric", "pseudo_huber", ignore=("loss.huber_c",), paper_filter=_heuristic_c,
             claimed_against="l2"),
    Ablation("lognormal vs uniform noise sampling", "loss.noise_schedule", "lognormal", ignore=("loss.p_mean", "loss.p_std"),
             claimed_against="uniform"),
    Ablation("iCT weighting vs uniform", "loss.weighting", "ict", claimed_against="uniform"),
    Ablation("Fourier scale", "network.fourier_scale", 0.02, claimed_against=16.0),
)


def claims(ablations=ABLATIONS) -> set[tuple[str, str]]:
    """The pre-declared paper claims, the family of the correction: (ablation name, alternative token).

    The one place the family is defined; space files that declare their claims can replace it."""
    return {(a.name, value_token(a.claimed_against)) for a in ablations if a.claimed_against is not None}


COLUMNS = ["ablation", "key", "paper", "alternative", "claim", "effect", "lo", "hi", "level", "p", "p_adj", "se", "df",
           "paired", "correlation", "detectable", "fd_se", "num_cells", "num_paper", "num_alt", "paper_diverged",
           "alt_diverged", "budgets", "verdict", "reason"]


def _not_run(base: dict, reason: str) -> dict:
    return {**base, "alternative": "-", "effect": math.nan, "lo": math.nan, "hi": math.nan, "level": math.nan,
            "p": math.nan, "p_adj": math.nan, "se": math.nan, "df": math.nan, "paired": False,
            "correlation": math.nan, "detectable": math.nan, "claim": False, "fd_se": math.nan,
            "num_cells": 0, "num_paper": 0, "num_alt": 0, "paper_diverged": 0, "alt_diverged": 0, "budgets": "",
            "verdict": NOT_RUN, "reason": reason}


def compare(trials: pd.DataFrame, ablation: Ablation, metric: str = "final_fd", n_boot: int = N_BOOT,
            level: float = LEVEL, min_seeds: int = 3, rng=None) -> list[dict]:
    """One row per alternative value of `ablation.key` found in `trials`, before any verdict.

    trials: one row per run with dataset, seed, status, `metric` and dotted config columns. Cells are
    runs of one dataset that agree on every other config column (apart from ablation.ignore); the
    effect is the mean over cells of mean(paper arm) - mean(alternative arm), with its standard error
    and degrees of freedom (stats.difference_stats per cell, paired over seeds when the arms share
    them; stats.pool_cells across cells). The verdict columns are filled by apply_correction.
    n_boot and rng are unused (kept for callers of the bootstrap version).
    """
    base = {"ablation": ablation.name, "key": ablation.key, "paper": value_token(ablation.paper)}
    if ablation.key not in trials.columns:
        return [_not_run(base, f"no column {ablation.key!r}")]
    # Diverged runs travel with their arm: an arm that lost runs to divergence cannot win by its survivors.
    runs = pd.concat([usable(trials, metric), trials[trials["status"].astype(str) == DIVERGED]], sort=False)
    runs = runs.assign(_value=runs[ablation.key].map(value_token))
    # The seed correlation of each experiment's design, pooled over its arms, decides pairing.
    done = usable(trials, metric)
    correlation = {key: experiment_correlation(rows, metric)
                   for key, rows in done.groupby([done["experiment"].astype(str), done["dataset"].astype(str)])} \
        if {"experiment", "dataset"} <= set(done.columns) else {}
    paper_token = value_token(ablation.paper)
    is_paper = runs["_value"] == paper_token
    if ablation.paper_filter is not None and is_paper.any():
        is_paper &= ablation.paper_filter(runs).fillna(False).astype(bool)
    out = []
    for alt in sorted(set(runs.loc[runs["status"].astype(str) == COMPLETED, "_value"]) - {paper_token}):
        sub = runs[is_paper | (runs["_value"] == alt)]
        ctx = context_key(sub, exclude={ablation.key, *ablation.ignore}) + "@" + sub["dataset"].astype(str)
        cells, stats, used, diverged = [], [], [], [0, 0]
        for _, whole in sub.groupby(ctx):
            failed = whole["status"].astype(str) == DIVERGED
            cell = whole[~failed]
            paper_rows = cell[cell["_value"] == paper_token]
            alt_rows = cell[cell["_value"] == alt]
            if len(paper_rows) and len(alt_rows):
                diverged[0] += int((failed & (whole["_value"] == paper_token)).sum())
                diverged[1] += int((failed & (whole["_value"] == alt)).sum())
                cells.append((len(paper_rows), len(alt_rows)))
                stats.append(difference_stats(paper_rows[metric].to_numpy(float), alt_rows[metric].to_numpy(float),
                                              paper_rows["seed"].tolist(), alt_rows["seed"].tolist(), level=level,
                                              correlation=correlation.get((str(cell["experiment"].iloc[0]),
                                                                           str(cell["dataset"].iloc[0])))))
                used.append(cell)
        row = {**base, "alternative": alt, "claim": (ablation.name, alt) in claims((ablation,)),
               "num_cells": len(cells), "num_paper": sum(p for p, _ in cells),
               "num_alt": sum(a for _, a in cells)}
        if not cells:
            out.append({**_not_run(base, "no runs of the two arms at matching settings"), **row})
            continue
        pooled = pool_cells(stats)
        smallest = (min(p for p, _ in cells), min(a for _, a in cells))
        out.append({**row, "effect": pooled["value"], "se": pooled["se"], "df": pooled["df"],
                    "paired": all(s["paired"] for s in stats),
                    "correlation": float(np.nanmean([s["correlation"] for s in stats]))
                    if any(np.isfinite(s["correlation"]) for s in stats) else math.nan,
                    "fd_se": typical_se(pd.concat(used), metric),
                    "budgets": _budgets(pd.concat(used)), "paper_diverged": diverged[0], "alt_diverged": diverged[1],
                    "_smallest": smallest, "_min_seeds": min_seeds})
    return out


def _budgets(rows: pd.DataFrame) -> str:
    """The budgets (experiment.json) behind `rows`, comma-separated; "" when unknown."""
    if "budget" not in rows.columns:
        return ""
    return ",".join(sorted(set(rows["budget"].dropna().astype(str))))


def eligible(table: pd.DataFrame, claims_only: bool = True) -> int:
    """Rows of an ablation table that can give a verdict (enough seeds and a finite standard error); with
    claims_only, only those that test a paper claim (the correction's family)."""
    if table.empty or "_eligible" not in table.columns:
        return 0
    ok = table["_eligible"].fillna(False).astype(bool)
    if claims_only and "claim" in table.columns:
        ok &= table["claim"].fillna(False).astype(bool)
    return int(ok.sum())


def apply_correction(table: pd.DataFrame, family: int | None = None, level: float = LEVEL) -> pd.DataFrame:
    """Intervals, p-values and verdicts, Holm-corrected over the paper claims of `table`.

    The family is the eligible rows whose `claim` is true (a paper claim, see claims()); family, when
    given, is a floor on its size (kept for callers that count it elsewhere). Holm's step-down orders the
    claims by p: the j-th smallest is tested at 1 - (1 - level) / (m - j + 1) and only while every smaller
    one was rejected; its interval is Student's t at that level (column `level`) and p_adj is Holm's
    adjusted p-value, so a verdict and its interval agree. Lines that are not a paper claim get the
    family's strictest level 1 - (1 - level) / m and p_adj = min(1, m p), and take no part in the family.
    Reproduced when the interval lies below 0, contradicted when above, else inconclusive; also
    inconclusive, with the reason, when Holm stopped at a smaller p, below min_seeds per arm, below
    MIN_SEEDS (no interval), when |effect| is within the FD's standard error (a tie) and when the winning
    arm lost runs to divergence (its survivors are a selected sample). `detectable` is the smallest effect
    the line's test detects with 80% power at its level, standard error and df (stats.detectable_effect).
    """
    table = table.copy()
    for column in ("verdict", "reason"):
        table[column] = table[column].astype(object)
    for column in ("lo", "hi", "level", "p", "p_adj", "detectable"):
        table[column] = table[column].astype(float)
    if "claim" not in table.columns:
        table["claim"] = True
    in_family = table["_eligible"].fillna(False).astype(bool) & table["claim"].fillna(False).astype(bool) \
        if "_eligible" in table.columns else pd.Series(False, index=table.index)
    raw_p = {i: t_pvalue(r["effect"], r["se"], r["df"]) for i, r in table.iterrows()}
    members = [i for i in table.index if in_family[i] and np.isfinite(raw_p[i])]
    m = max(len(members), int(family or 0), 1)
    adj, share = holm([raw_p[i] for i in members] + [1.0] * (m - len(members)))
    holm_of = {i: (adj[k], share[k]) for k, i in enumerate(members)}
    alpha = 1.0 - level
    for i, row in table.iterrows():
        if row["verdict"] == NOT_RUN and not isinstance(row.get("_smallest"), tuple):
            continue
        (num_paper, num_alt), min_seeds = row["_smallest"], row["_min_seeds"]
        p = raw_p[i]
        if i in holm_of:
            p_adj, divisor = holm_of[i]
        else:
            p_adj, divisor = (min(1.0, p * m) if np.isfinite(p) else math.nan), m
        adjusted = 1.0 - alpha / divisor
        lo, hi = t_interval(row["effect"], row["se"], row["df"], adjusted)
        if not np.isfinite(lo):
            verdict, reason = INCONCLUSIVE, (f"n < {MIN_SEEDS} in an arm ({num_paper} vs {num_alt} seeds): no "
                                             "interval")
        elif min(num_paper, num_alt) < min_seeds:
            verdict, reason = INCONCLUSIVE, f"too few seeds ({num_paper} vs {num_alt}; need {min_seeds} per arm)"
        elif lo <= 0 <= hi:
            verdict, reason = INCONCLUSIVE, "interval contains 0"
        elif i in holm_of and p_adj > alpha:
            verdict, reason = INCONCLUSIVE, ("Holm stops at a claim with a smaller p-value (adjusted p "
                                             f"{p_adj:.3g} > {alpha:.3g})")
        elif np.isfinite(row["fd_se"]) and abs(row["effect"]) <= row["fd_se"]:
            verdict, reason = INCONCLUSIVE, f"a tie: |effect| within the FD's standard error ({row['fd_se']:.3g})"
        elif hi < 0 and row["paper_diverged"]:
            verdict, reason = INCONCLUSIVE, (f"the paper's arm wins by its survivors but lost {row['paper_diverged']} "
                                             "runs to divergence")
        elif lo > 0 and row["alt_diverged"]:
            verdict, reason = INCONCLUSIVE, (f"the alternative wins by its survivors but lost {row['alt_diverged']} "
                                             "runs to divergence")
        elif hi < 0:
            verdict, reason = REPRODUCED, "interval below 0: the paper's choice has lower FD"
        else:
            verdict, reason = CONTRADICTED, "interval above 0: the alternative has lower FD"
        table.loc[i, ["lo", "hi", "level", "p", "p_adj", "detectable", "verdict", "reason"]] = [
            lo, hi, adjusted, p, p_adj, detectable_effect(row["se"], row["df"], adjusted), verdict, reason]
    return table


def analyze_ablations(trials: pd.DataFrame, ablations=ABLATIONS, metric: str = "final_fd", n_boot: int = N_BOOT,
                      level: float = LEVEL, min_seeds: int = 3, seed: int = 0, family: int | None = None
                      ) -> pd.DataFrame:
    """Every claim in `ablations` against every alternative in the tables, one row each (see compare and
    apply_correction; family defaults to the rows here that can give a verdict); a claim with no
    alternative value in the tables gets one "not run" row. Columns: COLUMNS plus the private
    `_eligible`, `_smallest` and `_min_seeds` that apply_correction reads."""
    rows = []
    for ablation in ablations:
        found = compare(trials, ablation, metric, n_boot, level, min_seeds)
        base = {"ablation": ablation.name, "key": ablation.key, "paper": value_token(ablation.paper)}
        rows += found or [_not_run(base, "only one value in the tables")]
    table = pd.DataFrame(rows, columns=COLUMNS + ["_smallest", "_min_seeds"])
    table["_eligible"] = [isinstance(s, tuple) and min(s) >= m and np.isfinite(se)
                          for s, m, se in zip(table["_smallest"], table["_min_seeds"], table["se"])]
    table["verdict"] = table["verdict"].astype(object).fillna("")
    return apply_correction(table, family, level)


def public(table: pd.DataFrame) -> pd.DataFrame:
    """The table without its private columns, for CSV and Markdown."""
    return table[[c for c in table.columns if not c.startswith("_")]]
