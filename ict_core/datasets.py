"""The data sets a run can train on, each described once: the single home of these facts.

ict_core/config takes data.name's choices and its cross-field checks from here, data.py looks up each data set's
loader here, and tune/ and analysis/ read channels and native resolution from here (d = C*H*W, the `dataset`
column "name-resolution"). This module imports nothing of the project, so any of them may import it.

Adding a data set: one entry in DATASETS plus its loader function in ict_core/data.py (named by `loader`).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    channels: int
    # Side length in pixels when data.resolution is 0; 0 = none (data.resolution must be set).
    native_resolution: int
    # data.resolution values the data set offers; empty = any (resized from the native size).
    resolutions: tuple = ()
    needs_path: bool = False  # True: the files are not bundled; data.path must name a local folder
    loader: str = ""  # name of the function in ict_core.data that loads it: loader(data_cfg, seed) -> Dataset
    summary: str = ""
    # Data sets cut from the same images share a family (Q1's dimension ladder fits c* = a d^b within one);
    # empty = a family of its own.
    family: str = ""

    def resolution(self, requested: int = 0) -> int:
        """The side length a run trains at: `requested`, or the native size when it is 0."""
        return int(requested or self.native_resolution)

    def dim(self, requested: int = 0) -> int:
        """d = C*H*W at that resolution (iCT Sec. 3.3: the d of c = 0.00054 sqrt(d))."""
        side = self.resolution(requested)
        return self.channels * side * side

    def key(self, requested: int = 0) -> str:
        """The `dataset` column of the result tables, e.g. "patches-16"."""
        return f"{self.name}-{self.resolution(requested)}"


DATASETS: dict[str, DatasetSpec] = {spec.name: spec for spec in (
    DatasetSpec("digits", channels=1, native_resolution=8, loader="_load_digits",
                summary="scikit-learn's 8x8 handwritten digits (bundled)"),
    DatasetSpec("patches", channels=3, native_resolution=0, resolutions=(8, 16, 32, 64), loader="_load_patches",
                summary="crops of the photographs bundled with scikit-image", family="photographs"),
    DatasetSpec("patches_grey", channels=1, native_resolution=0, resolutions=(8, 16, 32, 64),
                loader="_load_patches_grey", family="photographs",
                summary="the same crops as patches, in grey (luma): a third of the dimension at each size"),
    DatasetSpec("cifar10", channels=3, native_resolution=32, needs_path=True, loader="_load_cifar10",
                summary="CIFAR-10, python version (cifar-10-batches-py)"),
    DatasetSpec("imagenet64", channels=3, native_resolution=64, needs_path=True, loader="_load_imagenet64",
                summary="downsampled ImageNet 64x64 (.npz batches)"),
)}

NAMES: tuple[str, ...] = tuple(DATASETS)
NEEDS_PATH: tuple[str, ...] = tuple(n for n, s in DATASETS.items() if s.needs_path)


def spec(name: str) -> DatasetSpec:
    """The registry entry of `name`; an unknown name is a ValueError listing the known ones."""
    try:
        return DATASETS[name]
    except (KeyError, TypeError):
        raise ValueError(f"data.name must be one of {', '.join(NAMES)}; got {name!r}") from None


def dataset_dim(name: str, resolution: int = 0) -> tuple[str, int]:
    """("patches-16", C*H*W) of a data set at a data.resolution (0 = native), known without loading it."""
    entry = spec(name)
    return entry.key(resolution), entry.dim(resolution)


def dataset_family(key: str) -> str:
    """The image family of a `dataset` column value ("patches_grey-16" -> "photographs"): its entry's family, else
    its name (a family of its own; a name this registry does not know is its own family too)."""
    name = str(key).rsplit("-", 1)[0]
    entry = DATASETS.get(name)
    return (entry.family or entry.name) if entry is not None else name
