"""The model card's pictures: image grids, the loss curve and the ladder plot."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from diffusion_lib.plotting import image_grid, plot_ladder, plot_training_log

ORANGE = np.array([0xFF, 0x7F, 0x0E])  # matplotlib's tab:orange, the autoencoder floor's line
GREEN = np.array([0x2C, 0xA0, 0x2C])  # tab:green, the ladder's second guidance scale


def pixels(path, colour=ORANGE) -> int:
    """Pixels of ``colour`` (orange unless told) in the PNG at ``path``."""
    rgb = np.asarray(Image.open(path).convert("RGB")).astype(int)
    return int((np.abs(rgb - colour).sum(-1) < 30).sum())


def test_image_grid_places_images_row_major():
    images = torch.stack([torch.full((3, 4), i, dtype=torch.uint8) for i in range(5)])
    grid = image_grid(images, nrow=3, pad=1)
    # 2 rows of (3+1)+1, 3 columns of (4+1)+1
    assert grid.shape == (2 * 4 + 1, 3 * 5 + 1)
    # image 4 sits in row 1, column 1
    assert (grid[1 + 4 : 1 + 4 + 3, 1 + 5 : 1 + 5 + 4] == 4).all()
    # the empty sixth cell keeps the padding grey
    assert (grid[5:8, 11:15] == 128).all()


def test_ladder_plot_draws_the_autoencoder_floor_only_when_given(tmp_path):
    results = {3.0: {e: {"fid": 40.0 / e, "accuracy": 1 - 0.5 / e} for e in (1, 2, 5, 10, 25, 50, 100)}}
    floor = {"fid": 0.13, "accuracy": 0.96}
    plain = plot_ladder(results, floor, tmp_path / "plain.png")
    with_ae = plot_ladder(results, floor, tmp_path / "ae.png", autoencoder_floor={"fid": 0.66, "accuracy": 0.95})
    assert Image.open(plain).size == Image.open(with_ae).size == (990, 352)
    assert pixels(plain) == 0
    assert pixels(with_ae) > 200  # a dotted line across the FID panel


@pytest.mark.parametrize("epochs, min_orange", [(1, 1), (30, 50)])
def test_training_log_plot(tmp_path, epochs, min_orange):
    log = tmp_path / "train_log.jsonl"
    log.write_text("".join(json.dumps({"epoch": e, "loss": 0.2 / e, "images_per_s": 400.0}) + "\n"
                           for e in range(1, epochs + 1)))
    path = plot_training_log(log, tmp_path / "loss.png")
    assert Image.open(path).size == (990, 352)
    assert pixels(path) >= min_orange  # the throughput curve (one marker for one epoch)


def test_ladder_plot_draws_a_line_per_guidance_scale(tmp_path):
    rungs = {e: {"fid": 40.0 / e, "accuracy": 1 - 0.5 / e} for e in (1, 10, 100)}
    floor = {"fid": 0.13, "accuracy": 0.96}
    one = plot_ladder({3.0: rungs}, floor, tmp_path / "one.png")
    two = plot_ladder({3.0: rungs, 2.0: {e: {"fid": 20.0 / e, "accuracy": 0.9} for e in rungs}}, floor,
                      tmp_path / "two.png")
    assert pixels(one, GREEN) == 0
    assert pixels(two, GREEN) > 200  # its line in both panels
    with pytest.raises(ValueError, match="at most 5 guidance scales"):
        plot_ladder({float(g): rungs for g in range(6)}, floor, tmp_path / "six.png")
