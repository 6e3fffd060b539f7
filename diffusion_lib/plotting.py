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


def encode_png(array: np.ndarray) -> bytes:
    """The PNG file of a uint8 image array (H, W)."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def save_image_grid(images: torch.Tensor, path: str | Path, nrow: int, upscale: int = 2) -> Path:
    """Write a PNG grid of uint8 images (N, 28, 28), ``nrow`` per row (atomically: the old file or the new one)."""
    from .atomic import atomic_write_bytes

    path = Path(path)
    atomic_write_bytes(path, encode_png(image_grid(images, nrow, upscale=upscale)))
    return path


def plot_training_log(log: str | Path, path: str | Path, title: str = "denoiser training") -> Path:
    """PNG of loss (and images/s) per epoch from a ``train_log.jsonl``."""
    import json

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in Path(log).read_text().splitlines() if line.strip()]
    epochs = [r["epoch"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.2))
    ax1.plot(epochs, [r["loss"] for r in rows], marker=".")
    ax1.set(xlabel="epoch", ylabel="training loss (MSE of the noise)", title=title)
    ax1.set_yscale("log")
    ax1.grid(alpha=0.3)
    ax2.plot(epochs, [r["images_per_s"] for r in rows], marker=".", color="tab:orange")
    ax2.set(xlabel="epoch", ylabel="images / s", title="throughput", ylim=(0, None))
    ax2.grid(alpha=0.3)
    return _save(fig, path)


LADDER_COLOURS = ("tab:blue", "tab:green", "tab:purple", "tab:red", "tab:brown")  # orange is the autoencoder's


def plot_ladder(ladders: dict[float, dict[int, dict]], floor: dict, path: str | Path,
                autoencoder_floor: dict | None = None) -> Path:
    """PNG of FID-FMNIST and conditional accuracy against training epochs, one line per guidance scale.

    :param ladders: ``{guidance: {epoch: evaluate() result}}``, the rungs measured at each guidance scale
    :param floor: the real-data floor at the same number of images
    :param autoencoder_floor: the autoencoder's reconstructions of the same images, the floor a latent
        model cannot go below (drawn when given)
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if len(ladders) > len(LADDER_COLOURS):
        raise ValueError(f"plot_ladder draws at most {len(LADDER_COLOURS)} guidance scales, got {len(ladders)}")
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.2))
    for (guidance, results), colour, marker in zip(ladders.items(), LADDER_COLOURS, "osD^v"):
        epochs = sorted(results)
        style = dict(marker=marker, color=colour, label=f"guidance {guidance:g}")
        ax1.plot(epochs, [results[e]["fid"] for e in epochs], **style)
        ax2.plot(epochs, [results[e]["accuracy"] for e in epochs], **style)
    ax1.axhline(floor["fid"], color="gray", ls="--", label="real-data floor")
    if autoencoder_floor:
        ax1.axhline(autoencoder_floor["fid"], color="tab:orange", ls=":", label="autoencoder floor")
    ax1.set(xlabel="epoch", ylabel="FID-FMNIST", xscale="log", yscale="log", title="FID (lower is better)")
    ax1.legend()
    ax2.axhline(floor["accuracy"], color="gray", ls="--", label="real training images")
    ax2.set(xlabel="epoch", ylabel="conditional accuracy", xscale="log", ylim=(0, 1.02), title="prompted class drawn")
    ax2.legend(loc="lower right")
    epochs = sorted({e for results in ladders.values() for e in results})
    for ax in (ax1, ax2):
        ax.set_xticks(epochs, [str(e) for e in epochs])
        ax.grid(alpha=0.3)
    return _save(fig, path)


def _save(fig, path: str | Path) -> Path:
    """Lay ``fig`` out, write it to ``path`` (PNG at 110 dpi) and free it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
