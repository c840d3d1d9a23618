"""Sample-quality and memorization metrics: Frechet distance, KID, nearest-neighbour distance, image grids,
and the feature networks they are computed in.

Feature networks ("eval.features"):
  dataset    a small CNN classifier trained on the data set's own labels (digits: the digit; patches: the source
             photo; cifar10/imagenet64: the class, on a capped subset); features = its 128-d penultimate layer.
             Training is deterministic (fixed seed, fixed CPU thread count, deterministic algorithms, always on
             the CPU) and the result is cached under eval.cache_dir, keyed by the data config and a version. It is
             trained on the data as loaded with seed 0 whatever the run's seed, so all seeds share one network.
  inception  Inception-v3 as used for FID (ict_core.inception) from the local file eval.inception_path.
  auto       inception when eval.inception_path is set and the images are RGB at >= 32 px, otherwise dataset.
"""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .fileio import atomic_write

FEATNET_VERSION = "featnet-v1"
FEATNET_SEED = 1234
FEATNET_DATA_SEED = 0  # data seed of the split/patches the feature net trains on
FEATNET_THREADS = 1  # more threads are slower, not faster, on a shared 2-core machine
FEATNET_STEPS = 300
FEATNET_BATCH = 64
FEATNET_LR = 2e-3
FEATNET_WIDTH = 16
# Class-labelled data sets train their feature net on at most this many images.
FEATNET_MAX_IMAGES = 20000
DEFAULT_CACHE_DIR = "~/.cache/ict_core"
KID_FULL_KERNEL_MAX = 4000  # three 4000^2 float64 kernel matrices: 384 MB at most


# ---- distances between feature distributions -----------------------------------------------------

def _as_float64(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def feature_stats(feats) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (float64, unbiased) of (N, D) features, N >= 2."""
    feats = _as_float64(feats)
    if feats.ndim != 2 or feats.shape[0] < 2:
        raise ValueError(f"feature_stats needs an (N, D) array with N >= 2, got shape {feats.shape}")
    return feats.mean(axis=0), np.cov(feats, rowvar=False).reshape(feats.shape[1], feats.shape[1])


def _psd_sqrt(sigma: np.ndarray) -> np.ndarray:
    """Symmetric square root of a PSD matrix; eigenvalues below 0 (rounding) are clipped."""
    values, vectors = np.linalg.eigh((sigma + sigma.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2) (Heusel et al. 2017, eq. 6):

        ||mu1 - mu2||^2 + tr(sigma1) + tr(sigma2) - 2 tr((sigma1 sigma2)^(1/2)).

    tr((sigma1 sigma2)^(1/2)) is computed as the sum of sqrt(eigenvalues) of the symmetric PSD matrix
    sigma1^(1/2) sigma2 sigma1^(1/2), which has the same spectrum; it stays real and finite for singular
    covariances (fewer samples than feature dimensions), where scipy's sqrtm returns complex noise.
    """
    mu1, mu2 = _as_float64(mu1).reshape(-1), _as_float64(mu2).reshape(-1)
    sigma1, sigma2 = np.atleast_2d(_as_float64(sigma1)), np.atleast_2d(_as_float64(sigma2))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.size, mu1.size):
        raise ValueError(f"frechet_distance: shapes do not match: mu {mu1.shape} vs {mu2.shape}, "
                         f"sigma {sigma1.shape} vs {sigma2.shape}")
    root1 = _psd_sqrt(sigma1)
    middle = root1 @ sigma2 @ root1
    eigenvalues = np.linalg.eigvalsh((middle + middle.T) / 2)
    trace_sqrt = np.sqrt(np.clip(eigenvalues, 0.0, None)).sum()
    diff = mu1 - mu2
    value = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt
    return float(max(value, 0.0))


def kid(feats1, feats2, num_subsets: int = 100, subset_size: int = 1000, seed: int = 0) -> float:
    """Kernel Inception Distance (Binkowski et al. 2018): the unbiased estimate of MMD^2 with the cubic
    polynomial kernel k(x, y) = (x.y / D + 1)^3, averaged over random subsets of both sets."""
    x_all, y_all = _as_float64(feats1), _as_float64(feats2)
    if x_all.ndim != 2 or y_all.ndim != 2 or x_all.shape[1] != y_all.shape[1]:
        raise ValueError(f"kid needs two (N, D) arrays with the same D, got {x_all.shape} and {y_all.shape}")
    size = min(subset_size, x_all.shape[0], y_all.shape[0])
    if size < 2:
        raise ValueError(f"kid needs at least 2 samples in each set, got {x_all.shape[0]} and {y_all.shape[0]}")
    dim = x_all.shape[1]

    def kernel(a, b):
        return (a @ b.T / dim + 1.0) ** 3

    # Small sets: the full kernel matrices once, then subsets are index lookups (100x less arithmetic).
    full = max(x_all.shape[0], y_all.shape[0]) <= KID_FULL_KERNEL_MAX
    if full:
        k_xx_all, k_yy_all, k_xy_all = kernel(x_all, x_all), kernel(y_all, y_all), kernel(x_all, y_all)
    rng = np.random.default_rng(seed)
    off_diag = size * (size - 1)
    estimates = []
    for _ in range(num_subsets):
        i = rng.choice(x_all.shape[0], size, replace=False)
        j = rng.choice(y_all.shape[0], size, replace=False)
        if full:
            k_xx, k_yy, k_xy = k_xx_all[np.ix_(i, i)], k_yy_all[np.ix_(j, j)], k_xy_all[np.ix_(i, j)]
        else:
            k_xx, k_yy, k_xy = kernel(x_all[i], x_all[i]), kernel(y_all[j], y_all[j]), kernel(x_all[i], y_all[j])
        estimates.append((k_xx.sum() - np.trace(k_xx)) / off_diag + (k_yy.sum() - np.trace(k_yy)) / off_diag
                         - 2.0 * k_xy.mean())
    return float(np.mean(estimates))


KID_SCALE = 1e3


def kid_reported(feats, ref_feats, num_subsets: int = 100, subset_size: int = 1000, seed: int = 0) -> float:
    """KID as this project reports it (the `kid` metric): 1e3 x kid() on features divided by one number, the
    root-mean-square feature value of the reference set, so that the reference features have unit mean square
    per dimension. Dividing by a constant keeps KID's cubic polynomial kernel and the ranking of runs that share
    the reference set, while the value no longer depends on the arbitrary scale of a feature network's
    activations (raw features of the digits classifier gave ~1e4). Not comparable with published KID values,
    which use raw Inception features."""
    ref = _as_float64(ref_feats)
    rms = float(np.sqrt(np.mean(ref ** 2)))
    if not rms > 0:
        raise ValueError("kid_reported: the reference features are all zero")
    return KID_SCALE * kid(_as_float64(feats) / rms, ref / rms, num_subsets, subset_size, seed)


def nearest_neighbor_distance(samples: torch.Tensor, reference: torch.Tensor, batch_size: int = 256,
                              candidates: int = 8) -> torch.Tensor:
    """(B,) distance from each sample to its closest reference image: ||x - r||_2 / sqrt(D) (RMS per dimension).

    Candidates are ranked with the fast matrix-product form of cdist, then their distances are recomputed
    directly, so near-copies (the memorization signal) are not lost to cancellation.
    """
    if samples[0].numel() != reference[0].numel():
        raise ValueError(f"samples {tuple(samples.shape)} and reference {tuple(reference.shape)} differ in size")
    if reference.shape[0] == 0:
        raise ValueError("nearest_neighbor_distance needs a non-empty reference set")
    x = samples.reshape(samples.shape[0], -1).float()
    ref = reference.reshape(reference.shape[0], -1).to(x.device, torch.float32)
    top = min(candidates, ref.shape[0])
    out = torch.empty(x.shape[0], dtype=torch.float32, device=x.device)
    for start in range(0, x.shape[0], batch_size):
        chunk = x[start:start + batch_size]
        approx = torch.cdist(chunk, ref)  # mm-based for large inputs
        index = approx.topk(top, dim=1, largest=False).indices
        exact = (chunk[:, None, :].double() - ref[index].double()).square().sum(-1).sqrt()
        out[start:start + batch_size] = exact.min(dim=1).values.float()
    return out / math.sqrt(x.shape[1])


# ---- image grids -----------------------------------------------------------------------------------

def save_grid(images: torch.Tensor, path: str | Path, nrow: int | None = None, padding: int = 1) -> Path:
    """Write a (B, C, H, W) batch in [-1, 1] as one PNG grid with `nrow` images per row (default ~sqrt(B))."""
    from PIL import Image

    if images.ndim != 4 or images.shape[1] not in (1, 3) or images.shape[0] == 0:
        raise ValueError(f"save_grid expects a non-empty (B, 1|3, H, W) batch, got shape {tuple(images.shape)}")
    count, channels, height, width = images.shape
    nrow = nrow or math.ceil(math.sqrt(count))
    ncol = math.ceil(count / nrow)
    pixels = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    grid = torch.zeros(channels, ncol * (height + padding) + padding, nrow * (width + padding) + padding,
                       dtype=torch.uint8)
    for i in range(count):
        top, left = padding + (i // nrow) * (height + padding), padding + (i % nrow) * (width + padding)
        grid[:, top:top + height, left:left + width] = pixels[i]
    array = grid[0].numpy() if channels == 1 else grid.permute(1, 2, 0).numpy()
    return atomic_write(path, lambda handle: Image.fromarray(array).save(handle, format="PNG"))


GRID_MIN_SIDE = 256  # panels are upscaled (nearest neighbour, integer factor) to at least this many pixels wide
GRID_MAX_SCALE = 8
GRID_PAD = 2  # light-grey lines between images, so black-background digits stay apart
GRID_PAD_VALUE = 200
GRID_MARGIN = 8
GRID_LABEL_HEIGHT = 16


def _tile(images: torch.Tensor, nrow: int, scale: int) -> np.ndarray:
    """(B, C, H, W) in [-1, 1] -> (rows, cols, 3) uint8 tiles upscaled by `scale`, GRID_PAD apart."""
    count, channels, height, width = images.shape
    pixels = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    if channels == 1:
        pixels = pixels.expand(count, 3, height, width)
    pixels = pixels.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)
    h, w = height * scale, width * scale
    rows = math.ceil(count / nrow)
    out = np.full((rows * (h + GRID_PAD) - GRID_PAD, nrow * (w + GRID_PAD) - GRID_PAD, 3), GRID_PAD_VALUE, np.uint8)
    for i in range(count):
        top, left = (i // nrow) * (h + GRID_PAD), (i % nrow) * (w + GRID_PAD)
        out[top:top + h, left:left + w] = pixels[i].permute(1, 2, 0).numpy()
    return out


def save_sample_grid(panels: dict, path: str | Path, title: str = "") -> Path:
    """Write labelled panels of samples side by side as one RGB PNG, e.g. {"1 step": x1, "2 steps": x2}.

    Each panel is a (B, 1|3, H, W) batch in [-1, 1] laid out ~sqrt(B) images per row. Small images are upscaled
    with nearest neighbours by one integer factor (all panels alike), so a panel is at least GRID_MIN_SIDE px wide
    and pixels stay sharp; images are separated by light-grey lines, and each panel is labelled above.
    """
    from PIL import Image, ImageDraw

    if not panels:
        raise ValueError("save_sample_grid needs at least one panel")
    for label, images in panels.items():
        if images.ndim != 4 or images.shape[1] not in (1, 3) or images.shape[0] == 0:
            raise ValueError(f"panel {label!r}: expected a non-empty (B, 1|3, H, W) batch, got {tuple(images.shape)}")
    nrows = {label: math.ceil(math.sqrt(images.shape[0])) for label, images in panels.items()}
    narrowest = min(nrows[label] * images.shape[3] for label, images in panels.items())
    scale = max(1, min(GRID_MAX_SCALE, math.ceil(GRID_MIN_SIDE / narrowest)))
    tiles = [_tile(images, nrows[label], scale) for label, images in panels.items()]
    header = GRID_LABEL_HEIGHT * (2 if title else 1)
    width = sum(t.shape[1] for t in tiles) + GRID_MARGIN * (len(tiles) + 1)
    height = max(t.shape[0] for t in tiles) + header + 2 * GRID_MARGIN
    canvas = np.full((height, width, 3), 255, np.uint8)
    left = GRID_MARGIN
    offsets = []
    for tile in tiles:
        top = GRID_MARGIN + header
        canvas[top:top + tile.shape[0], left:left + tile.shape[1]] = tile
        offsets.append(left)
        left += tile.shape[1] + GRID_MARGIN
    image = Image.fromarray(canvas)
    draw = ImageDraw.Draw(image)
    if title:
        draw.text((GRID_MARGIN, GRID_MARGIN // 2), title, fill=(0, 0, 0))
    for label, x in zip(panels, offsets):
        draw.text((x, GRID_MARGIN // 2 + header - GRID_LABEL_HEIGHT), str(label), fill=(0, 0, 0))
    return atomic_write(path, lambda handle: image.save(handle, format="PNG"))


# ---- feature networks ------------------------------------------------------------------------------

class FeatureNet(nn.Module):
    """Small CNN classifier. A patchify stem brings inputs above 8 px down to 8 px, so training costs the same
    few seconds at every resolution; features are the 4 * width channels after global average pooling."""

    def __init__(self, channels: int, resolution: int, num_classes: int, width: int = FEATNET_WIDTH):
        super().__init__()
        patch = max(1, resolution // 8)
        stem = nn.Conv2d(channels, width, patch, stride=patch) if patch > 1 else nn.Conv2d(channels, width, 3, padding=1)
        self.body = nn.Sequential(
            stem, nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(2 * width, 4 * width, 3, stride=2, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.head = nn.Linear(4 * width, num_classes)
        self.feature_dim = 4 * width

    def features(self, x):
        return self.body(x)

    def forward(self, x):
        return self.head(self.body(x))


class FeatureExtractor:
    """Callable: images (B, C, H, W) in [-1, 1] -> (B, D) float32 features on the CPU.

    `name` is "dataset" or "inception"; `key` identifies the exact network (file names of cached statistics).
    """

    def __init__(self, net: nn.Module, name: str, key: str, dim: int, device, batch_size: int, info=None):
        self.net, self.name, self.key, self.dim = net, name, key, dim
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.info = info or {}

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        outputs = []
        for start in range(0, images.shape[0], self.batch_size):
            batch = images[start:start + self.batch_size].to(self.device, torch.float32)
            outputs.append(self.net(batch).float().reshape(batch.shape[0], -1).cpu())
        if not outputs:
            return torch.zeros(0, self.dim)
        return torch.cat(outputs)


def _cache_dir(cache_dir: str | Path | None) -> Path:
    path = Path(os.path.expanduser(str(cache_dir or DEFAULT_CACHE_DIR)))
    path.mkdir(parents=True, exist_ok=True)
    return path


def _featnet_training_set(dataset):
    images, labels = dataset.train.cpu(), dataset.train_labels
    if labels is None or dataset.num_classes < 2:
        raise ValueError(f"data set {dataset.key} has no labels; use eval.features=inception")
    if images.shape[0] > FEATNET_MAX_IMAGES:
        keep = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(FEATNET_SEED))
        keep = keep[:FEATNET_MAX_IMAGES].sort().values
        images, labels = images[keep], labels[keep]
    return images, labels.cpu()


def train_feature_net(dataset) -> tuple[FeatureNet, dict]:
    """Train the data set's classifier on the CPU, deterministically; returns (net, info with accuracy)."""
    from ict_core.data import random_hflip

    images, labels = _featnet_training_set(dataset)
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    started = time.perf_counter()
    try:
        torch.set_num_threads(FEATNET_THREADS)
        torch.use_deterministic_algorithms(True)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(FEATNET_SEED)
            net = FeatureNet(dataset.channels, dataset.resolution, dataset.num_classes)
            generator = torch.Generator().manual_seed(FEATNET_SEED)
            optimizer = torch.optim.Adam(net.parameters(), lr=FEATNET_LR)
            schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, FEATNET_STEPS)
            net.train()
            for _ in range(FEATNET_STEPS):
                index = torch.randint(0, images.shape[0], (FEATNET_BATCH,), generator=generator)
                batch = images[index]
                if dataset.allows_flip:
                    batch = random_hflip(batch, generator)
                loss = F.cross_entropy(net(batch), labels[index])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
            net.eval()
            held_labels = None if dataset.heldout_labels is None else dataset.heldout_labels.cpu()
            accuracy = _accuracy(net, dataset.heldout.cpu(), held_labels)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)
    info = {"heldout_accuracy": accuracy, "train_images": int(images.shape[0]), "steps": FEATNET_STEPS,
            "train_seconds": time.perf_counter() - started, "version": FEATNET_VERSION,
            "label_kind": dataset.label_kind, "num_classes": dataset.num_classes}
    return net, info


@torch.no_grad()
def _accuracy(net, images, labels) -> float:
    if labels is None or images.shape[0] == 0:
        return float("nan")
    correct = sum((net(images[i:i + 512]).argmax(1) == labels[i:i + 512]).sum().item()
                  for i in range(0, images.shape[0], 512))
    return correct / images.shape[0]


def _featnet_source(dataset):
    """(cache key, loader of the data the net trains on). The net is trained on the data set as loaded with
    FEATNET_DATA_SEED, whatever seed the run used, so every seed of a study is scored by the same network."""
    import dataclasses
    import hashlib

    from ict_core.data import load_dataset

    data_cfg = getattr(dataset, "data_cfg", None)
    if data_cfg is None:  # built by hand: only its own content identifies it
        return f"{dataset.key}_n{dataset.train.shape[0]}_{dataset.fingerprint()[:16]}", lambda: dataset
    fields = {k: v for k, v in dataclasses.asdict(data_cfg).items() if k not in ("hflip", "seed")}
    digest = hashlib.blake2b(json.dumps(fields, sort_keys=True).encode(), digest_size=8).hexdigest()
    if dataset.seed == FEATNET_DATA_SEED:
        return f"{dataset.key}_cfg{digest}", lambda: dataset
    return f"{dataset.key}_cfg{digest}", lambda: load_dataset(data_cfg, seed=FEATNET_DATA_SEED)


def _dataset_extractor(dataset, cache_dir, device) -> FeatureExtractor:
    source_key, load_source = _featnet_source(dataset)
    key = f"{FEATNET_VERSION}_{source_key}"
    path = _cache_dir(cache_dir) / f"{key}.pt"
    net = FeatureNet(dataset.channels, dataset.resolution, dataset.num_classes)
    info = None
    if path.is_file():
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
            net.load_state_dict(payload["state_dict"])
            info = json.loads(payload["info"])
        except Exception:  # unreadable or stale file: retrain and overwrite it
            info = None
    # A run on the training data itself can check that the files behind data.path have not changed.
    if info is not None and dataset.seed == FEATNET_DATA_SEED and info.get("fingerprint") != dataset.fingerprint():
        info = None
    if info is None:
        source = load_source()
        net, info = train_feature_net(source)
        info["fingerprint"] = source.fingerprint()
        payload = {"state_dict": net.state_dict(), "info": json.dumps(info)}
        atomic_write(path, lambda handle: torch.save(payload, handle))
    net = net.eval().requires_grad_(False).to(device)
    return FeatureExtractor(_FeaturesOnly(net), "dataset", key, net.feature_dim, device, batch_size=1024, info=info)


class _FeaturesOnly(nn.Module):
    def __init__(self, net: FeatureNet):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net.features(x)


def _inception_extractor(eval_cfg, device) -> FeatureExtractor:
    import hashlib

    from ict_core.inception import FEATURE_DIM, load_inception

    net = load_inception(eval_cfg.inception_path, device)
    path = Path(eval_cfg.inception_path).expanduser()
    digest = hashlib.blake2b(digest_size=8)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return FeatureExtractor(net, "inception", f"inception_{digest.hexdigest()}", FEATURE_DIM, device,
                            batch_size=64, info={"path": str(path)})


def use_inception(dataset, eval_cfg) -> bool:
    """The rule of eval.features: "auto" picks Inception for RGB data at >= 32 px when weights are given."""
    if eval_cfg.features == "inception":
        return True
    if eval_cfg.features == "dataset":
        return False
    if eval_cfg.features != "auto":
        raise ValueError(f"eval.features must be one of auto, inception, dataset; got {eval_cfg.features!r}")
    return bool(eval_cfg.inception_path) and dataset.channels == 3 and dataset.resolution >= 32


def get_feature_extractor(dataset, eval_cfg, device="cpu") -> FeatureExtractor:
    """The feature network named by eval.features for `dataset` (see the module docstring)."""
    if use_inception(dataset, eval_cfg):
        return _inception_extractor(eval_cfg, device)
    return _dataset_extractor(dataset, eval_cfg.cache_dir, device)


def reference_stats(dataset, extractor: FeatureExtractor, cache_dir=None) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) of the features of the whole training set, cached per (feature network, data content)."""
    path = _cache_dir(cache_dir) / f"refstats_{extractor.key}_{dataset.fingerprint()[:16]}.npz"
    if path.is_file():
        try:
            with np.load(path) as archive:
                return archive["mu"], archive["sigma"]
        except Exception:  # unreadable file: recompute and overwrite it
            pass
    mu, sigma = feature_stats(extractor(dataset.train))
    atomic_write(path, lambda handle: np.savez(handle, mu=mu, sigma=sigma))
    return mu, sigma
