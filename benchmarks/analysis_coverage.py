"""Coverage of the analysis' 95% intervals on planted data, as tabled in docs/ANALYSIS.md.

Means over 2, 3 and 5 seeds; null ablations (one, and five per report); c* on a one-per-decade grid with an
asymmetric curve; an optimum below the searched range; the power law's b with and without scatter of the data
sets about it. Give another checkout's root to measure its analysis/ instead (e.g. a git worktree of an older
commit; its fixtures may live in analysis/synthetic.py).

    python benchmarks/analysis_coverage.py [CHECKOUT_ROOT] [--reps 400]
"""
import argparse
import math
import sys
import time
from pathlib import Path

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("root", nargs="?", default=str(Path(__file__).resolve().parents[1]))
parser.add_argument("--reps", type=int, default=400)
args = parser.parse_args()
sys.path[:0] = [args.root]

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

try:
    from tests import synthetic  # noqa: E402
except ImportError:  # older checkouts kept the fixtures in the package
    from analysis import synthetic  # noqa: E402
import analysis  # noqa: E402
from analysis.ablations import ABLATIONS, analyze_ablations  # noqa: E402
from analysis.c_scaling import estimate_c_star  # noqa: E402
from analysis.stats import mean_ci  # noqa: E402

REPS = args.reps
NULLS = {"loss.teacher": ("ema", 0.0), "loss.weighting": ("uniform", 0.0), "network.fourier_scale": (16.0, 0.0),
         "loss.noise_schedule": ("uniform", 0.0), "loss.metric": ("l2", 0.0)}


def c_rows(dataset, grid, fd_of_c, rng, seeds=3, noise=0.0):
    return [synthetic.trial_row("x", f"{dataset}-{c:.6g}-{s}", s, dataset, final_fd=fd_of_c(c) + rng.normal(0, noise),
                                config={"loss.huber_c": float(c)}) for c in grid for s in range(seeds)]


def main() -> None:
    rng = np.random.default_rng(123)
    start = time.time()
    print("analysis from", Path(analysis.__file__).parent)
    print("mean_ci: coverage of the true mean (normal data, sd 1)")
    for n in (2, 3, 5):
        hits = sum(mean_ci(rng.normal(0, 1, n), n_boot=1000, rng=rng).contains(0.0) for _ in range(REPS))
        print(f"  {n} seeds: {hits}/{REPS} = {hits / REPS:.3f}")
    one = mean_ci([3.0], n_boot=1000)
    print(f"  1 seed: value {one.value}, interval [{one.lo}, {one.hi}]")

    print("one null ablation (no effect): share of reproduced/contradicted verdicts")
    for seeds in (3, 5):
        reps = REPS // 2
        wrong = 0
        for r in range(reps):
            rows = synthetic.planted_ablations(rng, {"loss.teacher": ("ema", 0.0)}, seeds=seeds, noise=1.0)
            table = analyze_ablations(pd.DataFrame(rows), ablations=ABLATIONS[:1], n_boot=500, min_seeds=3, seed=r)
            wrong += table["verdict"].isin(["reproduced", "contradicted"]).any()
        print(f"  {seeds} vs {seeds} seeds: {wrong}/{reps} = {wrong / reps:.3f}")

    print("five null ablations in one report, 3 vs 3 seeds: share of reports with any verdict")
    reps = REPS // 4
    wrong = 0
    for r in range(reps):
        rows = synthetic.planted_ablations(rng, NULLS, seeds=3, noise=1.0)
        wrong += analyze_ablations(pd.DataFrame(rows), n_boot=500, min_seeds=3, seed=r)["verdict"].isin(
            ["reproduced", "contradicted"]).any()
    print(f"  {wrong}/{reps} = {wrong / reps:.3f}")

    print("c* on a one-per-decade grid (1e-4..1), curve 10x steeper below c* than above, FD noise 0.01")
    grid = 10.0 ** np.arange(-4, 1)
    hits = total = 0
    factors = []
    for _ in range(REPS // 8):
        c_star = 10 ** rng.uniform(-3, -1.5)

        def fd(c, c_star=c_star):
            u = math.log(c / c_star)
            return 10 + (3.0 * u * u if u < 0 else 0.3 * u * u)

        per = estimate_c_star(pd.DataFrame(c_rows("digits-8", grid, fd, rng, noise=0.01)), n_boot=300).per_dataset
        if per.empty:
            continue
        row = per.iloc[0]
        total += 1
        hits += bool(row["c_lo"] <= c_star <= row["c_hi"])
        if np.isfinite(row["c_star"]):
            factors.append(max(row["c_star"] / c_star, c_star / row["c_star"]))
    print(f"  covered {hits}/{total}; the vertex is off by a median factor {np.median(factors):.2f}")

    print("an optimum below the searched range (true c* = 1e-5, grid 1e-4..1)")
    rows = c_rows("digits-8", grid, lambda c: 10 + math.log(c / 1e-5) ** 2, rng, noise=0.1)
    per = estimate_c_star(pd.DataFrame(rows), n_boot=300).per_dataset
    print("  ", per[["c_star", "c_lo", "c_hi", "at_edge"]].to_dict("records"))

    print("b: 4 data sets, 3 seeds, 7 values of c spaced 2x, FD noise 0.3; data sets scattered about the law")
    for sd in (0.0, 0.3):
        hits = total = 0
        for _ in range(REPS // 10):
            rows = []
            for dataset in ("digits-8", "patches-16", "patches-32", "patches-64"):
                c_star = 0.00054 * synthetic.DATASETS[dataset] ** 0.5 * math.exp(rng.normal(0, sd))
                c_grid = c_star * 2.0 ** (np.arange(-3, 4) + rng.uniform(-0.5, 0.5))
                rows += c_rows(dataset, c_grid, lambda c, cs=c_star: 10 + 4 * math.log(c / cs) ** 2, rng, noise=0.3)
            fit = estimate_c_star(pd.DataFrame(rows), n_boot=300).fit
            if fit is None or not np.isfinite(fit.b_lo):
                continue
            total += 1
            hits += fit.b_lo <= 0.5 <= fit.b_hi
        print(f"  scatter sd {sd} in log c*: b covered {hits}/{total}")
    try:
        from analysis.stats import difference_stats, t_interval
    except ImportError:  # older checkouts
        difference_stats = None
    if difference_stats is not None:
        print("paired t, 3 vs 3 null comparisons, 10 x REPS reports of 5: one at 95%, any of 5 uncorrected / "
              "Bonferroni")
        reports, single, uncorrected, corrected = 10 * REPS, 0, 0, 0
        for _ in range(reports):
            flags = []
            for _ in range(5):
                d = difference_stats(rng.normal(0, 1, 3), rng.normal(0, 1, 3), range(3), range(3))
                flags.append([not lo <= 0 <= hi for lo, hi in (t_interval(d["value"], d["se"], d["df"], level)
                                                                for level in (0.95, 0.99))])
            single += flags[0][0]
            uncorrected += any(f[0] for f in flags)
            corrected += any(f[1] for f in flags)
        print(f"  {single / reports:.3f}; {uncorrected / reports:.3f} / {corrected / reports:.3f}")
    print(f"({time.time() - start:.0f} s)")


if __name__ == "__main__":
    main()
