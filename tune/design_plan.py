"""The experiment designer's rounds and power (the tests themselves are in tune/designer.py).

`Design` is a budget's sequential design; `next_round` picks the seeds the next round trains; `run_design` drives
rounds end to end with any trial function (the synthetic campaign of tests/test_designer.py and
benchmarks/designer_power.py); `detectable_effect` is the smallest effect a claim detects with 80% power at
`seeds_max` from a measured spread (the dry-run's power line). Pure functions (numpy/scipy only; no Ray, no files).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
from scipy import optimize, special

from tune.designer import (ALPHA, DECIDED, OPEN, SPENDINGS, ClaimData, DesignError, Verdict, holm_verdicts,
                           nominal_levels, planned_looks)

POWER = 0.80


# ---- rounds ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Design:
    """A search's or campaign's sequential design (tune/space.py reads it from a space's budget)."""

    seeds_min: int = 3
    seeds_max: int = 3
    looks: int = 1
    max_runs: int | None = None  # compute cap: runs trained in all rounds together; None = no cap
    alpha: float = ALPHA
    spending: str = "obf"

    def __post_init__(self):
        planned_looks(self.seeds_min, self.seeds_max, self.looks)
        if self.max_runs is not None and (not isinstance(self.max_runs, int) or self.max_runs < 1):
            raise DesignError(f"max_runs must be an integer >= 1 or null, got {self.max_runs!r}")
        if not 0 < self.alpha < 1:
            raise DesignError(f"alpha must lie in (0, 1), got {self.alpha!r}")
        if self.spending not in SPENDINGS:
            raise DesignError(f"spending must be one of {', '.join(SPENDINGS)}, got {self.spending!r}")

    @property
    def plan(self) -> list[int]:
        return planned_looks(self.seeds_min, self.seeds_max, self.looks)


def next_round(seeds_now: dict[str, int], verdicts: dict[str, Verdict], design: Design,
               arms: dict[str, Sequence[str]], trained: set | None = None) -> dict[str, int]:
    """The seed count each claim goes to in the next round: open claims move to their next planned look, in
    claim order, while the runs this adds (distinct (arm, seed) pairs not yet trained; arms shared between claims
    count once) keep the total within design.max_runs. Decided or inconclusive claims, and those the cap leaves
    out, keep their count. `trained` is the set of (arm, seed) pairs already trained."""
    trained = set(trained or ())
    plan = design.plan
    total = len(trained)
    out = dict(seeds_now)
    for name, n in seeds_now.items():
        if verdicts[name].state != OPEN:
            continue
        later = [p for p in plan if p > n]
        target = later[0] if later else design.seeds_max
        if target <= n:
            continue
        new = {(a, s) for a in arms[name] for s in range(target)} - trained
        if design.max_runs is not None and total + len(new) > design.max_runs:
            continue
        trained |= new
        total += len(new)
        out[name] = target
    return out


@dataclass
class ClaimSpec:
    """A claim for run_design: its kind, its arms (names of configurations; arms shared between claims are
    trained once per seed) and, for paired/unpaired, the two arms in the order of the difference A - B."""

    name: str
    kind: str
    arms: tuple
    mode: str = "min"


@dataclass
class DesignResult:
    verdicts: dict
    seeds: dict  # claim -> seeds it reached
    runs: int  # distinct (arm, seed) runs trained
    rounds: int
    history: list = field(default_factory=list)  # per round: {claim: seeds}


def claim_values(spec: ClaimSpec, table: dict, n: int):
    """A claim's values over seeds 0..n-1 from table[(arm, seed)] -> value, in claim_test's form."""
    cols = [[table[(a, s)] for s in range(n)] for a in spec.arms]
    if spec.kind == "paired":
        return np.asarray(cols[0]) - np.asarray(cols[1])
    if spec.kind == "unpaired":
        return (np.asarray(cols[0]), np.asarray(cols[1]))
    return np.asarray(cols).T


def run_design(specs: Sequence[ClaimSpec], design: Design, trial: Callable[[str, int], float]) -> DesignResult:
    """Drive the rounds: every claim starts at design.seeds_min seeds, then open claims get more at each planned
    look until decided, at seeds_max, or out of the compute cap. `trial(arm, seed)` returns the metric of one run;
    it is called once per distinct (arm, seed) (the designer's reuse: a run trained for one claim serves every
    claim that shares the arm)."""
    table: dict = {}
    arms = {s.name: tuple(s.arms) for s in specs}
    seeds = {s.name: 0 for s in specs}
    looks: dict[str, list] = {s.name: [] for s in specs}
    first = {s.name: design.plan[0] for s in specs}
    history, decided = [], []
    target = first
    verdicts: dict = {}
    rounds = 0
    while True:
        for spec in specs:
            n = target[spec.name]
            for a in spec.arms:
                for sd in range(n):
                    if (a, sd) not in table:
                        table[(a, sd)] = float(trial(a, sd))
            if n > seeds[spec.name]:
                looks[spec.name].append(n)
                seeds[spec.name] = n
        rounds += 1
        history.append(dict(seeds))
        data = [ClaimData(s.name, s.kind, claim_values(s, table, seeds[s.name]), looks[s.name], design.seeds_max,
                          s.mode) for s in specs]
        verdicts = holm_verdicts(data, design.alpha, design.spending, decided)
        decided = [k for k, v in verdicts.items() if v.state == DECIDED]
        target = next_round(seeds, verdicts, design, arms, set(table))
        if target == seeds:
            return DesignResult(verdicts, seeds, len(table), rounds, history)


# ---- power ----------------------------------------------------------------------------------------------------
def detectable_effect(sd: float, seeds_max: int, alpha: float, kind: str = "paired", power: float = POWER,
                      looks: Sequence[int] | None = None, spending: str = "obf") -> float:
    """The smallest true effect (in the metric's units) a claim decides with probability `power` by seeds_max.

    sd: the seed-to-seed SD of the per-seed difference (paired) or of one arm's values (unpaired, both arms
    alike). alpha: the claim's level (its Holm share: alpha / number of claims, the strictest it can face).
    With looks, the final look's nominal level is used (alpha spent earlier is lost to the last look; earlier
    looks only add power), so the figure is slightly conservative. Noncentral t, df = seeds_max - 1 (paired) or
    2 seeds_max - 2 (unpaired)."""
    if not (sd > 0 and math.isfinite(sd)):
        return float("nan")
    level = nominal_levels(looks, seeds_max, alpha, spending, kind)[-1] if looks else alpha
    n = seeds_max
    if kind == "unpaired":
        df, scale = 2 * n - 2, sd * math.sqrt(2 / n)
    else:
        df, scale = n - 1, sd / math.sqrt(n)
    crit = float(-special.stdtrit(df, level / 2))

    def gap(delta):
        nc = delta / scale
        decided = 1 - special.nctdtr(df, nc, crit) + special.nctdtr(df, nc, -crit)
        return float(decided) - power if math.isfinite(decided) else 1.0 - power

    hi = scale
    while gap(hi) < 0 and hi < 1e6 * scale:
        hi *= 2
    return float(optimize.brentq(gap, 0.0, hi, xtol=1e-6 * scale))


def gaussian_trial(effects: dict, rng: np.random.Generator, sd: float = 1.0, rho: float = 0.5,
                   base: float = 20.0) -> Callable[[str, int], float]:
    """A cheap synthetic trial for simulations (no training): arm `a` at seed `s` returns
    base + effects[a] + sd * (sqrt(rho) * u_s + sqrt(1 - rho) * e_as), with u_s shared by every arm at seed s (the
    seed effect: arms correlate rho across seeds) and e_as independent; so each arm's seed-to-seed SD is `sd`, and
    a paired difference's SD is sd * sqrt(2 (1 - rho)) (= sd at rho 0.5)."""
    seed_effect: dict = {}

    def trial(arm: str, seed: int) -> float:
        if seed not in seed_effect:
            seed_effect[seed] = rng.standard_normal()
        noise = math.sqrt(rho) * seed_effect[seed] + math.sqrt(1 - rho) * rng.standard_normal()
        return base + effects.get(arm, 0.0) + sd * noise

    return trial
