"""Command line: score a file of images against a preset's data set, as the trainer's evaluation does.

    python -m ict_core.cli.score FILE.npz --preset P [--set key=value ...]
    python -m ict_core.cli.score FILE.npz --run RUN_DIR [--set key=value ...]   # the data and features of a run

FILE.npz holds `images`, N x C x H x W float32 in [-1, 1] (what ict_core.cli.sample writes). Prints one JSON line:
fd (Frechet distance in the preset's feature network, against its reference statistics), fd_se (bootstrap
standard error of fd), kid, nn_dist (mean RMS distance of each image to its nearest training image) and
nn_dist_ref (the same for held-out real images: nn_dist well below it means copies). Bad input exits with 2.
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
from ..config import ConfigError, TrainConfig, choices, load_config

KID_SUBSETS = 10
MAX_REFERENCE = 10_000  # reference images for KID, as in the trainer's evaluation


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ict_core.cli.score",
                                     description="FD, its standard error, KID and nearest-neighbour distance of images.")
    parser.add_argument("file", metavar="FILE.npz", help=".npz with `images`: N x C x H x W float32 in [-1, 1]")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--preset", help="preset whose data set and feature network score the images")
    which.add_argument("--run", metavar="RUN_DIR",
                       help="a run folder (or one of its checkpoints): score against that run's data set and features")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one dotted config key of the preset (repeatable)")
    parser.add_argument("--device", choices=choices(TrainConfig, "device"), default="cpu")
    return parser


def load_images(path: str | Path) -> torch.Tensor:
    """The `images` array of an .npz, checked: 4-d, float, finite, in [-1, 1]."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{str(path)!r} is not a file")
    try:
        with np.load(path, allow_pickle=False) as archive:
            if "images" not in archive.files:
                raise ConfigError(f"{str(path)!r} has no 'images' array (it holds: {', '.join(archive.files) or 'nothing'})")
            images = np.asarray(archive["images"])
    except (OSError, ValueError) as err:
        raise ConfigError(f"{str(path)!r} is not a readable .npz file ({err})") from None
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ConfigError(f"{str(path)!r}: images must be N x C x H x W with C 1 or 3, got shape {images.shape}")
    if not np.issubdtype(images.dtype, np.floating):
        raise ConfigError(f"{str(path)!r}: images must be float in [-1, 1], got dtype {images.dtype}")
    if images.shape[0] < 2:
        raise ConfigError(f"{str(path)!r}: at least 2 images are needed for a Frechet distance, got {images.shape[0]}")
    if not np.isfinite(images).all():
        raise ConfigError(f"{str(path)!r}: images hold NaN or infinite values")
    low, high = float(images.min()), float(images.max())
    if low < -1.0 - 1e-6 or high > 1.0 + 1e-6:
        raise ConfigError(f"{str(path)!r}: images must lie in [-1, 1], got values in [{low:.4g}, {high:.4g}]")
    return torch.from_numpy(images.astype(np.float32))


@torch.no_grad()
def score_images(images: torch.Tensor, cfg, device: torch.device | str = "cpu") -> dict:
    """fd, fd_se, kid, nn_dist, nn_dist_ref of `images` against cfg's data set (see the module docstring)."""
    from .. import featnet, metrics
    from ..data import load_dataset

    dataset = load_dataset(cfg.data, seed=cfg.data.seed)
    expected = (dataset.channels, dataset.resolution, dataset.resolution)
    if tuple(images.shape[1:]) != expected:
        raise ConfigError(f"images are {tuple(images.shape[1:])} (C, H, W) but {dataset.key} has {expected}; "
                          f"pick the preset (or --set data.resolution=...) that the images were trained on")
    featnet.check_feature_weights(dataset, cfg.eval)
    extractor = featnet.get_feature_extractor(dataset, cfg.eval, device)
    ref_mu, ref_sigma = featnet.reference_stats(dataset, extractor, cfg.eval.cache_dir)
    reference = featnet.reference_images(dataset, extractor)
    pick = torch.randperm(len(reference), generator=torch.Generator().manual_seed(0))[:MAX_REFERENCE]
    feats = extractor(images)
    ref_feats = extractor(reference[pick])
    train = dataset.train.to(device)
    nn_ref = dataset.heldout if len(dataset.heldout) else reference
    return {
        "fd": metrics.frechet_distance(*metrics.feature_stats(feats), ref_mu, ref_sigma),
        "fd_se": metrics.frechet_distance_se(feats, ref_mu, ref_sigma),
        "kid": metrics.kid(feats, ref_feats, num_subsets=KID_SUBSETS),
        "nn_dist": float(metrics.nearest_neighbor_distance(images.to(device), train).mean()),
        "nn_dist_ref": float(metrics.nearest_neighbor_distance(nn_ref.to(device), train).mean()),
        "num_images": int(images.shape[0]),
        "features": extractor.name,
        "dataset": dataset.key,
    }


def run_config(run: str | Path, overrides: list[str]):
    """The config of a run folder (its config.json) or of a checkpoint folder's run, with `overrides` applied."""
    from ..config import from_dict
    from ..rundir import CONFIG, run_dir_of

    path = Path(run).expanduser()
    folder = run_dir_of(path) if (path / "state.pt").is_file() else path
    if not (folder / CONFIG).is_file():
        raise ConfigError(f"--run {str(run)!r} is not a run folder (no {CONFIG}); give the folder a training run "
                          f"printed at its end, or one of its checkpoints/step_* folders")
    return from_dict(json.loads((folder / CONFIG).read_text())).with_overrides(overrides)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from ..dist import resolve_device

        cfg = run_config(args.run, args.overrides) if args.run else load_config(args.preset, args.overrides)
        images = load_images(args.file)
        result = score_images(images, cfg, resolve_device(args.device))
    except BadInput as err:  # ConfigError, or a DataError: the preset's data files are missing
        return bad_input(err)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
