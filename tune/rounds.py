"""Design rounds of a search: from the runs in trials.parquet to each declared claim's data, verdict and the
configurations the next round trains (tune/designer.py tests; tune/search.py runs the rounds).

A claim's arms are configurations of its stratum, identified by their config columns (not by Tune's trial id, so
a configuration trained again in a later round with more seeds is the same arm):

  contrast   a: the configuration at key = paper (and at the claim's `at`, e.g. Pseudo-Huber at the paper's c),
             b: at the alternative (where several match, the one with the most completed seeds)
  optimum    a: the best configuration (lowest mean metric for mode min) not at the reference; b: at the reference
  c_star     the same with the reference c = 0.00054 sqrt(d) of the stratum
  ranking    for each value of key its best configuration; the seeds x arms matrix over the seeds all arms share

A claim's values are the per-seed differences a - b over the seeds both arms completed (seed order), or the
seeds x arms matrix; a claim whose arms are missing (no run at the reference, fewer than 2 common seeds) is
`untestable` and gets no seeds.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ict_core.records import COMPLETED
from tune.designer import ClaimData
from tune.results import NOT_TRAINED

UNTESTABLE = "untestable"


def config_columns(trials: pd.DataFrame) -> list[str]:
    """The dotted config columns that say what was trained, less the seed."""
    return [c for c in trials.columns if "." in c and c != "train.seed" and c not in NOT_TRAINED]


def signatures(trials: pd.DataFrame) -> pd.Series:
    """One string per row naming its configuration (equal for every seed and every round of it)."""
    cols = config_columns(trials)
    return trials[cols].astype(str).agg("|".join, axis=1) if cols else pd.Series("", index=trials.index)


def _match(column: pd.Series, value) -> pd.Series:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        num = pd.to_numeric(column, errors="coerce")
        return (num - float(value)).abs() <= 1e-9 + 1e-6 * abs(float(value))
    return column.astype(str) == str(value)


def _per_seed(rows: pd.DataFrame, metric: str) -> pd.Series:
    return rows.groupby("seed")[metric].mean().sort_index()


def claim_arms(claim, trials: pd.DataFrame, metric: str, mode: str = "min", fixed=None) -> dict | None:
    """{"arms": [signature, ...], "values": {signature: Series seed -> metric}} of a planned claim, or None.

    fixed: the arms an earlier look chose (experiment.json's design.arms). An arm picked by the data, the best
    configuration of a claim like c_star's "best tested c against the paper's", is chosen once, at the first look,
    and kept: re-picking it from means over unequal seed counts would swap in an arm with fewer seeds after each
    round (the one that grew regresses toward its mean), so the claim's common seeds, and its look, never grow."""
    rows = trials[(trials["stratum"].astype(str) == claim.stratum) & (trials["status"].astype(str) == COMPLETED)]
    if rows.empty or claim.key not in rows.columns:
        return None
    rows = rows.assign(_sig=signatures(rows))
    groups = {sig: _per_seed(g, metric) for sig, g in rows.groupby("_sig", sort=True)}
    kept = fixed and all(sig in groups for sig in fixed) and _still_its_arms(claim, rows, fixed)
    arms = list(fixed) if kept else _pick_arms(claim, rows, groups, mode)
    if arms is None:
        return None
    return {"arms": arms, "values": {s: groups[s] for s in arms},
            "overrides": {s: rows[rows["_sig"] == s].iloc[0] for s in arms}}


def _at(rows: pd.DataFrame, sig: str, key: str, value) -> bool:
    """Whether configuration `sig` runs `key` at `value`."""
    return key in rows.columns and bool(_match(rows.loc[rows["_sig"] == sig, key].iloc[:1], value).iloc[0])


def _named_a(claim) -> dict:
    """{key: value} that a paired claim's arm a must run: a contrast's paper value and its `at`; {} when the data
    pick arm a (optimum, c_star)."""
    if claim.arms.get("a") is None:
        return {}
    return {claim.key: claim.arms["a"], **(claim.arms.get("a_at") or {})}


def _still_its_arms(claim, rows: pd.DataFrame, fixed) -> bool:
    """Whether arms an earlier look chose still fit the claim's named arms (a contrast's paper value and `at`, its
    alternative): a search started before a space pinned its paper arm re-picks instead of growing the old one."""
    if claim.kind != "paired" or len(fixed) != 2:
        return True
    a, b = fixed
    return all(_at(rows, a, k, v) for k, v in _named_a(claim).items()) and _at(rows, b, claim.key, claim.arms["b"])


def _pick_arms(claim, rows: pd.DataFrame, groups: dict, mode: str) -> list | None:
    """The arms' signatures chosen from the runs: per ranked value its best configuration, or the claim's a
    (its best configuration when the data pick it) and b (the one with the most seeds); None when one is missing."""
    values_of = {sig: g[claim.key].iloc[0] for sig, g in rows.groupby("_sig", sort=True)}

    def most_seeds(sigs):
        return max(sigs, key=lambda s: (len(groups[s]), s)) if sigs else None

    def best(sigs):
        means = {s: float(groups[s].mean()) for s in sigs}
        return (min if mode == "min" else max)(sorted(means), key=means.get) if means else None

    def at(value):
        return [s for s in groups if bool(_match(pd.Series([values_of[s]]), value).iloc[0])]

    if claim.kind == "ranking":
        arms = [a for a in (best(at(v)) for v in claim.arms["values"]) if a is not None]
        return arms if len(arms) >= 2 else None
    b_sigs = at(claim.arms["b"])
    if claim.arms.get("a") is None:
        a = best([s for s in groups if s not in b_sigs])
    else:
        a = most_seeds([s for s in groups if all(_at(rows, s, k, v) for k, v in _named_a(claim).items())])
    b = most_seeds(b_sigs)
    return None if a is None or b is None else [a, b]


def claim_data(claim, arms: dict, looks: list[int], seeds_max: int, mode: str = "min") -> ClaimData | None:
    """The designer's input for a claim from its arms' per-seed values: the seeds every arm completed, in order."""
    series = [arms["values"][s] for s in arms["arms"]]
    common = sorted(set.intersection(*(set(v.index) for v in series)))
    n = len(common)
    if n < 2:
        return None
    looks = [x for x in looks if x < n] + [n]
    if claim.kind == "ranking":
        values = np.column_stack([v.loc[common].to_numpy() for v in series])
    else:
        values = series[0].loc[common].to_numpy() - series[1].loc[common].to_numpy()
    return ClaimData(claim.name, claim.kind, values, looks, seeds_max, mode)


def verdict_record(v) -> dict:
    """A Verdict as JSON for experiment.json."""
    lo, hi = v.interval
    return {"state": v.state, "direction": v.direction, "estimate": _f(v.estimate), "interval": [_f(lo), _f(hi)],
            "seeds": v.n, "decided_at": v.decided_at, "level": v.level, "p": _f(v.p)}


def _f(x) -> float | None:
    return float(x) if x is not None and math.isfinite(float(x)) else None
