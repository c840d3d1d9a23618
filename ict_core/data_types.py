"""The Dataset a loader of ict_core.data returns (three disjoint parts of images in [-1, 1], their labels), the
error of missing or malformed data files, and random horizontal flips."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import torch

from ict_core.config import DataConfig
from ict_core.errors import BadInput


class DataError(BadInput):
    """Missing or malformed local data files; the message names the path and how to get the files."""


@dataclass(eq=False)
class Dataset:
    """Images as float32 tensors (N, C, H, W) in [-1, 1], plus integer labels for the feature network.

    `hflip` is the effective flip setting: the data set allows flips and data.hflip is on.
    """

    train: torch.Tensor
    heldout: torch.Tensor
    name: str
    channels: int
    resolution: int
    allows_flip: bool
    hflip: bool = False
    train_labels: torch.Tensor | None = None
    heldout_labels: torch.Tensor | None = None
    num_classes: int = 0
    label_kind: str = "class"  # "class", or "source_image" for patches
    # Images the generator never trains on, for the feature network and FD's reference (see module docstring).
    featnet: torch.Tensor | None = None
    featnet_labels: torch.Tensor | None = None
    # patches: (photo index, top, left) of each crop in the downscaled photo, per part ("train", "heldout", ...).
    crop_boxes: dict | None = None
    seed: int = 0
    data_cfg: DataConfig | None = None  # what load_dataset was given (None for hand-built data sets)
    _fingerprint: str | None = field(default=None, repr=False)

    @property
    def dim(self) -> int:
        return self.channels * self.resolution * self.resolution

    @property
    def key(self) -> str:
        """data.name plus resolution, e.g. "patches-16" (the `dataset` column of the result tables)."""
        return f"{self.name}-{self.resolution}"

    def fingerprint(self) -> str:
        """Content hash of images and labels; keys the feature-network and reference-statistics caches."""
        if self._fingerprint is None:
            digest = hashlib.blake2b(digest_size=16)
            for tensor in (self.train, self.heldout, self.train_labels, self.heldout_labels, self.featnet,
                           self.featnet_labels):
                if tensor is not None:
                    digest.update(str(tuple(tensor.shape)).encode())
                    digest.update(tensor.contiguous().cpu().numpy().tobytes())
            self._fingerprint = digest.hexdigest()
        return self._fingerprint

    def augment(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Random horizontal flips when this data set uses them; otherwise `images` unchanged."""
        return random_hflip(images, generator) if self.hflip else images


def random_hflip(images: torch.Tensor, generator: torch.Generator | None = None, p: float = 0.5) -> torch.Tensor:
    """Flip each image of a (B, C, H, W) batch left-right with probability p, drawing from `generator`."""
    if images.ndim != 4:
        raise ValueError(f"random_hflip expects a (B, C, H, W) batch, got shape {tuple(images.shape)}")
    gen_device = generator.device if generator is not None else torch.device("cpu")
    flip = torch.rand(images.shape[0], generator=generator, device=gen_device) < p
    flip = flip.to(images.device).view(-1, 1, 1, 1)
    return torch.where(flip, images.flip(-1), images)
