"""Wall time of the test tiers: the everyday tier (`pytest -m "not slow"`) against its budget of 3 minutes on 2
cores, and with --full the whole suite (what CI runs) against the everyday tier.

    .venv/bin/python benchmarks/suite_tiers.py            # the everyday tier only (about 3 minutes)
    .venv/bin/python benchmarks/suite_tiers.py --full     # both tiers (the whole suite takes several times longer)

Each tier runs once, in a fresh pytest process with OMP_NUM_THREADS=1. Besides the wall time it prints the CPU time
of pytest and the processes it waited for, and the load average before the run: on a machine shared with other
jobs the wall time grows with the load, the CPU time much less.
"""
from __future__ import annotations

import argparse
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BUDGET_S = 180.0


def run_tier(args: list[str]) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    load = os.getloadavg()[0]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args], cwd=REPO, env=env,
                          capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    last = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr[-500:]
    passed = re.search(r"(\d+) passed", last)
    return {"wall": wall, "cpu": cpu, "load": load, "code": proc.returncode, "summary": last,
            "passed": int(passed.group(1)) if passed else 0}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true", help="also run the whole suite")
    args = parser.parse_args(argv)
    fast = run_tier(["-m", "not slow"])
    print(f"everyday tier: {fast['summary']}")
    print(f"  wall {fast['wall']:.0f} s, CPU {fast['cpu']:.0f} s, load average before {fast['load']:.1f}; "
          f"wall / {BUDGET_S:.0f} s budget = {fast['wall'] / BUDGET_S:.2f}")
    code = fast["code"]
    if args.full:
        full = run_tier(["--durations=25"])
        print(f"whole suite: {full['summary']}")
        print(f"  wall {full['wall']:.0f} s, CPU {full['cpu']:.0f} s, load average before {full['load']:.1f}; "
              f"whole / everyday = {full['wall'] / fast['wall']:.1f}x wall, {full['passed']} / {fast['passed']} tests")
        code = code or full["code"]
    return code


if __name__ == "__main__":
    sys.exit(main())
