"""FD of the evaluation EMA and of the raw student at each evaluation, with and without the EMA warm-up.

Trains the same configuration twice (same seed, so the student's trajectory is identical): once with a
constant evaluation-EMA rate (train.ema_rampup=0, which config validation refuses for runs, so it is set here
directly) and once with the warm-up of ict_core/ema.py. Prints one table row per evaluation step.

    python benchmarks/ema_warmup.py --preset digits
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
from pathlib import Path

from ict_core.config import load_config, resolve_config
from ict_core.ema import initial_weight_share
from ict_core.data import load_dataset
from ict_core.trainer import train


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="digits")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    cfg = load_config(args.preset, args.overrides)
    cfg = resolve_config(cfg, load_dataset(cfg.data, seed=cfg.data.seed).dim)  # nothing left to re-validate
    rows = {}
    for rampup in (0.0, cfg.train.ema_rampup):
        run_cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, ema_rampup=rampup))
        run_dir = Path(tempfile.mkdtemp(prefix="ict-ema-"))
        train(run_cfg, run_dir=run_dir)
        for line in (run_dir / "evals.jsonl").read_text().splitlines():
            row = json.loads(line)
            rows.setdefault(row["step"], {})[rampup] = row
    warm = cfg.train.ema_rampup
    print(f"# {args.preset}, train.ema_rate={cfg.train.ema_rate}; fd = evaluation EMA, fd_student = raw student")
    print(f"| step | init share, constant | fd, constant rate | init share, ramp {warm} | fd, ramp {warm} | fd_student |")
    print("|---|---|---|---|---|---|")
    for step, by in sorted(rows.items()):
        const, ramp = by[0.0], by[warm]
        print(f"| {step} | {initial_weight_share(step, cfg.train.ema_rate, 0.0):.1%} | {const['fd']:.2f} +- {const['fd_se']:.2f} "
              f"| {initial_weight_share(step, cfg.train.ema_rate, warm):.1e} | {ramp['fd']:.2f} +- {ramp['fd_se']:.2f} "
              f"| {ramp['fd_student']:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
