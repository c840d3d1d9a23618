"""Feature networks, the space FD and KID are computed in (ict_core.metrics), and the reference images and
statistics of a data set in that space. Feature networks ("eval.features"):
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
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .fileio import atomic_write
from .metrics import feature_stats

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


# Per label kind (ict_core.data_types.Dataset.label_kind). Patches (source photo as label) get a wider network trained
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
    from ict_core.data_types import random_hflip

    images = random_hflip(images, generator)
    flip = torch.rand(images.shape[0], generator=generator) < 0.5
    images = torch.where(flip[:, None, None, None], images.flip(-2), images)
    swap = torch.rand(images.shape[0], generator=generator) < 0.5
    return torch.where(swap[:, None, None, None], images.transpose(-1, -2), images)


def train_feature_net(dataset) -> tuple[FeatureNet, dict]:
    """Train the data set's classifier on the CPU, deterministically; returns (net, info with accuracy)."""
    from ict_core.data_types import random_hflip

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
