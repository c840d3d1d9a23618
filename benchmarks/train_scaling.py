"""Data-parallel scaling of one iCT run under Ray Train: images/s with 1 and 2 workers, and start-up cost.

    python benchmarks/train_scaling.py [--preset digits] [--steps 60] [--warmup 10] [--workers 1 2]
                                       [--gpus-per-worker 1] [--cpus-per-worker 1] [--set key=value ...]

All runs happen in one invocation on one Ray (local, or RAY_ADDRESS), with the same preset and the same global
batch (strong scaling), so the printed ratios compare like with like. Throughput is measured from the run's
metrics.jsonl (one row per step) after `--warmup` steps; start-up is the wall time from the fit() call to the
end of the first optimizer step, split into worker-group start (fit() -> adapter entered on rank 0) and trainer
set-up plus first step. On a shared or 2-core machine the numbers are noisy: compare ratios, not absolutes.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from ict_core.config import load_config
from tune.ray_train import run_ray_train
from tune.train_worker import WORKERS_FILE


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def measure(cfg, workers: int, gpus_per_worker: float, cpus_per_worker: float | None, storage: str,
            warmup: int) -> dict:
    t_fit = time.time()
    out = run_ray_train(cfg, workers=workers, gpus_per_worker=gpus_per_worker, cpus_per_worker=cpus_per_worker,
                        storage=storage, name=f"scaling_w{workers}")
    wall = time.time() - t_fit
    run_dir = Path(out["run_dir"])
    steps = {row["step"]: row for row in _rows(run_dir / "metrics.jsonl")}
    rank0 = next(w for w in _rows(run_dir / WORKERS_FILE) if w["rank"] == 0)
    first, last = steps[min(steps)], steps[max(steps)]
    start = steps[warmup] if warmup in steps else first
    images = last["images_seen"] - start["images_seen"]
    seconds = last["elapsed_s"] - start["elapsed_s"]
    return {
        "workers": workers,
        "cpus_per_worker": out["cpus_per_worker"],
        "gpus_per_worker": gpus_per_worker,
        "images_per_s": images / seconds if seconds > 0 else float("nan"),
        "group_start_s": rank0["start_unix"] - t_fit,
        "setup_and_first_step_s": first["elapsed_s"],
        "startup_s": rank0["start_unix"] - t_fit + first["elapsed_s"],
        "total_wall_s": wall,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="digits")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps per run")
    parser.add_argument("--warmup", type=int, default=10, help="steps left out of the throughput")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--gpus-per-worker", type=float, default=0)
    parser.add_argument("--cpus-per-worker", type=float, default=None,
                        help="default: the free CPUs split evenly, so every run uses the whole machine; 1 compares "
                             "workers of equal size (torch threads follow the CPUs of a worker)")
    args = parser.parse_args(argv)
    if args.warmup >= args.steps:
        parser.error(f"--warmup must be below --steps, got {args.warmup} >= {args.steps}")

    cfg = load_config(args.preset, [
        f"train.total_steps={args.steps}", "train.log_every=1", "eval.every=0", "eval.num_samples=10",
        "eval.grid=false", *args.overrides,
    ])
    import ray

    started = False
    if not ray.is_initialized():
        if os.environ.get("RAY_ADDRESS"):
            ray.init()
        else:
            ray.init(address="local", include_dashboard=True, dashboard_host="127.0.0.1", log_to_driver=False)
        started = True
    try:
        with tempfile.TemporaryDirectory(prefix="ict_scaling_") as storage:
            results = [measure(cfg, w, args.gpus_per_worker, args.cpus_per_worker, storage, args.warmup) for w in args.workers]
    finally:
        if started:
            ray.shutdown()

    device = f"{args.gpus_per_worker:g} GPU/worker" if args.gpus_per_worker else "CPU"
    print(f"\npreset {args.preset}, global batch {cfg.train.batch_size}, {args.steps} steps "
          f"(throughput after step {args.warmup}), {device}")
    print(f"{'workers':>7} {'CPU/w':>6} {'images/s':>10} {'start-up s':>11} {'(group':>8} {'+ setup/step 1)':>16} "
          f"{'wall s':>8}")
    for r in results:
        print(f"{r['workers']:>7} {r['cpus_per_worker']:>6g} {r['images_per_s']:>10.1f} {r['startup_s']:>11.1f} "
              f"{r['group_start_s']:>8.1f} {r['setup_and_first_step_s']:>16.1f} {r['total_wall_s']:>8.1f}")
    base = results[0]
    for r in results[1:]:
        speedup = r["images_per_s"] / base["images_per_s"]
        print(f"ratio images/s {r['workers']} vs {base['workers']} worker(s): {speedup:.2f}x "
              f"(scaling efficiency {speedup * base['workers'] / r['workers']:.0%}); "
              f"start-up ratio {r['startup_s'] / base['startup_s']:.2f}x")
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
