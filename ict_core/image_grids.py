"""Sample grids: a batch of images as one PNG, and labelled panels side by side (the samples a run saves)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from .fileio import atomic_write

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
