"""The experiment designer: how many seeds each declared claim gets, decided in rounds, with the error rate held.

Pure functions (numpy/scipy only; no Ray, no files), so the report, the search and the tests call the same code.

A *claim* is one verdict a space declares (its `claims:` section, tune/space.py): an ablation contrast, Q2's
dropout optimum per objective, Q3's curriculum ranking, c* per data set. Every claim starts at `seeds_min` seeds;
then, round after round, only the claims whose verdict is still open get more seeds, at the planned looks
n_1 = seeds_min < n_2 < ... < n_K = seeds_max, until each is decided or reaches `seeds_max` (or the compute cap,
`max_runs`, is spent).

Error control that survives this optional stopping (docs/ANALYSIS.md, "Sequential seeds"):

* Per claim, a two-sided group-sequential test with Lan-DeMets alpha spending (O'Brien-Fleming-like by default,
  Pocock-like on request). Boundaries are computed for the information fractions t_k = n_k / seeds_max that the
  claim actually reached (unplanned looks are allowed: each look spends alpha(t_k) - alpha(t_(k-1))), by the
  standard recursive numerical integration over the looks (Armitage-McPherson-Rowe). With seeds the variance is
  estimated, so each look's z boundary is used as a nominal two-sided level p_k = 2(1 - Phi(z_k)) and compared
  with the exact p-value of the look's t (or F) test: the "nominal significance level" approach.
* Across the declared claims, Holm by alpha recycling (Maurer & Bretz 2013): with r claims decided, every open
  claim is tested at alpha / (m - r) over all its looks so far; a new decision raises the others' level and the
  test repeats until nothing changes. A decided claim stays decided.
* The interval is the repeated confidence interval at the claim's current look and level: estimate +- the t
  quantile of the look's nominal level x SE. It covers the true effect at every look simultaneously, so it may
  be read whenever the claim stops.

`claim_test` is the per-claim test (the report can call it); `holm_verdicts` the family. The design's rounds
(`Design`, `next_round`, `run_design`) and its power (`detectable_effect`) are in tune/design_plan.py.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import numpy as np
from scipy import optimize, special, stats

ALPHA = 0.05
SPENDINGS = ("obf", "pocock")
KINDS = ("paired", "unpaired", "ranking")  # per-seed differences / two independent arms / arms x seeds blocked
DECIDED, OPEN, INCONCLUSIVE = "decided", "open", "inconclusive"


class DesignError(ValueError):
    """Bad designer input; the message names the value and what is allowed."""


# ---- alpha spending and group-sequential boundaries ----------------------------------------------------------
def spent(t: float, alpha: float, spending: str = "obf") -> float:
    """Lan-DeMets spending function: the two-sided alpha spent by information fraction t in [0, 1]."""
    t = min(max(float(t), 0.0), 1.0)
    if t <= 0:
        return 0.0
    if spending == "obf":
        return float(2 - 2 * stats.norm.cdf(stats.norm.ppf(1 - alpha / 2) / math.sqrt(t)))
    if spending == "pocock":
        return float(alpha * math.log(1 + (math.e - 1) * t))
    raise DesignError(f"spending must be one of {', '.join(SPENDINGS)}, got {spending!r}")


@lru_cache(maxsize=4096)
def _boundaries(fractions: tuple, alpha: float, spending: str) -> tuple:
    """Two-sided z boundaries z_1..z_K for increasing information fractions (the last may be < 1)."""
    grid_n = 401
    out = []
    density, points, prev_t = None, None, 0.0
    for k, t in enumerate(fractions):
        target = spent(t, alpha, spending) - spent(prev_t, alpha, spending)
        sd = math.sqrt(t - prev_t)
        if density is None:  # first look: S_1 ~ N(0, t_1)
            z = stats.norm.isf(max(target, 1e-300) / 2)
            b = z * math.sqrt(t)
        else:
            def cross(b, density=density, points=points, sd=sd):
                tail = stats.norm.sf((b - points) / sd) + stats.norm.cdf((-b - points) / sd)
                return float(np.trapezoid(density * tail, points))
            if target <= 1e-15:
                b = 40.0 * math.sqrt(t)
            else:
                hi = 40.0 * math.sqrt(t)
                b = optimize.brentq(lambda x: cross(x) - target, 1e-9, hi, xtol=1e-10) if cross(1e-9) > target else 1e-9
            z = b / math.sqrt(t)
        out.append(float(z))
        # density of S_k on the continuation region (-b, b), for the next look
        new_points = np.linspace(-b, b, grid_n)
        if density is None:
            new_density = stats.norm.pdf(new_points / math.sqrt(t)) / math.sqrt(t)
        else:
            kernel = stats.norm.pdf((new_points[:, None] - points[None, :]) / sd) / sd
            new_density = np.trapezoid(kernel * density[None, :], points, axis=1)
        density, points, prev_t = new_density, new_points, t
    return tuple(out)


def nominal_levels(seeds_at_looks: Sequence[int], seeds_max: int, alpha: float = ALPHA,
                   spending: str = "obf", kind: str | None = None, arms: int = 2) -> list[float]:
    """The two-sided nominal p-value level of each look (seed counts so far). A look at seeds_max spends what is
    left of alpha.

    kind None: from the z boundaries (known variance). kind paired/unpaired/ranking: calibrated to the look's own
    t (or F) test, whose p-values under the null have a joint law free of the unknown SD: CALIBRATION_DRAWS null
    experiments (fixed random seed) are simulated once per look schedule, and each look's level is the one at
    which the simulated first crossings spend exactly alpha(t_k) - alpha(t_(k-1)). With 3-10 seeds the variance
    estimates of successive looks share seeds, and the z boundaries alone let the error rate creep above alpha
    (about 6% at 5 looks in benchmarks/designer_power.py); calibration removes that. Where a look spends too
    little for the simulation to resolve (fewer than 50 simulated crossings) its z-based level is kept: it is
    exact at the first look and tiny later."""
    looks = [int(n) for n in seeds_at_looks]
    if any(b <= a for a, b in zip(looks, looks[1:])):
        raise DesignError(f"looks must be increasing seed counts, got {looks}")
    if looks and looks[-1] > seeds_max:
        raise DesignError(f"a look at {looks[-1]} seeds is past seeds_max {seeds_max}")
    fractions = tuple(round(n / seeds_max, 12) for n in looks)
    z_levels = _levels(fractions, round(float(alpha), 15), spending)
    if kind is None or len(looks) == 1:
        return list(z_levels)
    return list(_calibrated(kind, tuple(looks), int(seeds_max), int(arms), fractions, round(float(alpha), 15),
                            spending, z_levels))


CALIBRATION_DRAWS = 100_000


@lru_cache(maxsize=64)
def _null_pvalues(kind: str, n_max: int, arms: int) -> np.ndarray:
    """p-values (draws x seed counts 2..n_max) of the tests on null data, with a fixed random seed so levels are
    reproducible; any look schedule up to n_max picks its columns."""
    rng = np.random.default_rng(20261207)
    r = CALIBRATION_DRAWS if kind != "ranking" else CALIBRATION_DRAWS // 2
    looks = tuple(range(2, n_max + 1))
    out = np.empty((r, len(looks)))
    if kind == "paired":
        x = rng.standard_normal((r, n_max))
        s1, s2 = x.cumsum(axis=1), (x * x).cumsum(axis=1)
        for j, n in enumerate(looks):
            m = s1[:, n - 1] / n
            var = np.maximum(s2[:, n - 1] - n * m * m, 1e-300) / (n - 1)
            out[:, j] = 2 * special.stdtr(n - 1, -np.abs(m) / np.sqrt(var / n))
    elif kind == "unpaired":
        a, b = rng.standard_normal((r, n_max)), rng.standard_normal((r, n_max))
        for j, n in enumerate(looks):
            va, vb = a[:, :n].var(axis=1, ddof=1) / n, b[:, :n].var(axis=1, ddof=1) / n
            df = (va + vb) ** 2 / ((va ** 2 + vb ** 2) / (n - 1))
            t = (a[:, :n].mean(axis=1) - b[:, :n].mean(axis=1)) / np.sqrt(va + vb)
            out[:, j] = 2 * special.stdtr(df, -np.abs(t))
    elif kind == "ranking":
        x = rng.standard_normal((r, n_max, arms)).astype(np.float32)
        for j, n in enumerate(looks):
            y = x[:, :n, :]
            grand = y.mean(axis=(1, 2), keepdims=True)
            arm_m, seed_m = y.mean(axis=1, keepdims=True), y.mean(axis=2, keepdims=True)
            ss_arm = n * ((arm_m - grand) ** 2).sum(axis=(1, 2))
            ss_err = ((y - arm_m - seed_m + grand) ** 2).sum(axis=(1, 2))
            df1, df2 = arms - 1, (n - 1) * (arms - 1)
            out[:, j] = special.fdtrc(df1, df2, (ss_arm / df1) / np.maximum(ss_err / df2, 1e-30))
    else:
        raise DesignError(f"claim kind must be one of {', '.join(KINDS)}, got {kind!r}")
    return out


@lru_cache(maxsize=4096)
def _calibrated(kind: str, looks: tuple, seeds_max: int, arms: int, fractions: tuple, alpha: float, spending: str,
                z_levels: tuple) -> tuple:
    p = _null_pvalues(kind, seeds_max, arms)[:, [n - 2 for n in looks]]
    r = len(p)
    alive = np.ones(r, dtype=bool)
    levels, prev = [], 0.0
    for j, t in enumerate(fractions):
        spend = spent(t, alpha, spending) - prev
        prev += spend
        count = int(round(spend * r))
        pj = p[alive, j]
        if count < 50 or count >= len(pj):
            level = z_levels[j]
        else:
            level = float(np.partition(pj, count - 1)[count - 1])
        levels.append(level)
        alive &= p[:, j] > level
    return tuple(levels)


@lru_cache(maxsize=4096)
def _levels(fractions: tuple, alpha: float, spending: str) -> tuple:
    return tuple(float(math.erfc(z / math.sqrt(2))) for z in _boundaries(fractions, alpha, spending))


def planned_looks(seeds_min: int, seeds_max: int, looks: int) -> list[int]:
    """Seed counts of the planned looks: seeds_min, evenly spaced steps, seeds_max (duplicates dropped)."""
    if not (isinstance(seeds_min, int) and isinstance(seeds_max, int)) or seeds_min < 2 or seeds_max < seeds_min:
        raise DesignError(f"need integers 2 <= seeds_min <= seeds_max, got seeds_min={seeds_min!r}, "
                          f"seeds_max={seeds_max!r}")
    if not isinstance(looks, int) or looks < 1:
        raise DesignError(f"looks must be an integer >= 1, got {looks!r}")
    if looks == 1 or seeds_max == seeds_min:
        return [seeds_max]
    raw = [round(seeds_min + (seeds_max - seeds_min) * k / (looks - 1)) for k in range(looks)]
    return sorted(set(int(n) for n in raw))


# ---- one look's test statistic --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Look:
    """One look's test: p-value, estimate (mean difference; for ranking the best-vs-runner-up difference), its
    SE and df, and for ranking which arm is best."""

    n: int
    p: float
    estimate: float
    se: float
    df: float
    best: int | None = None
    arms: int = 2


def look_stat(kind: str, values, n: int, mode: str = "min") -> Look:
    """The test at one look over the first n seeds.

    paired: values is a 1-D array of per-seed differences (arm A - arm B); one-sample t.
    unpaired: values is (a, b), two 1-D arrays of per-seed values; Welch's t on the first n of each.
    ranking: values is a 2-D array seeds x arms (same seeds across arms); seed-blocked two-way ANOVA F for
        "the arms differ", with the best arm (lowest mean for mode min) and its paired difference to the runner-up.
    """
    if kind == "paired":
        d = np.asarray(values, dtype=float)[:n]
        m, sd = float(d.mean()), float(d.std(ddof=1))
        se = sd / math.sqrt(n)
        p = _t_p(m, se, n - 1)
        return Look(n, p, m, se, n - 1)
    if kind == "unpaired":
        a, b = (np.asarray(v, dtype=float)[:n] for v in values)
        va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
        se = math.sqrt(va + vb)
        df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1)) if va + vb > 0 else len(a) + len(b) - 2
        m = float(a.mean() - b.mean())
        return Look(n, _t_p(m, se, df), m, se, float(df))
    if kind == "ranking":
        x = np.asarray(values, dtype=float)[:n]
        s, k = x.shape
        grand = x.mean()
        ss_arm = s * float(((x.mean(axis=0) - grand) ** 2).sum())
        resid = x - x.mean(axis=0)[None, :] - x.mean(axis=1)[:, None] + grand
        ss_err = float((resid ** 2).sum())
        df1, df2 = k - 1, (s - 1) * (k - 1)
        if ss_err <= 0:
            p = 0.0 if ss_arm > 0 else 1.0
        else:
            p = float(special.fdtrc(df1, df2, (ss_arm / df1) / (ss_err / df2)))
        means = x.mean(axis=0)
        order = np.argsort(means if mode == "min" else -means, kind="stable")
        d = x[:, order[0]] - x[:, order[1]]
        return Look(n, p, float(d.mean()), float(d.std(ddof=1) / math.sqrt(s)), s - 1, int(order[0]), k)
    raise DesignError(f"claim kind must be one of {', '.join(KINDS)}, got {kind!r}")


def _t_p(m: float, se: float, df: float) -> float:
    if se <= 0 or not math.isfinite(se):
        return 0.0 if m != 0 else 1.0
    return float(2 * special.stdtr(df, -abs(m) / se))


# ---- one claim ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Verdict:
    """A claim's state after its latest look.

    state: decided (crossed its boundary at some look), open (more seeds may decide it), inconclusive (reached
    seeds_max undecided). direction: sign of the estimate when decided (-1 favours arm A for mode min), for
    ranking the best arm's index; 0 when undecided. interval: repeated confidence interval of the estimate at the
    latest look and the claim's level. level: the alpha the claim was tested at (Holm)."""

    state: str
    direction: int
    estimate: float
    interval: tuple
    n: int
    decided_at: int | None
    level: float
    p: float
    nominal: float


def claim_test(kind: str, values, looks: Sequence[int], seeds_max: int, alpha: float = ALPHA,
               spending: str = "obf", mode: str = "min") -> Verdict:
    """The designer's per-claim group-sequential test (pure; the report can call it).

    kind: "paired" (values: per-seed differences A - B, seed order), "unpaired" (values: (a, b) per-seed values of
    two arms) or "ranking" (values: seeds x arms matrix). looks: the seed counts at which the claim was looked at
    so far (increasing, the last = seeds available now). seeds_max: the planned maximum (information fraction 1).
    alpha: the claim's two-sided level (Holm's share in a family). Returns a Verdict: decided when any look's
    p-value fell at or below that look's nominal level."""
    return _verdict(kind, _look_stats(kind, values, looks, mode), looks, seeds_max, alpha, spending)


def _look_stats(kind: str, values, looks: Sequence[int], mode: str) -> list[Look]:
    looks = [int(n) for n in looks]
    if not looks:
        raise DesignError("claim_test needs at least one look")
    if looks[0] < 2:
        raise DesignError(f"a look needs at least 2 seeds, got {looks[0]}")
    return [look_stat(kind, values, n, mode) for n in looks]


def _verdict(kind: str, looked: list[Look], looks: Sequence[int], seeds_max: int, alpha: float,
             spending: str) -> Verdict:
    levels = nominal_levels(looks, seeds_max, alpha, spending, kind, looked[-1].arms)
    decided = next((lk for lk, level in zip(looked, levels) if lk.p <= level), None)
    last = looked[-1]
    q = float(-special.stdtrit(last.df, levels[-1] / 2)) if last.df > 0 else math.inf
    interval = (last.estimate - q * last.se, last.estimate + q * last.se)
    if decided is not None:
        direction = int(decided.best) if kind == "ranking" else int(np.sign(decided.estimate))
        return Verdict(DECIDED, direction, last.estimate, interval, last.n, decided.n, alpha, last.p, levels[-1])
    state = INCONCLUSIVE if last.n >= seeds_max else OPEN
    return Verdict(state, 0, last.estimate, interval, last.n, None, alpha, last.p, levels[-1])


# ---- a family of claims: Holm by alpha recycling --------------------------------------------------------------
@dataclass
class ClaimData:
    """What one claim measured so far: its kind, values (as claim_test takes them), its looks and seeds_max."""

    name: str
    kind: str
    values: object
    looks: list
    seeds_max: int
    mode: str = "min"


def holm_verdicts(claims: Sequence[ClaimData], alpha: float = ALPHA, spending: str = "obf",
                  decided: Sequence[str] = ()) -> dict[str, Verdict]:
    """Every claim's verdict, Holm across the family: with r claims decided, each other claim is tested at
    alpha / (m - r) over all its looks so far; repeated until no new claim is decided. `decided` names claims
    decided in earlier rounds (they stay decided even if a later look would not cross again)."""
    m = len(claims)
    if m == 0:
        return {}
    names = [c.name for c in claims]
    if len(set(names)) != m:
        raise DesignError(f"claim names must be unique, got {names}")
    done = set(decided) & set(names)
    verdicts: dict[str, Verdict] = {}
    looked = {c.name: _look_stats(c.kind, c.values, c.looks, c.mode) for c in claims}
    while True:
        level = alpha / (m - len(done)) if len(done) < m else alpha
        new = False
        for c in claims:
            v = _verdict(c.kind, looked[c.name], c.looks, c.seeds_max, level, spending)
            if c.name in done and v.state != DECIDED:
                # decided earlier at a lower level: it stays decided; report its latest estimate and interval
                v = Verdict(DECIDED, verdicts[c.name].direction if c.name in verdicts else int(np.sign(v.estimate)),
                            v.estimate, v.interval, v.n, v.decided_at or v.n, level, v.p, v.nominal)
            verdicts[c.name] = v
            if v.state == DECIDED and c.name not in done:
                done.add(c.name)
                new = True
        if not new:
            return verdicts


