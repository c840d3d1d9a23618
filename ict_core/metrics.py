"""Sample-quality and memorization metrics: Frechet distance, KID, nearest-neighbour distance, image grids,
and the feature networks they are computed in.

Feature networks ("eval.features"):
  dataset    a small CNN classifier trained on the data set's own labels (digits: the digit; patches: the source
             photo; cifar10/imagenet64: the class, on a capped subset); features = its pooled penultimate layer
             (64-d; 128-d for patches: FEATNET_RECIPES).
             It trains on the data set's `featnet` part, which the generator never trains on (ict_core.data), and
             FD's reference statistics are that part's features, so copying training images earns nothing over
             drawing new real ones (docs/MEASUREMENT.md). Training is deterministic (fixed seed, fixed CPU thread
             count, deterministic algorithms, always on the CPU) and cached under eval.cache_dir, keyed by the
             data config and a version. The featnet part does not depend on data.seed, so all seeds share it.
  inception  Inception-v3 as used for FID (ict_core.inception) from the local file eval.inception_path; images
             are quantized to uint8 levels first, as saved samples would be, and the reference statistics are
             those of the training set (the standard FID protocol).
  auto       inception when eval.inception_path is set and the images are RGB at >= 32 px, otherwise dataset.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .fileio import atomic_write

FEATNET_VERSION = "featnet-v2"  # v2: trained on the featnet part (not the training set), with degrade()
FEATNET_SEED = 1234
FEATNET_THREADS = 1  # more threads are slower, not faster, on a shared 2-core machine
FEATNET_STEPS = 300
FEATNET_DEGRADED = 0.25  # share of each batch replaced by blurred or noisy copies (degrade())
FEATNET_BATCH = 64
FEATNET_LR = 2e-3
FEATNET_WIDTH = 16


@dataclass(frozen=True)
class FeatnetRecipe:
    """How a data set's feature network is trained. `version` keys its cache, so changing a recipe retrains."""

    version: str = FEATNET_VERSION
    width: int = FEATNET_WIDTH
    steps: int = FEATNET_STEPS
    # Flips of both axes and transposes (the eight symmetries of the square): a crop of a photograph has no
    # preferred orientation at 8-32 px, and these make the features depend on texture rather than on where
    # in the featnet part's cells a crop was cut.
    dihedral: bool = False
    # Blur factors of the degraded class (area-average to 1/f of the side, enlarge); one entry: half blur,
    # half noise, as featnet-v2 did.
    blur_factors: tuple = (2,)


# Per label kind (ict_core.data.Dataset.label_kind). Patches (source photo as label) get a wider network trained
# longer, with symmetries and two blur levels: featnet-v2 told the photos apart 50-60% of the time and separated
# unseen from blurred patches by about 6 of the unseen set's fd_se; featnet-v3's figures are in
# docs/MEASUREMENT.md. Digits keep featnet-v2 (it already separated them by hundreds of fd_se).
FEATNET_RECIPES = {"class": FeatnetRecipe(),
                   "source_image": FeatnetRecipe(version="featnet-v3", width=32, steps=500, dihedral=True,
                                                 blur_factors=(2, 4))}


def featnet_recipe(dataset) -> FeatnetRecipe:
    return FEATNET_RECIPES.get(dataset.label_kind, FeatnetRecipe())


# Class-labelled data sets train their feature net on at most this many images.
FEATNET_MAX_IMAGES = 20000
DEFAULT_CACHE_DIR = "~/.cache/ict_core"
KID_FULL_KERNEL_MAX = 4000  # three 4000^2 float64 kernel matrices: 384 MB at most
FD_BOOTSTRAP = 20  # resamples behind fd_se; the standard error of a 20-resample std is ~16% of it


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


def frechet_distance_se(feats, ref_mu, ref_sigma, num_resamples: int = FD_BOOTSTRAP, seed: int = 0) -> float:
    """Bootstrap standard error of the Frechet distance of `feats` (N, D) to fixed reference statistics: the
    std over `num_resamples` FDs, each of N features drawn from `feats` with replacement. The reference is
    held fixed because it is one set shared by every run being compared; the samples are what varies."""
    feats = _as_float64(feats)
    if feats.ndim != 2 or feats.shape[0] < 2:
        raise ValueError(f"frechet_distance_se needs an (N, D) array with N >= 2, got shape {feats.shape}")
    if num_resamples < 2:
        raise ValueError(f"frechet_distance_se needs num_resamples >= 2, got {num_resamples}")
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(num_resamples):
        pick = rng.integers(0, feats.shape[0], size=feats.shape[0])
        values.append(frechet_distance(*feature_stats(feats[pick]), ref_mu, ref_sigma))
    return float(np.std(values, ddof=1))


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

    def __init__(self, net: nn.Module, name: str, key: str, dim: int, device, batch_size: int, info=None,
                 quantize: bool = False):
        self.net, self.name, self.key, self.dim = net, name, key, dim
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.info = info or {}
        self.quantize = quantize

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        outputs = []
        for start in range(0, images.shape[0], self.batch_size):
            batch = images[start:start + self.batch_size].to(self.device, torch.float32)
            if self.quantize:
                batch = quantize_uint8(batch)
            outputs.append(self.net(batch).float().reshape(batch.shape[0], -1).cpu())
        if not outputs:
            return torch.zeros(0, self.dim)
        return torch.cat(outputs)


def quantize_uint8(images: torch.Tensor) -> torch.Tensor:
    """Round [-1, 1] images to the 256 levels of a saved uint8 image (clamped), back in [-1, 1]: what FID's
    protocol scores (samples are written as 8-bit images before Inception sees them)."""
    return ((images.clamp(-1.0, 1.0) + 1.0) * 127.5).round().div(127.5).sub(1.0)


def _cache_dir(cache_dir: str | Path | None) -> Path:
    path = Path(os.path.expanduser(str(cache_dir or DEFAULT_CACHE_DIR)))
    path.mkdir(parents=True, exist_ok=True)
    return path


def _featnet_training_set(dataset):
    images, labels = featnet_images(dataset), dataset.featnet_labels
    if labels is None or dataset.num_classes < 2:
        raise ValueError(f"data set {dataset.key} has no labelled featnet part; use eval.features=inception")
    if images.shape[0] > FEATNET_MAX_IMAGES:
        keep = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(FEATNET_SEED))
        keep = keep[:FEATNET_MAX_IMAGES].sort().values
        images, labels = images[keep], labels[keep]
    return images, labels.cpu()


def _blurred(images: torch.Tensor, factor: int) -> torch.Tensor:
    if images.shape[-1] < factor:
        return images
    return F.interpolate(F.avg_pool2d(images, factor), size=images.shape[-2:], mode="bilinear", align_corners=False)


def degrade(images: torch.Tensor, labels: torch.Tensor, degraded_label: int, generator: torch.Generator,
            fraction: float = FEATNET_DEGRADED, blur_factors: tuple = (2,)) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace `fraction` of a batch by degraded copies labelled `degraded_label`: blurred (area-averaged to
    1/f of the side for each f of `blur_factors`, then bilinearly enlarged) or with Gaussian noise of std
    U(0.05, 0.3), each kind equally often. A classifier of the data set's labels alone barely notices blur or
    noise (docs/MEASUREMENT.md), and those are how samples fail; this extra class makes the features, and so FD,
    see them."""
    count = images.shape[0]
    pick = torch.rand(count, generator=generator) < fraction
    if len(blur_factors) == 1:  # featnet-v2's draws, so its cached networks stay valid
        kind = torch.where(torch.rand(count, generator=generator) < 0.5, 0, 1)
    else:
        kind = torch.randint(0, len(blur_factors) + 1, (count,), generator=generator)
    std = 0.05 + 0.25 * torch.rand(count, 1, 1, 1, generator=generator)
    noise = torch.randn(images.shape, generator=generator)
    degraded = (images + std * noise).clamp(-1.0, 1.0)
    for index, factor in enumerate(blur_factors):
        degraded = torch.where((kind == index)[:, None, None, None], _blurred(images, factor), degraded)
    out = torch.where(pick[:, None, None, None], degraded, images)
    return out, torch.where(pick, torch.full_like(labels, degraded_label), labels)


def dihedral(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each image flipped left-right, up-down and transposed, each with probability 1/2: a uniformly random one
    of the square's eight symmetries."""
    from ict_core.data import random_hflip

    images = random_hflip(images, generator)
    flip = torch.rand(images.shape[0], generator=generator) < 0.5
    images = torch.where(flip[:, None, None, None], images.flip(-2), images)
    swap = torch.rand(images.shape[0], generator=generator) < 0.5
    return torch.where(swap[:, None, None, None], images.transpose(-1, -2), images)


def train_feature_net(dataset) -> tuple[FeatureNet, dict]:
    """Train the data set's classifier on the CPU, deterministically; returns (net, info with accuracy)."""
    from ict_core.data import random_hflip

    recipe = featnet_recipe(dataset)
    images, labels = _featnet_training_set(dataset)
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    started = time.perf_counter()
    try:
        torch.set_num_threads(FEATNET_THREADS)
        torch.use_deterministic_algorithms(True)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(FEATNET_SEED)
            net = FeatureNet(dataset.channels, dataset.resolution, dataset.num_classes + 1, recipe.width)
            generator = torch.Generator().manual_seed(FEATNET_SEED)
            optimizer = torch.optim.Adam(net.parameters(), lr=FEATNET_LR)
            schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, recipe.steps)
            net.train()
            for _ in range(recipe.steps):
                index = torch.randint(0, images.shape[0], (FEATNET_BATCH,), generator=generator)
                batch = images[index]
                if recipe.dihedral:
                    batch = dihedral(batch, generator)
                elif dataset.allows_flip:
                    batch = random_hflip(batch, generator)
                batch, target = degrade(batch, labels[index], dataset.num_classes, generator,
                                        blur_factors=recipe.blur_factors)
                loss = F.cross_entropy(net(batch), target)
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
    info = {"heldout_accuracy": accuracy, "train_images": int(images.shape[0]), "steps": recipe.steps,
            "train_seconds": time.perf_counter() - started, "version": recipe.version, "width": recipe.width,
            "label_kind": dataset.label_kind, "num_classes": dataset.num_classes}
    return net, info


@torch.no_grad()
def _accuracy(net, images, labels) -> float:
    if labels is None or images.shape[0] == 0:
        return float("nan")
    correct = sum((net(images[i:i + 512]).argmax(1) == labels[i:i + 512]).sum().item()
                  for i in range(0, images.shape[0], 512))
    return correct / images.shape[0]


def featnet_images(dataset) -> torch.Tensor:
    """The images the dataset feature network trains on and FD's reference statistics come from."""
    if dataset.featnet is None or dataset.featnet.shape[0] < 2:
        raise ValueError(f"data set {dataset.key} has no featnet part (images the generator does not train on); "
                         f"set data.featnet_fraction > 0 or use eval.features=inception")
    return dataset.featnet.cpu()


def _featnet_fingerprint(dataset) -> str:
    import hashlib

    digest = hashlib.blake2b(digest_size=16)
    for tensor in (dataset.featnet, dataset.featnet_labels):
        if tensor is not None:
            digest.update(str(tuple(tensor.shape)).encode())
            digest.update(tensor.contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()


def _featnet_source(dataset) -> str:
    """Cache key of the feature network: its training images' content. The featnet part does not depend on
    data.seed (ict_core.data), so every seed of a study is scored by the same network."""
    return f"{dataset.key}_n{featnet_images(dataset).shape[0]}_{_featnet_fingerprint(dataset)[:16]}"


def _dataset_extractor(dataset, cache_dir, device) -> FeatureExtractor:
    recipe = featnet_recipe(dataset)
    key = f"{recipe.version}_{_featnet_source(dataset)}"
    path = _cache_dir(cache_dir) / f"{key}.pt"
    net = FeatureNet(dataset.channels, dataset.resolution, dataset.num_classes + 1, recipe.width)
    info = None
    if path.is_file():
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
            net.load_state_dict(payload["state_dict"])
            info = json.loads(payload["info"])
        except Exception:  # unreadable or stale file: retrain and overwrite it
            info = None
    if info is not None and info.get("fingerprint") != _featnet_fingerprint(dataset):
        info = None
    if info is None:
        net, info = train_feature_net(dataset)
        info["fingerprint"] = _featnet_fingerprint(dataset)
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
                            batch_size=64, info={"path": str(path)}, quantize=True)


def use_inception(dataset, eval_cfg) -> bool:
    """The rule of eval.features: "auto" picks Inception for RGB data at >= 32 px when weights are given."""
    if eval_cfg.features == "inception":
        return True
    if eval_cfg.features == "dataset":
        return False
    if eval_cfg.features != "auto":
        raise ValueError(f"eval.features must be one of auto, inception, dataset; got {eval_cfg.features!r}")
    return bool(eval_cfg.inception_path) and dataset.channels == 3 and dataset.resolution >= 32


def check_feature_weights(dataset, eval_cfg) -> None:
    """Fail at the start of a run, not at its first evaluation, when Inception is asked for but its weights
    file is missing (raises ConfigError naming the path and how to get the file)."""
    from ict_core.config import ConfigError
    from ict_core.inception import WEIGHTS_HINT

    if not use_inception(dataset, eval_cfg):
        return
    path = Path(os.path.expanduser(eval_cfg.inception_path)) if eval_cfg.inception_path else None
    if path is None or not path.is_file():
        raise ConfigError(f"eval.inception_path={eval_cfg.inception_path!r} is not a file; FID on {dataset.key} needs "
                          f"the Inception-v3 weights: {WEIGHTS_HINT}")


def get_feature_extractor(dataset, eval_cfg, device="cpu") -> FeatureExtractor:
    """The feature network named by eval.features for `dataset` (see the module docstring)."""
    if use_inception(dataset, eval_cfg):
        return _inception_extractor(eval_cfg, device)
    return _dataset_extractor(dataset, eval_cfg.cache_dir, device)


def reference_images(dataset, extractor: FeatureExtractor) -> torch.Tensor:
    """FD's reference set: the featnet part for the dataset feature network (unseen by the generator), the
    training set for Inception (the standard FID protocol)."""
    return dataset.train if extractor.name == "inception" else featnet_images(dataset)


def reference_stats(dataset, extractor: FeatureExtractor, cache_dir=None) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) of the features of reference_images, cached per (feature network, data content)."""
    path = _cache_dir(cache_dir) / f"refstats_{extractor.key}_{dataset.fingerprint()[:16]}.npz"
    if path.is_file():
        try:
            with np.load(path) as archive:
                return archive["mu"], archive["sigma"]
        except Exception:  # unreadable file: recompute and overwrite it
            pass
    mu, sigma = feature_stats(extractor(reference_images(dataset, extractor)))
    atomic_write(path, lambda handle: np.savez(handle, mu=mu, sigma=sigma))
    return mu, sigma
