"""Showing things in a notebook so that they read well in JupyterLab and in the exported PDF.

* :func:`source`  - the code of a ``diffusion_lib`` function or class, as a highlighted block
* :func:`table`   - rows of numbers as a Markdown table (renders in the PDF, unlike a DataFrame's HTML)
* :func:`images`  - a grid of images on a matplotlib axis
* :func:`pipeline_diagram` - the whole text-to-image pipeline, with this kit's shapes beside Stable Diffusion's
"""

from __future__ import annotations

import inspect
import re
import textwrap
from typing import Any, Sequence

import torch

from diffusion_lib.data import as_pixels
from diffusion_lib.plotting import image_grid


def source(obj: Any) -> None:
    """Display the source of ``obj`` (function, method, class or module) as a Python code block."""
    from IPython.display import Markdown, display

    code = textwrap.dedent(inspect.getsource(obj)).rstrip()
    module = getattr(inspect.getmodule(obj), "__name__", "?")
    display(Markdown(f"`{module}.{getattr(obj, '__qualname__', getattr(obj, '__name__', ''))}`\n\n```python\n{code}\n```"))


def _cell(value: Any, digits: int) -> str:
    if isinstance(value, float) and value == value and abs(value) != float("inf"):
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e6):
            return f"{value:.{digits - 1}e}"
        return f"{value:.{digits}g}"
    return str(value)


def _longest_piece(text: str) -> int:
    """The length of the longest part of a table cell that a line break cannot split."""
    # the export (coursekit.export.breakable_tables) lets a line break after "_", "/" and "(", and after the "."
    # of a long name; never inside a number
    return max([0] + [len(piece) for piece in re.split(r"\s+|(?<=[_/(])|(?<=[A-Za-z]\.)", text)])


def table_markdown(rows: Sequence[Sequence[Any]], headers: Sequence[str], digits: int = 4) -> str:
    """Rows as a Markdown table; floats with ``digits`` significant digits (scientific when tiny or huge).

    A "|" inside a cell (e.g. a norm ||x||) is escaped so that it does not split the cell.
    """
    def escape(text: str) -> str:
        return text.replace("|", "\\|")

    body = []
    for row in rows:
        if len(row) != len(headers):
            raise ValueError(f"a row has {len(row)} cells but there are {len(headers)} headers: {row!r}")
        body.append([escape(_cell(v.item() if hasattr(v, "item") else v, digits)) for v in row])
    head = [escape(h) for h in headers]
    # pandoc (the PDF export) sizes a wide table's columns by the dashes under each header. A number cannot
    # wrap; words and names can (at spaces, and the export lets names break after "_", "." and "("). So a
    # column gets as many dashes as its longest piece that cannot break, and long headers wrap instead of
    # squeezing the numbers of their neighbours into each other
    widths = [max([3] + [_longest_piece(c) for c in [h] + [r[i] for r in body]]) for i, h in enumerate(head)]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("-" * w for w in widths) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in body]
    return "\n".join(lines)


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str], digits: int = 4) -> None:
    """Display :func:`table_markdown` in the notebook."""
    from IPython.display import Markdown, display

    display(Markdown(table_markdown(rows, headers, digits)))


def images(ax, x: torch.Tensor, nrow: int, title: str | None = None, upscale: int = 1) -> None:
    """Draw images on ``ax`` as one grid, ``nrow`` per row.

    :param x: model space (N, 1, H, W) floats in [-1, 1] (clipped; 32x32 is cropped to 28x28), or uint8 (N, H, W)
    """
    x = x.detach().cpu()
    pixels = as_pixels(x)
    ax.imshow(image_grid(pixels, nrow, upscale=upscale), cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=10)


# (label, this kit, Stable Diffusion 1.x) for each stage of the pipeline, left to right
PIPELINE_STAGES = [
    ("prompt", '"a photo of a bag"', '"a photo of a cat"'),
    ("tokenizer", "8 token ids", "77 token ids (BPE)"),
    ("prompt encoder", "transformer, 2 layers\ncontext c: 8 x 64", "CLIP text encoder\ncontext c: 77 x 768"),
    ("U-Net $\\epsilon_\\theta(z_t, t, c)$", "on latents 4 x 8 x 8\n1.8 M parameters", "on latents 4 x 64 x 64\n860 M parameters"),
    ("decoder", "$z_0 / s$ -> 1 x 32 x 32\n(crop to 28 x 28)", "$z_0 / 0.18215$ -> 3 x 512 x 512"),
]


def pipeline_diagram(ax) -> None:
    """Draw the text-to-image pipeline on ``ax``: prompt -> tokens -> context -> U-Net in a sampling loop over
    z_t (from z_T ~ N(0, I), with guidance) -> decoder -> image; each box gives this kit's shapes, then Stable
    Diffusion 1.x's in grey."""
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    ax.set_xlim(0, 10)
    ax.set_ylim(0, 4)
    ax.set_axis_off()
    xs = [0.1, 2.1, 4.1, 6.1, 8.1]
    for x, (label, ours, sd) in zip(xs, PIPELINE_STAGES):
        ax.add_patch(FancyBboxPatch((x, 1.2), 1.8, 1.6, boxstyle="round,pad=0.05", fc="#eef3fb", ec="#3060a0"))
        ax.text(x + 0.9, 2.5, label, ha="center", va="center", fontsize=9, weight="bold")
        ax.text(x + 0.9, 1.95, ours, ha="center", va="center", fontsize=7.5)
        ax.text(x + 0.9, 1.45, sd, ha="center", va="center", fontsize=6.5, color="gray")
    for x0, x1 in zip(xs, xs[1:]):
        ax.add_patch(FancyArrowPatch((x0 + 1.9, 2.0), (x1 - 0.05, 2.0), arrowstyle="-|>", mutation_scale=12))
    # the sampling loop around the U-Net: z_T -> ... -> z_0, the U-Net called once per step (twice with guidance)
    ax.add_patch(FancyArrowPatch((7.6, 1.12), (6.6, 1.12), connectionstyle="arc3,rad=-0.9", arrowstyle="-|>",
                                 mutation_scale=12, color="#a04000"))
    ax.text(7.0, 0.25, "sampler: DDPM / DDIM / DPM-Solver++, N steps from $z_T \\sim \\mathcal{N}(0, I)$\n"
                       "guidance: $\\epsilon_\\varnothing + w\\,(\\epsilon_c - \\epsilon_\\varnothing)$, "
                       "one batched call per step", ha="center", va="center", fontsize=7.5, color="#a04000")
    ax.text(5.0, 3.6, "text -> image: this kit (black) and Stable Diffusion 1.x (grey)", ha="center", fontsize=9)
    ax.text(5.0, 3.2, "training: only the prompt encoder and the U-Net learn; the autoencoder is trained first, "
                      "then frozen", ha="center", va="center", fontsize=7, color="gray")
