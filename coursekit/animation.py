r"""Animations of a sampling run: one moving image grid per row, and the same frames as a static strip.

A sampler visits N timesteps; at each one we can decode what it holds (the
noisy latent x_t) and what it currently believes the final image is (\hat x_0).
:func:`grid_animation` turns such a sequence of frames into a matplotlib
animation, shown in the notebook as an HTML/JavaScript player with
:func:`show`. The player needs a live front end (JupyterLab, a browser); PDFs
and batch logs drop it, so every notebook that animates also draws
:func:`strip`, a static figure with a few of the same frames::

    frames = {"x_t": [x_t at each step], "predicted x_0": [x0_hat at each step]}
    titles = [f"step {i + 1} of {n}, t = {t}" for i, t in enumerate(timesteps)]
    show(grid_animation(frames, titles, nrow=8))
    strip(frames, titles, picks=strip_indices(len(titles), 6), nrow=8)
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch

from diffusion_lib.data import as_pixels
from diffusion_lib.plotting import image_grid


def _grid(images: torch.Tensor, nrow: int, upscale: int):
    """uint8 grid of model-space floats (N, 1, H, W) in [-1, 1] (clipped; 32x32 cropped to 28x28) or uint8 (N, H, W)."""
    images = images.detach().cpu()
    pixels = as_pixels(images)
    return image_grid(pixels, nrow, upscale=upscale)


def _check(frames: Mapping[str, Sequence[torch.Tensor]], titles: Sequence[str]) -> int:
    if not frames:
        raise ValueError("frames is empty: give at least one row, e.g. {'x_t': [tensor, ...]}")
    counts = {label: len(seq) for label, seq in frames.items()}
    if len(set(counts.values())) != 1 or len(titles) != next(iter(counts.values())):
        raise ValueError(f"every row needs one image batch per title: {len(titles)} titles, frames per row {counts}")
    return len(titles)


def strip_indices(num_frames: int, count: int) -> list[int]:
    """``count`` frame indices spread evenly from the first to the last frame (fewer if there are fewer frames)."""
    if num_frames < 1 or count < 1:
        raise ValueError(f"need num_frames >= 1 and count >= 1, got {num_frames} and {count}")
    if count == 1:
        return [num_frames - 1]
    return sorted({round(i * (num_frames - 1) / (count - 1)) for i in range(count)})


def grid_animation(
    frames: Mapping[str, Sequence[torch.Tensor]],
    titles: Sequence[str],
    nrow: int,
    upscale: int = 2,
    interval_ms: int = 250,
    width: float = 8.0,
):
    """A ``matplotlib.animation.FuncAnimation`` with one image grid per row of ``frames``.

    :param frames: row label -> one image batch per frame; each batch (N, 1, H, W) in model space or uint8 (N, H, W)
    :param titles: one title per frame (e.g. the step and its timestep)
    :param nrow: images per grid row
    :param interval_ms: time between frames in the player
    :returns: the animation; its figure is closed, so the notebook shows only what :func:`show` displays
    """
    import matplotlib.pyplot as plt
    from matplotlib.animation import FuncAnimation

    count = _check(frames, titles)
    labels = list(frames)
    first = [_grid(frames[label][0], nrow, upscale) for label in labels]
    height = width * sum(g.shape[0] for g in first) / first[0].shape[1] + 0.45 * len(labels) + 0.3
    fig, axes = plt.subplots(len(labels), 1, figsize=(width, height), squeeze=False)
    artists = []
    for ax, label, grid in zip(axes[:, 0], labels, first):
        artists.append(ax.imshow(grid, cmap="gray", vmin=0, vmax=255, interpolation="nearest"))
        ax.set_axis_off()
        ax.set_title(label, fontsize=9, loc="left")
    heading = fig.suptitle(titles[0], fontsize=10)
    fig.tight_layout()

    def update(i: int):
        for artist, label in zip(artists, labels):
            artist.set_data(_grid(frames[label][i], nrow, upscale))
        heading.set_text(titles[i])
        return [*artists, heading]

    anim = FuncAnimation(fig, update, frames=count, interval=interval_ms, blit=False)
    plt.close(fig)
    return anim


def show(anim) -> None:
    """Display ``anim`` as an HTML/JavaScript player (frames embedded as PNG, no ffmpeg needed)."""
    from IPython.display import HTML, display

    display(HTML(anim.to_jshtml(default_mode="once")))


def strip(
    frames: Mapping[str, Sequence[torch.Tensor]],
    titles: Sequence[str],
    picks: Sequence[int],
    nrow: int,
    upscale: int = 1,
    width: float = 11.0,
) -> None:
    """A static figure of the frames ``picks``: one column per picked frame, one row per label.

    :param picks: frame indices, e.g. :func:`strip_indices` (n, 6)
    """
    import matplotlib.pyplot as plt

    _check(frames, titles)
    labels = list(frames)
    sample = _grid(frames[labels[0]][picks[0]], nrow, upscale)
    aspect = sample.shape[0] / sample.shape[1]
    panel = width / len(picks)
    fig, axes = plt.subplots(len(labels), len(picks), figsize=(width, len(labels) * (0.8 * panel * aspect + 0.4)),
                             squeeze=False)
    for r, label in enumerate(labels):
        for c, i in enumerate(picks):
            ax = axes[r, c]
            ax.imshow(_grid(frames[label][i], nrow, upscale), cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(titles[i], fontsize=8)
            if c == 0:
                ax.set_ylabel(label, fontsize=8)
    fig.tight_layout()
    plt.show()
