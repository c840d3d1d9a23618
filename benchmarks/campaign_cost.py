"""What a campaign costs on a dedicated machine, from CPU time per training step (not wall time).

`tune/campaign.py --dry-run` times a few steps in wall-clock seconds, which on a shared machine scale with the
load. This script times the same steps (the trainer's own, as campaign.measure_step_seconds does) in CPU seconds
of this process with one torch thread, which a busy machine barely changes, and turns them into hours of a
machine with --cores cores running one single-threaded trial per core: per space and stratum the first round
(seeds_min seeds per configuration) and the design's cap (max_runs runs), with the same evaluation cost model as
the dry run (campaign.estimate_seconds).

    python benchmarks/campaign_cost.py --budget cpu --cores 2 [--spaces c_ladder,dropout] [--steps 6]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


from tune.campaign import shipped_spaces  # noqa: E402
from tune.plan import _cost_key, design_cap, estimate_seconds, measure_step_seconds, plan_compute  # noqa: E402
from tune.plan import resolve_plan  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget", default="cpu")
    p.add_argument("--spaces", default="", help="comma-separated; default every shipped space")
    p.add_argument("--cores", type=int, default=2, help="single-threaded trials run at once")
    p.add_argument("--steps", type=int, default=6, help="timed steps per distinct configuration")
    p.add_argument("--json", help="also write the per-stratum rows here")
    args = p.parse_args(argv)
    wanted = [s for s in args.spaces.split(",") if s]
    spaces = [s for s in shipped_spaces() if not wanted or s in wanted]
    timings, rows = {}, []
    total_first = total_cap = 0.0
    print(f"# budget {args.budget}, {args.cores} single-threaded trial(s) at once; CPU s/step timed with one "
          f"thread under a 1-min load of {os.getloadavg()[0]:.1f}")
    print("| space | stratum | d | ms CPU/step | first round runs | first round h | cap runs | cap h |")
    print("|---|---|---|---|---|---|---|---|")
    for space in spaces:
        plan = resolve_plan(space, args.budget)
        first = {"runs": 0, "seconds": 0.0, "timed": 1, "untimed": 0}
        for row in plan_compute(plan):
            key = _cost_key(row["cfg"])
            if key not in timings:
                timings[key] = measure_step_seconds(row["cfg"], 1, args.steps, clock=time.process_time)
            seconds = estimate_seconds(row, timings[key], args.cores)
            stratum = next(s for s in plan.strata if s.name == row["stratum"])
            cap = design_cap(plan, {"runs": row["runs"], "seconds": seconds, "timed": 1, "untimed": 0})
            share = row["runs"] / max(1, sum(r["runs"] for r in plan_compute(plan)))
            cap_runs = cap["runs"] * share if cap else row["runs"]
            cap_s = seconds * cap_runs / row["runs"]
            rows.append({"space": space, "stratum": row["stratum"], "dim": stratum.dim,
                         "ms_per_step": 1e3 * timings[key], "runs": row["runs"], "hours": seconds / 3600,
                         "cap_runs": cap_runs, "cap_hours": cap_s / 3600})
            print(f"| {space} | {row['stratum']} | {stratum.dim} | {1e3 * timings[key]:.1f} | {row['runs']} | "
                  f"{seconds / 3600:.2f} | {cap_runs:.0f} | {cap_s / 3600:.2f} |", flush=True)
            first["runs"] += row["runs"]
            first["seconds"] += seconds
            total_first += seconds
            total_cap += cap_s
    print(f"\ntotal: first rounds {total_first / 3600:.2f} h, at the designs' caps {total_cap / 3600:.2f} h "
          f"on {args.cores} core(s) (training and evaluation; Ray start-up and feature-network training not counted)")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
