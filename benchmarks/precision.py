"""Error of iCT's teacher-student output difference under bf16, against fp32, over the whole N=1281 grid.

For every interval i of the grid, D_i = f(x + sigma_{i+1} z, sigma_{i+1}) - f(x + sigma_i z, sigma_i) is
computed in fp32, under bf16 autocast, and under bf16 with the input scaling, noise embedding and first
convolution in fp32 (train.precision=bf16_stem); the table gives ||D^p - D^fp32|| / ||D^fp32|| at a few
sigmas and its maximum over the grid (ict_core.precision). The network is a trained checkpoint: --run names a
run folder, otherwise a digits model is trained for --train-steps steps first.

    python benchmarks/precision.py --train-steps 400
    python benchmarks/precision.py --run runs/cifar10-... --device cuda
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile

import torch

from ict_core.config import ConfigError, load_config
from ict_core.precision import MAX_RELATIVE_ERROR, PRECISIONS, passing_precisions, relative_errors
from ict_core.schedule import karras_sigmas

SHOWN_SIGMAS = (0.002, 0.011, 0.14, 1.9, 12.7, 80.0)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", default=None, help="run folder of a trained model (default: train a digits model)")
    p.add_argument("--preset", default="digits", help="preset trained when --run is not given")
    p.add_argument("--train-steps", type=int, default=400)
    p.add_argument("--images", type=int, default=16, help="images per sigma")
    p.add_argument("--points", type=int, default=1281, help="grid size N")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--json", action="store_true", help="print the per-interval errors as JSON as well")
    return p.parse_args(argv)


def trained_run(preset: str, steps: int) -> str:
    from ict_core.trainer import train

    run_dir = tempfile.mkdtemp(prefix="ict-precision-")
    cfg = load_config(preset, [f"train.total_steps={steps}", "eval.every=0", "eval.grid=false",
                               f"train.log_every={max(steps, 1)}"])
    train(cfg, run_dir=run_dir)
    return run_dir


def main(argv=None) -> int:
    args = parse_args(argv)
    from ict_core.data import load_dataset
    from ict_core.cli.sample import load_run

    try:
        run = args.run or trained_run(args.preset, args.train_steps)
        cfg, net, ckpt, _ = load_run(run, "student", args.device)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = False  # the fp32 reference is true fp32
    torch.backends.cudnn.allow_tf32 = False
    dataset = load_dataset(cfg.data, seed=cfg.data.seed)
    images = dataset.heldout[: args.images].to(args.device)
    p = cfg.precond
    sigmas = karras_sigmas(args.points, p.sigma_min, p.sigma_max, p.rho).float()
    errors = {name: relative_errors(net, images, sigmas, name) for name in PRECISIONS if name != "fp32"}
    shown = [int((sigmas[:-1] - s).abs().argmin()) for s in SHOWN_SIGMAS]
    print(f"# {cfg.data.name} checkpoint {ckpt}, {args.images} images, N={args.points}, device {args.device}")
    print("| precision | " + " | ".join(f"sigma {float(sigmas[i]):.3g}" for i in shown) + " | max over grid | median |")
    print("|---" * (len(shown) + 3) + "|")
    for name, err in errors.items():
        cells = " | ".join(f"{float(err[i]):.3g}" for i in shown)
        print(f"| {name} | {cells} | {float(err.max()):.3g} | {float(err.median()):.3g} |")
    passing = passing_precisions(errors)
    choice = passing[1] if len(passing) > 1 else "fp32"  # the fastest that passes: bf16, then bf16_stem
    print(f"# below {MAX_RELATIVE_ERROR:.0%} at every sigma: {', '.join(passing)}; default precision: {choice}")
    if args.json:
        print(json.dumps({name: err.tolist() for name, err in errors.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
