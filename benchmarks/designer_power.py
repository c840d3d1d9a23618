"""The experiment designer's error rate, power and seeds spent, by simulation through tune/designer.py and tune/design_plan.py.

No training: each run is drawn from a known distribution (tune.design_plan.gaussian_trial: a seed effect shared by
every arm of a seed, arms correlated 0.5, each arm's seed-to-seed SD 1, so an effect of 1 is one seed-SD). The
family of claims mirrors the shipped spaces' declared claims: five ablation contrasts that share the paper's
baseline arm, Q2's dropout optimum for two objectives, Q3's ranking over seven curricula and c* for two data sets.
Printed, from this one run:

1. null: every claim false; the family-wise rate of false verdicts over all rounds at 2, 3 and 5 looks;
2. power: one claim with a planted effect of 1 or 2 seed-SDs among null ones; its power and the seeds it spent,
   sequential (seeds_min..seeds_max in rounds) against a fixed design with the same maximum;
3. campaign: a planted mix (some claims true at 1 or 2 SDs, some null); runs per correctly decided claim and the
   false-verdict rate of the sequential design against the fixed 3-seed design, and their ratio.

    python benchmarks/designer_power.py --reps 2000        # the figures in benchmarks/RESULTS.md
    python benchmarks/designer_power.py --quick            # a minute: proves the script end to end
"""
from __future__ import annotations

import argparse
import math
import time

import numpy as np

from tune.design_plan import ClaimSpec, Design, gaussian_trial, run_design
from tune.designer import DECIDED


def family() -> list[ClaimSpec]:
    contrasts = [ClaimSpec(name, "paired", ("paper", alt)) for name, alt in
                 [("ema_teacher", "ema"), ("metric", "l2"), ("noise_schedule", "uniform_noise"),
                  ("weighting", "uniform_w"), ("fourier_scale", "fourier16")]]
    optima = [ClaimSpec(f"dropout_{obj}", "paired", (f"{obj}_best", f"{obj}_zero")) for obj in ("cm", "dm")]
    ranking = [ClaimSpec("curriculum", "ranking", tuple(f"curr{i}" for i in range(7)))]
    cstar = [ClaimSpec(f"c_star_{d}", "paired", (f"{d}_best", f"{d}_paper")) for d in ("digits", "patches8")]
    return contrasts + optima + ranking + cstar


def simulate(design: Design, effects: dict, reps: int, rng: np.random.Generator) -> dict:
    """Mean outcomes over reps: per claim P(decided in the right direction), P(false verdict), seeds; runs."""
    specs = family()
    truth = {}
    for s in specs:
        if s.kind == "ranking":
            vals = [effects.get(a, 0.0) for a in s.arms]
            truth[s.name] = int(np.argmin(vals)) if len(set(vals)) > 1 else None
        else:
            diff = effects.get(s.arms[0], 0.0) - effects.get(s.arms[1], 0.0)
            truth[s.name] = int(np.sign(diff)) if diff else None
    right = {s.name: 0 for s in specs}
    seeds = {s.name: 0 for s in specs}
    family_false, runs, decided_right = 0, 0, 0
    for _ in range(reps):
        res = run_design(specs, design, gaussian_trial(effects, rng))
        runs += res.runs
        any_false = False
        for s in specs:
            v = res.verdicts[s.name]
            seeds[s.name] += res.seeds[s.name]
            if v.state != DECIDED:
                continue
            if truth[s.name] is not None and v.direction == truth[s.name]:
                right[s.name] += 1
                decided_right += 1
            else:
                any_false = True
        family_false += any_false
    return {"fwer": family_false / reps, "runs": runs / reps, "right": {k: v / reps for k, v in right.items()},
            "seeds": {k: v / reps for k, v in seeds.items()}, "decided_right": decided_right / reps}


def se(p: float, reps: int) -> float:
    return math.sqrt(max(p * (1 - p), 1e-12) / reps)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=2000)
    p.add_argument("--seeds-min", type=int, default=3)
    p.add_argument("--seeds-max", type=int, default=10)
    p.add_argument("--spending", default="obf")
    p.add_argument("--quick", action="store_true", help="100 replications")
    args = p.parse_args()
    reps = 100 if args.quick else args.reps
    lo, hi = args.seeds_min, args.seeds_max
    t0 = time.time()
    m = len(family())
    print(f"family: {m} declared claims; runs are N(effect, 1) per seed, arms correlated 0.5; {reps} replications; "
          f"seeds {lo}..{hi}, {args.spending} spending, Holm over the claims, alpha 0.05\n")

    print("1. null (every claim false): family-wise rate of false verdicts over all rounds")
    for looks in (2, 3, 5):
        d = Design(lo, hi, looks, spending=args.spending)
        r = simulate(d, {}, reps, np.random.default_rng(100 + looks))
        print(f"   {looks} looks at {d.plan} seeds: {r['fwer']:.3f} +- {se(r['fwer'], reps):.3f}"
              f"   (runs per replication {r['runs']:.0f})")
    fixed_max = Design(hi, hi, 1)
    r = simulate(fixed_max, {}, reps, np.random.default_rng(99))
    print(f"   fixed {hi} seeds: {r['fwer']:.3f} +- {se(r['fwer'], reps):.3f}")

    print("\n2. power: one planted claim (metric: L2 worse by the effect) among null ones")
    print(f"   {'effect':>8} {'design':>24} {'power':>7} {'seeds of that claim':>20} {'runs, all claims':>17}")
    for effect in (1.0, 2.0):
        for label, d in ((f"{args.spending} {lo}..{hi}, 3 looks", Design(lo, hi, 3, spending=args.spending)),
                         (f"{args.spending} {lo}..{hi}, 5 looks", Design(lo, hi, 5, spending=args.spending)),
                         (f"pocock {lo}..{hi}, 5 looks", Design(lo, hi, 5, spending="pocock")),
                         (f"fixed {hi}", fixed_max)):
            r = simulate(d, {"l2": effect}, reps, np.random.default_rng(int(effect * 10)))
            print(f"   {effect:>6.0f}SD {label:>24} {r['right']['metric']:>7.3f} {r['seeds']['metric']:>20.2f} "
                  f"{r['runs']:>17.1f}")

    print("\n3. planted-effect campaign: 2 ablations worse by 2 SD, 2 by 1 SD, a dropout optimum 1.5 SD better, one "
          "curriculum 2 SD better, c* on digits 1 SD better; the other 3 claims null")
    effects = {"l2": 2.0, "uniform_w": 2.0, "ema": 1.0, "uniform_noise": 1.0, "cm_best": -1.5, "curr3": -2.0,
               "digits_best": -1.0}
    rows = []
    for label, d in ((f"sequential {lo}..{hi}, 3 looks", Design(lo, hi, 3, spending=args.spending)),
                     ("fixed 3 seeds", Design(3, 3, 1))):
        r = simulate(d, effects, reps, np.random.default_rng(7))
        nul = simulate(d, {}, reps, np.random.default_rng(8))
        per = r["runs"] / r["decided_right"] if r["decided_right"] else math.inf
        rows.append(per)
        print(f"   {label:>26}: runs {r['runs']:.1f}, correctly decided claims {r['decided_right']:.2f} of 7 true, "
              f"runs per decided claim {per:.1f}; false verdicts: planted {r['fwer']:.3f}, "
              f"null family {nul['fwer']:.3f}")
    print(f"   ratio, runs per decided claim, sequential / fixed 3 seeds: {rows[0] / rows[1]:.3f}")
    print(f"\n({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
