"""How much of a search's wall time goes to training, and what the driver costs per trial.

    python benchmarks/tune_overhead.py [--trials 8] [--steps 400] [--noop-trials 200]

1. A small real search (grid over loss.huber_c on digits, tiny U-Net, 2 concurrent trials) through
   tune.launch.run_search on a local Ray started beforehand. Utilization = sum of in-trial training seconds
   (trials.parquet wall_s, which includes the trainer's evaluations) / (search wall x concurrent slots); aim >= 0.85.
2. 200 no-op trials through the same Tuner settings and the same driver callbacks (Parquet after every trial,
   progress lines): driver overhead per trial = wall x slots / trials; aim <= 0.5 s.
Both numbers come from one run of this script; nothing is asserted.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from ict_core.records import COMPLETED, TRIALS_FILE


SPACE = """name: overhead
fixed: {{data.name: digits, network.channels: 8, network.channel_mult: [1], network.dropout: 0.0,
        train.total_steps: {steps}, train.batch_size: 32, optim.lr: 1.0e-3, train.ema_rate: 0.99,
        train.log_every: 1000, eval.every: {every}, eval.num_samples: 200, eval.grid: false}}
params:
  loss.huber_c: {{type: grid, values: {values}}}
search: {{algorithm: grid}}
metric: fd
mode: min
seeds: 1
max_concurrent: 2
"""


def noop_trial(config, runs_root):
    """Writes a one-line run folder and reports one final result shaped like tune.trial's, so the driver
    callbacks do their full work (rows built from the run folder, Parquet after every trial)."""
    from ray import tune as rt

    from ict_core.config import Config
    from tune.store import seed_folder

    cfg = Config().with_overrides({"loss.huber_c": config["loss.huber_c"]})
    run = Path(runs_root) / seed_folder("all", rt.get_context().get_trial_id(), 0)
    run.mkdir(parents=True, exist_ok=True)
    cfg.save(run / "config.json")
    (run / "summary.json").write_text(json.dumps({"status": COMPLETED, "fd": config["loss.huber_c"], "step": 1,
                                                  "wall_s": 0.0}))
    rt.report({"fd": config["loss.huber_c"], "step": 1, "trial_step": 1, "seed": 0, "status": COMPLETED,
               "final": True, "seeds_done": 1})


def real_search(tmp: Path, trials: int, steps: int) -> dict:
    import pandas as pd

    from tune.launch import run_search

    values = [round(0.002 * 2 ** i, 6) for i in range(trials)]
    space = tmp / "overhead.yaml"
    space.write_text(SPACE.format(steps=steps, every=max(1, steps // 2), values=values))
    t0 = time.time()
    exp_dir = run_search(space, storage=tmp / "results", name="real", quiet=True)
    wall = time.time() - t0
    df = pd.read_parquet(exp_dir / TRIALS_FILE)
    slots = 2
    return {"trials": len(df), "wall_s": wall, "train_s": float(df["wall_s"].sum()), "slots": slots,
            "utilization": float(df["wall_s"].sum()) / (wall * slots)}


def noop_search(tmp: Path, trials: int) -> dict:
    from ray import tune as rt

    from tune.progress import ParquetCallback, ProgressCallback

    exp_dir = tmp / "noop"
    runs_root = str(exp_dir / "runs")
    callbacks = [ParquetCallback(str(exp_dir), "noop", "noop", {"name": "all", "fixed": {}}, 1, runs_root,
                                 planned=trials),
                 ProgressCallback("all", ["loss.huber_c"], "fd", total=trials, quiet=True)]
    tuner = rt.Tuner(rt.with_resources(rt.with_parameters(noop_trial, runs_root=runs_root), {"cpu": 1}),
                     param_space={"loss.huber_c": rt.grid_search([1e-4 * (i + 1) for i in range(trials)])},
                     tune_config=rt.TuneConfig(metric="fd", mode="min", max_concurrent_trials=2,
                                               reuse_actors=True),
                     run_config=rt.RunConfig(name="noop", storage_path=str(tmp / "ray"), callbacks=callbacks,
                                             verbose=0))
    t0 = time.time()
    tuner.fit()
    wall = time.time() - t0
    import pandas as pd

    rows = len(pd.read_parquet(exp_dir / TRIALS_FILE))
    return {"trials": trials, "rows": rows, "wall_s": wall, "per_trial_s": wall * 2 / trials}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--noop-trials", type=int, default=200)
    args = parser.parse_args()
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    import ray

    from tune.tuners import start_ray

    with tempfile.TemporaryDirectory(prefix="tune-overhead-") as tmp:
        t0 = time.time()
        start_ray()
        print(f"ray start: {time.time() - t0:.1f} s on {ray.cluster_resources().get('CPU', 0):g} CPU")
        try:
            real = real_search(Path(tmp), args.trials, args.steps)
            print(f"real search: {real['trials']} trials in {real['wall_s']:.1f} s wall, {real['train_s']:.1f} s "
                  f"of in-trial training on {real['slots']} slots -> utilization {real['utilization']:.2f} "
                  f"(aim >= 0.85)")
            noop = noop_search(Path(tmp), args.noop_trials)
            print(f"no-op search: {noop['trials']} trials ({noop['rows']} Parquet rows) in {noop['wall_s']:.1f} s "
                  f"-> driver overhead {noop['per_trial_s']:.3f} s per trial slot (aim <= 0.5)")
        finally:
            ray.shutdown()


if __name__ == "__main__":
    main()
