"""Cutting the crops of the patches data sets (ict_core.data) out of the photographs bundled with scikit-image:
each photo downscaled, split into a grid of cells per part, textured PATCH_REGION px windows drawn inside one
part's cells; and their grey version by ITU-R BT.601 luma."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ict_core.config import DataConfig
from ict_core.data_types import DataError

# Each photo is resized so its shorter side has this many pixels; a crop is PATCH_REGION px of it (20 % of
# the short side), large enough to hold an object part (an eye, a cup handle) rather than flat texture, and
# small enough that each photo holds a grid of >= 16 split cells (PATCH_CELL), so that the held-out and
# featnet cells are scattered over the photo and their crops show the same kinds of content as training's.
PATCH_SHORT_SIDE = 320
PATCH_REGION = 64
# Crops whose pixel std (in [0, 1] units) is below this are near-uniform (black retina border, empty sky).
PATCH_MIN_STD = 0.04
# Cells of the per-photo split grid have sides of at least this many pixels (> PATCH_REGION, so a crop fits).
PATCH_CELL = 80


def _source_photo(name: str) -> torch.Tensor:
    """A bundled photograph as float32 (3, H, W) in [0, 1], downscaled so its short side is PATCH_SHORT_SIDE."""
    import skimage.data

    try:
        image = np.asarray(getattr(skimage.data, name)())
    except Exception as err:  # e.g. a scikit-image build that moved the file out of the wheel
        raise DataError(f"scikit-image photo {name!r} is not available offline ({err}); the patches data set "
                        f"needs scikit-image >= 0.22 with its bundled data files") from None
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    image = torch.from_numpy(np.ascontiguousarray(image[..., :3])).permute(2, 0, 1).float().div_(255.0)
    height, width = image.shape[-2:]
    scale = PATCH_SHORT_SIDE / min(height, width)
    size = (max(PATCH_REGION, round(height * scale)), max(PATCH_REGION, round(width * scale)))
    return F.interpolate(image[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]


def _window_std(photo: torch.Tensor) -> torch.Tensor:
    """Pixel std of every PATCH_REGION x PATCH_REGION window (all channels), from summed-area tables."""
    size = PATCH_REGION

    def window_sums(plane):
        table = F.pad(plane.cumsum(0).cumsum(1), (1, 0, 1, 0))
        return table[size:, size:] - table[:-size, size:] - table[size:, :-size] + table[:-size, :-size]

    pixels = photo.double()
    count = photo.shape[0] * size * size
    mean = window_sums(pixels.sum(0)) / count
    return (window_sums(pixels.square().sum(0)) / count - mean.square()).clamp_(min=0.0).sqrt_()


def _split_cells(height: int, width: int, data_cfg: DataConfig, fixed_rng: np.random.Generator,
                 rng: np.random.Generator) -> torch.Tensor:
    """(H, W) map of each pixel's part (0 train, 1 heldout, 2 featnet): a grid of cells of >= PATCH_CELL px;
    data.featnet_fraction of the cells (at least one) go to featnet, drawn by fixed_rng, and
    data.holdout_fraction of them (at least one unless 0) to heldout, drawn by rng; the rest train."""
    rows, cols = max(1, height // PATCH_CELL), max(1, width // PATCH_CELL)
    cells = rows * cols
    num_featnet = max(1, int(round(cells * data_cfg.featnet_fraction)))
    num_heldout = max(1, int(round(cells * data_cfg.holdout_fraction))) if data_cfg.holdout_fraction > 0 else 0
    if num_featnet + num_heldout >= cells:
        raise DataError(f"a patches photo of {height}x{width} px has {cells} cells of {PATCH_CELL} px; "
                        f"{num_featnet} featnet + {num_heldout} held-out cells leave none for training")
    featnet_cells = fixed_rng.permutation(cells)[:num_featnet]
    others = np.setdiff1d(np.arange(cells), featnet_cells)
    heldout_cells = others[rng.permutation(others.shape[0])[:num_heldout]]
    row_edges = np.linspace(0, height, rows + 1).round().astype(int)
    col_edges = np.linspace(0, width, cols + 1).round().astype(int)
    parts = torch.zeros(height, width, dtype=torch.int64)
    for chosen, part in ((featnet_cells, 2), (heldout_cells, 1)):
        for cell in chosen.tolist():
            r, c = divmod(cell, cols)
            parts[row_edges[r]:row_edges[r + 1], col_edges[c]:col_edges[c + 1]] = part
    return parts


def _window_inside(mask: torch.Tensor) -> torch.Tensor:
    """(H', W') bool: the PATCH_REGION window at (top, left) lies wholly inside `mask`."""
    size = PATCH_REGION
    table = F.pad(mask.double().cumsum(0).cumsum(1), (1, 0, 1, 0))
    sums = table[size:, size:] - table[:-size, size:] - table[size:, :-size] + table[:-size, :-size]
    return sums >= size * size - 0.5


def _patch_regions(photo: torch.Tensor, count: int, rng: np.random.Generator, allowed: torch.Tensor,
                   window_std: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` crops of PATCH_REGION px at random positions among the `allowed` windows, skipping near-uniform
    ones; returns (crops, (count, 2) top-left positions)."""
    positions = torch.nonzero(allowed)
    if count == 0:
        return photo.new_zeros(0, 3, PATCH_REGION, PATCH_REGION), positions[:0]
    if positions.shape[0] == 0:
        raise DataError("a patches split cell holds no whole crop; PATCH_CELL must exceed PATCH_REGION")
    picks = positions[torch.from_numpy(rng.integers(0, positions.shape[0], size=4 * count))]
    tops, lefts = picks[:, 0], picks[:, 1]
    textured = window_std[tops, lefts] >= PATCH_MIN_STD
    keep = torch.nonzero(textured).flatten()
    if keep.numel() < count:  # a nearly flat region: fill up with the flat crops, in drawn order
        keep = torch.cat([keep, torch.nonzero(~textured).flatten()])
    keep = keep[:count]
    windows = photo.unfold(1, PATCH_REGION, 1).unfold(2, PATCH_REGION, 1)  # a view: (3, H', W', R, R)
    crops = windows[:, tops[keep], lefts[keep]].permute(1, 0, 2, 3).contiguous()
    return crops, torch.stack([tops[keep], lefts[keep]], dim=1)


LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601 weights of R, G, B


def _grey(images: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) in [-1, 1] -> (N, 1, H, W) luma, still in [-1, 1] (the weights sum to 1)."""
    weights = images.new_tensor(LUMA).view(1, 3, 1, 1)
    return (images * weights).sum(1, keepdim=True).clamp_(-1.0, 1.0).contiguous()
