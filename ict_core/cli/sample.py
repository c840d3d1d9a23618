"""Command line: draw images from a trained run.

    python -m ict_core.cli.sample RUN_DIR --num N --steps 1|2 [--seed S] [--weights ema|student] --out FILE.npz
                              [--grid FILE.png]

RUN_DIR is a run folder written by ict_core.train (its config.json and newest checkpoint are used) or one of
its checkpoint folders. The .npz holds `images`: N x C x H x W float32 in [-1, 1]. Consistency models sample
in one step (sigma_max) or two (sigma_max, then eval.sigma_mid: CM Algorithm 1); diffusion runs sample with
Heun's method in eval.diffusion_steps steps, and --steps is not accepted for them. Bad input exits with code 2.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from . import bad_input
from ..errors import BadInput
from ..config import ConfigError, TrainConfig, choices, from_dict

_CHUNK = 1000  # images per sampler call


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ict_core.cli.sample", description="Sample images from a trained run.")
    parser.add_argument("run_dir", metavar="RUN_DIR", help="run folder (or one of its checkpoint folders)")
    parser.add_argument("--num", type=int, required=True, help="number of images")
    parser.add_argument("--steps", type=int, default=None, help="consistency sampling steps: 1 or 2 (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    parser.add_argument("--weights", choices=("ema", "student"), default="ema",
                        help="evaluation EMA (default) or the raw student")
    parser.add_argument("--out", required=True, help="output .npz file")
    parser.add_argument("--grid", default=None, help="also write the first 64 images as a PNG grid here")
    parser.add_argument("--device", choices=choices(TrainConfig, "device"), default="auto")
    return parser


def load_run(run_dir: str | Path, weights: str = "ema", device: str = "cpu"):
    """(config, network in eval mode on `device`, checkpoint folder) of a run folder or checkpoint folder."""
    from ..data import load_dataset
    from ..network import build_network
    from ..rundir import CONFIG, latest_checkpoint, load_checkpoint

    path = Path(run_dir)
    if not path.exists():
        raise ConfigError(f"RUN_DIR {str(path)!r} does not exist")
    try:
        ckpt = latest_checkpoint(path)
    except FileNotFoundError as err:
        raise ConfigError(str(err).replace("resume_from=", "RUN_DIR ")) from None
    saved = next((p / CONFIG for p in (path, ckpt.parent.parent, ckpt.parent) if (p / CONFIG).is_file()), None)
    state = load_checkpoint(ckpt)
    tree = state.get("config") or (json.loads(saved.read_text()) if saved is not None else None)
    if tree is None:
        raise ConfigError(f"RUN_DIR {str(path)!r}: neither the checkpoint nor config.json holds the run's config")
    cfg = from_dict(tree)
    if state.get(weights) is None:
        raise ConfigError(f"checkpoint {ckpt} holds no {weights!r} weights")
    dataset = load_dataset(cfg.data, seed=cfg.data.seed)
    from ..objectives import objective_class

    net = build_network(cfg.network, cfg.precond, objective_class(cfg.loss.objective).precond, dataset.channels,
                        dataset.resolution)
    net.load_state_dict(state[weights])
    return cfg, net.to(device).eval().requires_grad_(False), ckpt, (dataset.channels, dataset.resolution)


@torch.no_grad()
def sample_images(cfg, net, num: int, steps: int | None, seed: int, shape_cr: tuple[int, int],
                  device: torch.device) -> torch.Tensor:
    """(num, C, H, W) float32 in [-1, 1] on the CPU, from a CPU generator seeded with `seed`."""
    from ..objectives import build_objective

    channels, resolution = shape_cr
    objective = build_objective(cfg, channels * resolution * resolution)
    generator = torch.Generator().manual_seed(seed)
    out = []
    for start in range(0, num, _CHUNK):
        shape = (min(_CHUNK, num - start), channels, resolution, resolution)
        x = objective.sample(net, shape, steps, generator, device)
        out.append(x.float().clamp(-1.0, 1.0).cpu())
    return torch.cat(out)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.num < 1:
            raise ConfigError(f"--num must be >= 1, got {args.num}")
        if args.steps is not None and args.steps not in (1, 2):
            raise ConfigError(f"--steps must be 1 or 2, got {args.steps}")
        if args.seed < 0:
            raise ConfigError(f"--seed must be >= 0, got {args.seed}")
        if not args.out.endswith(".npz"):
            raise ConfigError(f"--out must name a .npz file, got {args.out!r}")
        if args.grid is not None and not args.grid.endswith(".png"):
            raise ConfigError(f"--grid must name a .png file, got {args.grid!r}")
        from ..dist import resolve_device

        device = resolve_device(args.device)
        cfg, net, ckpt, shape_cr = load_run(args.run_dir, args.weights, device)
        from ..objectives import objective_class

        objective = objective_class(cfg.loss.objective)
        if not objective.sample_steps and args.steps is not None:
            raise ConfigError(f"--steps applies to consistency models; {args.run_dir} trains the {objective.name} "
                              f"objective, sampled with its own sampler (eval.diffusion_steps={cfg.eval.diffusion_steps} "
                              f"steps): omit --steps")
        steps = (args.steps or 1) if objective.sample_steps else None
        images = sample_images(cfg, net, args.num, steps, args.seed, shape_cr, device)
    except BadInput as err:  # ConfigError, or a DataError: the run's data files are gone
        return bad_input(err)
    from ..fileio import atomic_write

    out = Path(args.out)
    atomic_write(out, lambda handle: np.savez(handle, images=images.numpy().astype(np.float32)))
    if args.grid:  # upscaled and labelled like the grids a run writes at each evaluation
        from ..image_grids import save_sample_grid
        from ..objectives import build_objective

        label = build_objective(cfg, shape_cr[0] * shape_cr[1] ** 2).sampler_label(steps)
        save_sample_grid({label: images[:64]}, args.grid,
                         title=f"{ckpt.name}, {args.weights} weights, seed {args.seed}")
    print(json.dumps({"out": str(out), "num": int(images.shape[0]), "shape": list(images.shape[1:]),
                      "weights": args.weights, "checkpoint": str(ckpt), "seed": args.seed,
                      "steps": steps}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
