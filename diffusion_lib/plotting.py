"""Pictures: image grids as arrays and PNG files (matplotlib-free, so the CLI stays light)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def image_grid(images: torch.Tensor, nrow: int, pad: int = 2, upscale: int = 1) -> np.ndarray:
    """uint8 images (N, H, W) -> one uint8 array (rows*(H+pad)+pad, nrow*(W+pad)+pad), row-major.

    :param nrow: images per row
    :param upscale: nearest-neighbour magnification (28 px is small on a screen)
    """
    images = torch.as_tensor(images)
    if images.dim() == 4:  # (N, 1, H, W)
        images = images[:, 0]
    n, h, w = images.shape
    rows = -(-n // nrow)
    grid = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad), 128, dtype=np.uint8)
    for i, img in enumerate(images.numpy()):
        r, c = divmod(i, nrow)
        grid[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + c * (w + pad) : pad + c * (w + pad) + w] = img
    if upscale > 1:
        grid = grid.repeat(upscale, 0).repeat(upscale, 1)
    return grid


def save_image_grid(images: torch.Tensor, path: str | Path, nrow: int, upscale: int = 2) -> Path:
    """Write a PNG grid of uint8 images (N, 28, 28), ``nrow`` per row."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image_grid(images, nrow, upscale=upscale)).save(path)
    return path
