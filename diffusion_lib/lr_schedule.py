"""The learning rate over training: a linear warm-up, then a cosine decay to a floor.

The denoiser's trainer (:func:`diffusion_lib.train.learning_rate`, floor 0, or no decay at all)
and the autoencoder's (:mod:`diffusion_lib.train_vae`, floor a tenth of the peak) share it; the
classifier uses PyTorch's one-cycle schedule instead.
"""

from __future__ import annotations

import math


def warmup_cosine(step: int, total_steps: int, peak: float, warmup_steps: int, floor: float = 0.0) -> float:
    """Learning rate for optimizer step ``step`` (0-based) of ``total_steps``.

    :param peak: the rate reached at the end of the warm-up
    :param warmup_steps: steps of linear warm-up (0: none)
    :param floor: the rate the cosine ends at, on the last step
    """
    if warmup_steps > 0 and step < warmup_steps:
        # linear warm-up: lr_k = peak * (k + 1) / warmup_steps; it keeps the first updates small while
        # Adam's moment estimates settle
        return peak * (step + 1) / warmup_steps
    # lr_k = floor + (peak - floor) * (1 + cos(pi * progress)) / 2, progress from 0 (end of warm-up) to 1 (last step)
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
