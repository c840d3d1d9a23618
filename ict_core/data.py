"""Data sets by name, loaded from local files only, as float32 tensors in [-1, 1].

digits      scikit-learn's 8x8 handwritten digits (bundled), 1 channel, labels 0..9, no flips.
patches     RGB crops of the photographs bundled with scikit-image, at 8, 16, 32 or 64 px. Every resolution
            shows the same regions (a 64 px crop of the downscaled photo, area-averaged to the target size),
            so a study across resolutions changes only the dimension d = C*H*W. Labels: source photo index.
            Each photo is cut into a grid of >= 16 cells before cropping; a quarter of the cells feed the feature
            network, a tenth the held-out set (data.featnet_fraction, data.holdout_fraction), the rest training,
            and every crop lies inside cells of one part, so no held-out or feature-network crop shares a pixel
            with a training crop.
patches_grey  the very crops of `patches` (same photos, positions and split) turned to grey by ITU-R BT.601 luma,
            1 channel: with both, one image family gives d = 64, 192, 256, 768, 1024, 3072 (8, 16, 32 px).
cifar10     the python version of CIFAR-10 (cifar-10-batches-py); held-out set = the official test batch.
imagenet64  downsampled ImageNet 64x64 (.npz batches); held-out set = val_data.npz.

Three disjoint parts (docs/MEASUREMENT.md): `train` (the generator's), `heldout` (held-out losses and
nearest-neighbour reference) and `featnet` (trains the "dataset" feature network and gives FD's reference
statistics). The featnet part is drawn with the fixed FEATNET_SPLIT_SEED, whatever data.seed, so every seed of
a study is scored by one feature network; data.seed only redistributes the rest. CIFAR-10 and ImageNet 64
split their official held-out set in half into featnet and heldout parts instead, so the generator keeps the
whole training set.

A data.resolution other than the native one (digits 8, cifar10 32, imagenet64 64) resizes bilinearly
(antialiased when shrinking). Nothing is downloaded and nothing is cached on disk.

The Dataset a loader returns is in ict_core.data_types, the cutting of crops out of the photos in
ict_core.photo_patches, and GlobalBatches (the training batches of a run) in ict_core.batches.
"""
from __future__ import annotations

import importlib.util
import math
import pickle
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ict_core import datasets
from ict_core.config import DataConfig
from ict_core.data_types import DataError, Dataset
from ict_core.photo_patches import (PATCH_REGION, _grey, _patch_regions, _source_photo, _split_cells, _window_inside,
                                    _window_std)

PATCH_RESOLUTIONS = datasets.DATASETS["patches"].resolutions
# Photographs that ship inside the scikit-image wheel (no download); gray ones are repeated to RGB.
PATCH_SOURCES = (
    "astronaut", "camera", "chelsea", "coffee", "rocket",
    "coins", "immunohistochemistry", "retina", "hubble_deep_field", "moon",
)
PATCHES_PER_SOURCE = 300
FEATNET_SPLIT_SEED = 0
# Official held-out splits are capped: they serve held-out losses and metrics, not training.
MAX_OFFICIAL_HELDOUT = 10000

CIFAR_URL_HINT = (
    "download cifar-10-python.tar.gz from the CIFAR-10 website (https://www.cs.toronto.edu/~kriz/cifar.html), "
    "extract it and set data.path to the extracted cifar-10-batches-py folder"
)
IMAGENET_URL_HINT = (
    "download the 64x64 downsampled ImageNet .npz batches (Imagenet64_train_part1/2.zip and Imagenet64_val.zip "
    "from https://image-net.org/download-images, 'Downsampled ImageNet'), unzip them into one folder holding "
    "train_data_batch_1..10.npz and val_data.npz, and set data.path to that folder"
)


def load_dataset(data_cfg: DataConfig, seed: int = 0) -> Dataset:
    """Load the data set named by data.name (ict_core.datasets names its loader below); `seed` fixes patch
    positions and the held-out split."""
    if data_cfg.name not in datasets.DATASETS:
        raise DataError(f"data.name must be one of {', '.join(datasets.NAMES)}; got {data_cfg.name!r}")
    loader = globals()[datasets.DATASETS[data_cfg.name].loader]
    if data_cfg.max_images < 0:
        raise DataError(f"data.max_images must be >= 0 (0 = all), got {data_cfg.max_images}")
    if not 0.0 <= data_cfg.holdout_fraction < 1.0:
        raise DataError(f"data.holdout_fraction must be in [0, 1), got {data_cfg.holdout_fraction}")
    dataset = loader(data_cfg, seed)
    dataset.hflip = bool(dataset.allows_flip and data_cfg.hflip)
    dataset.seed = seed
    dataset.data_cfg = data_cfg
    return dataset


# ---- helpers ------------------------------------------------------------------------------------

def _to_unit_range(uint8_images: np.ndarray) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float32 in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(uint8_images)).float().div_(127.5).sub_(1.0)


def _resize(images: torch.Tensor, resolution: int) -> torch.Tensor:
    if resolution == images.shape[-1]:
        return images
    shrink = resolution < images.shape[-1]
    out = F.interpolate(images, size=(resolution, resolution), mode="bilinear", align_corners=False,
                        antialias=shrink)
    return out.clamp_(-1.0, 1.0)


def _split(images: torch.Tensor, labels: torch.Tensor, data_cfg: DataConfig, seed: int):
    """Deterministic three-way split into (train, train labels, heldout, heldout labels, featnet, featnet labels).

    The featnet part (data.featnet_fraction of the pool) is fixed by FEATNET_SPLIT_SEED; the held-out part
    (data.holdout_fraction of the pool) and the training order come from `seed`; data.max_images caps training.
    """
    total = images.shape[0]
    fixed = np.random.default_rng(FEATNET_SPLIT_SEED).permutation(total)
    num_featnet = int(round(total * data_cfg.featnet_fraction))
    feat, rest = np.sort(fixed[:num_featnet]), np.sort(fixed[num_featnet:])
    order = torch.from_numpy(rest[np.random.default_rng(seed).permutation(rest.shape[0])])
    num_heldout = int(round(total * data_cfg.holdout_fraction))
    held, train = order[:num_heldout], order[num_heldout:]
    if data_cfg.max_images:
        train = train[: data_cfg.max_images]
    feat = torch.from_numpy(feat)
    return images[train], labels[train], images[held], labels[held], images[feat], labels[feat]


def _check_resolution(data_cfg: DataConfig) -> int:
    native = datasets.DATASETS[data_cfg.name].native_resolution
    resolution = data_cfg.resolution or native
    if resolution < 2:
        raise DataError(f"data.resolution must be 0 (native {native}) or >= 2 for data.name={data_cfg.name}, "
                        f"got {data_cfg.resolution}")
    return resolution


# ---- digits -------------------------------------------------------------------------------------

def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """(1797, 8, 8) pixel values 0..16 and labels. Reads scikit-learn's bundled CSV directly when it can:
    importing sklearn.datasets alone takes about a second."""
    spec = importlib.util.find_spec("sklearn")
    for root in (spec.submodule_search_locations or []) if spec else []:
        csv = Path(root) / "datasets" / "data" / "digits.csv.gz"
        if csv.is_file():
            table = np.loadtxt(csv, delimiter=",", dtype=np.float32)
            return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.images.astype(np.float32), bunch.target.astype(np.int64)


def _load_digits(data_cfg: DataConfig, seed: int) -> Dataset:
    resolution = _check_resolution(data_cfg)
    pixels, target = _digits_arrays()
    images = torch.from_numpy(pixels).unsqueeze(1).div_(8.0).sub_(1.0)  # 0..16 -> [-1, 1]
    images = _resize(images, resolution)
    labels = torch.from_numpy(target)
    train, train_labels, held, held_labels, feat, feat_labels = _split(images, labels, data_cfg, seed)
    return Dataset(train=train.contiguous(), heldout=held.contiguous(), name="digits",
                   channels=datasets.DATASETS["digits"].channels,
                   resolution=resolution, allows_flip=False, train_labels=train_labels,
                   heldout_labels=held_labels, num_classes=10, label_kind="class", featnet=feat.contiguous(),
                   featnet_labels=feat_labels)


# ---- patches ------------------------------------------------------------------------------------


def _load_patches(data_cfg: DataConfig, seed: int) -> Dataset:
    resolution = data_cfg.resolution
    if resolution not in PATCH_RESOLUTIONS:
        raise DataError(f"data.resolution must be one of {', '.join(map(str, PATCH_RESOLUTIONS))} for "
                        f"data.name=patches, got {resolution}")
    rng = np.random.default_rng(seed)
    fixed_rng = np.random.default_rng(FEATNET_SPLIT_SEED)
    pool = PATCH_REGION // resolution
    counts = {"heldout": int(round(PATCHES_PER_SOURCE * data_cfg.holdout_fraction)),
              "featnet": int(round(PATCHES_PER_SOURCE * data_cfg.featnet_fraction))}
    counts["train"] = PATCHES_PER_SOURCE - counts["heldout"] - counts["featnet"]
    parts = {name: ([], [], []) for name in ("train", "heldout", "featnet")}
    for index, name in enumerate(PATCH_SOURCES):
        photo = _source_photo(name)
        cells = _split_cells(photo.shape[1], photo.shape[2], data_cfg, fixed_rng, rng)
        window_std = _window_std(photo)
        for part_id, part in enumerate(("train", "heldout", "featnet")):
            part_rng = fixed_rng if part == "featnet" else rng
            crops, boxes = _patch_regions(photo, counts[part], part_rng, _window_inside(cells == part_id), window_std)
            if pool > 1:  # exact area average, so each resolution shows the same region
                crops = F.avg_pool2d(crops, pool)
            images, labels, where = parts[part]
            images.append(crops.mul_(2.0).sub_(1.0).clamp_(-1.0, 1.0))
            labels.append(torch.full((crops.shape[0],), index, dtype=torch.int64))
            where.append(torch.cat([torch.full((boxes.shape[0], 1), index, dtype=torch.int64), boxes], dim=1))
    out = {name: tuple(torch.cat(x) for x in values) for name, values in parts.items()}
    order = torch.from_numpy(rng.permutation(out["train"][0].shape[0]))
    if data_cfg.max_images:
        order = order[: data_cfg.max_images]
    out["train"] = tuple(x[order] for x in out["train"])
    return Dataset(train=out["train"][0].contiguous(), heldout=out["heldout"][0].contiguous(), name="patches",
                   channels=datasets.DATASETS["patches"].channels, resolution=resolution, allows_flip=True,
                   train_labels=out["train"][1],
                   heldout_labels=out["heldout"][1], num_classes=len(PATCH_SOURCES), label_kind="source_image",
                   featnet=out["featnet"][0].contiguous(), featnet_labels=out["featnet"][1],
                   crop_boxes={name: values[2] for name, values in out.items()})


def _load_patches_grey(data_cfg: DataConfig, seed: int) -> Dataset:
    rgb = _load_patches(data_cfg, seed)
    return Dataset(train=_grey(rgb.train), heldout=_grey(rgb.heldout), name="patches_grey", channels=1,
                   resolution=rgb.resolution, allows_flip=True, train_labels=rgb.train_labels,
                   heldout_labels=rgb.heldout_labels, num_classes=rgb.num_classes, label_kind=rgb.label_kind,
                   featnet=_grey(rgb.featnet), featnet_labels=rgb.featnet_labels, crop_boxes=rgb.crop_boxes)


# ---- cifar10 ------------------------------------------------------------------------------------

def _data_folder(data_cfg: DataConfig, hint: str) -> Path:
    if not data_cfg.path:
        raise DataError(f"data.path is empty; data.name={data_cfg.name} needs local files: {hint}")
    folder = Path(data_cfg.path).expanduser()
    if not folder.is_dir():
        raise DataError(f"data.path={str(folder)!r} is not a folder; data.name={data_cfg.name} needs local "
                        f"files: {hint}")
    return folder


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise DataError(f"missing CIFAR-10 file {str(path)!r}; {CIFAR_URL_HINT}")
    try:
        with open(path, "rb") as handle:
            batch = pickle.load(handle, encoding="bytes")
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
    except Exception as err:
        raise DataError(f"CIFAR-10 file {str(path)!r} is not a pickled dict with b'data' and b'labels' "
                        f"({type(err).__name__}: {err}); {CIFAR_URL_HINT}") from None
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or data.shape[0] != labels.shape[0]:
        raise DataError(f"CIFAR-10 file {str(path)!r}: b'data' must be uint8 N x 3072 with N labels, got "
                        f"{data.shape} and {labels.shape[0]} labels; {CIFAR_URL_HINT}")
    return data.reshape(-1, 3, 32, 32), labels


def _load_cifar10(data_cfg: DataConfig, seed: int) -> Dataset:
    folder = _data_folder(data_cfg, CIFAR_URL_HINT)
    resolution = _check_resolution(data_cfg)
    parts = [_read_cifar_batch(folder / f"data_batch_{i}") for i in range(1, 6)]
    test_data, test_labels = _read_cifar_batch(folder / "test_batch")
    return _official_split(data_cfg, seed, "cifar10", resolution, np.concatenate([p[0] for p in parts]),
                           np.concatenate([p[1] for p in parts]), test_data, test_labels, 10)


def _official_split(data_cfg, seed, name, resolution, train_u8, train_labels, held_u8, held_labels,
                    num_classes) -> Dataset:
    """Training set (shuffled, capped by data.max_images); the official held-out split is halved (by
    FEATNET_SPLIT_SEED) into the featnet part and the held-out part, each capped at MAX_OFFICIAL_HELDOUT."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(train_u8.shape[0])
    if data_cfg.max_images:
        order = order[: data_cfg.max_images]
    fixed = np.random.default_rng(FEATNET_SPLIT_SEED).permutation(held_u8.shape[0])
    half = held_u8.shape[0] // 2
    feat_order = np.sort(fixed[:half][:MAX_OFFICIAL_HELDOUT])
    rest = np.sort(fixed[half:])
    held_order = np.sort(rest[rng.permutation(rest.shape[0])[:MAX_OFFICIAL_HELDOUT]])
    train = _resize(_to_unit_range(train_u8[np.sort(order)]), resolution)
    heldout = _resize(_to_unit_range(held_u8[held_order]), resolution)
    return Dataset(train=train, heldout=heldout, name=name, channels=datasets.DATASETS[name].channels,
                   resolution=resolution, allows_flip=True,
                   train_labels=torch.from_numpy(train_labels[np.sort(order)]),
                   heldout_labels=torch.from_numpy(held_labels[held_order]),
                   num_classes=num_classes, label_kind="class",
                   featnet=_resize(_to_unit_range(held_u8[feat_order]), resolution),
                   featnet_labels=torch.from_numpy(held_labels[feat_order]))


# ---- imagenet64 ---------------------------------------------------------------------------------

def _read_imagenet_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise DataError(f"missing ImageNet 64x64 file {str(path)!r}; {IMAGENET_URL_HINT}")
    try:
        with np.load(path) as archive:
            data = np.asarray(archive["data"], dtype=np.uint8)
            labels = np.asarray(archive["labels"], dtype=np.int64).reshape(-1)
    except Exception as err:
        raise DataError(f"ImageNet 64x64 file {str(path)!r} is not an .npz with 'data' and 'labels' "
                        f"({type(err).__name__}: {err}); {IMAGENET_URL_HINT}") from None
    if data.ndim != 2 or data.shape[1] != 3 * 64 * 64 or data.shape[0] != labels.shape[0]:
        raise DataError(f"ImageNet 64x64 file {str(path)!r}: 'data' must be uint8 N x 12288 (3x64x64, planar) "
                        f"with N labels, got {data.shape} and {labels.shape[0]} labels; {IMAGENET_URL_HINT}")
    if labels.size and (labels.min() < 1 or labels.max() > 1000):
        raise DataError(f"ImageNet 64x64 file {str(path)!r}: labels must be 1-based in [1, 1000], got "
                        f"[{labels.min()}, {labels.max()}]")
    return data.reshape(-1, 3, 64, 64), labels - 1


def _load_imagenet64(data_cfg: DataConfig, seed: int) -> Dataset:
    """Training batches are read in order until data.max_images images are in memory (all 1.28M images as
    float32 need ~63 GB, so set data.max_images on ordinary machines)."""
    folder = _data_folder(data_cfg, IMAGENET_URL_HINT)
    resolution = _check_resolution(data_cfg)
    batch_paths = sorted(folder.glob("train_data_batch_*.npz"), key=lambda p: int(p.stem.rsplit("_", 1)[-1])
                         if p.stem.rsplit("_", 1)[-1].isdigit() else math.inf)
    if not batch_paths:
        raise DataError(f"no train_data_batch_*.npz files in data.path={str(folder)!r}; {IMAGENET_URL_HINT}")
    data, labels, count = [], [], 0
    for path in batch_paths:
        batch_data, batch_labels = _read_imagenet_npz(path)
        data.append(batch_data)
        labels.append(batch_labels)
        count += batch_data.shape[0]
        if data_cfg.max_images and count >= data_cfg.max_images:
            break
    val_data, val_labels = _read_imagenet_npz(folder / "val_data.npz")
    return _official_split(data_cfg, seed, "imagenet64", resolution, np.concatenate(data),
                           np.concatenate(labels), val_data, val_labels, 1000)
