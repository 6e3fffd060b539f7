r"""Editing an image with a diffusion model: SDEdit (img2img) and inpainting.

Both start from a clean latent z_0 of a given image instead of from pure noise.

**SDEdit** (Meng et al. 2022, "image-to-image" in Stable Diffusion interfaces).
Noise the image part of the way, then run the sampler from there. The
``strength`` s in (0, 1] says how far: of the N timesteps the sampler would
visit, only the last ceil(s N) are kept, and the start is drawn from the forward
process at the first of them,

    x_{t_start} = sqrt(\bar\alpha_{t_start}) z_0 + sqrt(1 - \bar\alpha_{t_start}) \epsilon.

A small s keeps the layout and only redraws details; s = 1 starts at the
noisiest visited step and keeps only the faint trace that \bar\alpha_{T-1} > 0
leaves (notebook 02).

**Inpainting by blending** (the "RePaint"-style replacement of Lugmayr et al.
2022 without resampling; what Stable Diffusion does with a model not trained
for inpainting). A mask m (1 = redraw, 0 = keep) chooses per latent position.
After every sampler step to t' the kept region is replaced by the original
noised to the same level, so that the model always sees a consistent x_{t'}:

    x_{t'} <- m * x_{t'} + (1 - m) * (sqrt(\bar\alpha_{t'}) z_0 + sqrt(1 - \bar\alpha_{t'}) \epsilon'),

and after the last step the kept region is z_0 exactly.
"""

from __future__ import annotations

import math

import torch

from . import checks
from .schedules import NoiseSchedule


def img2img_timesteps(timesteps: torch.Tensor, strength: float) -> torch.Tensor:
    """The timesteps an SDEdit run visits: the last ceil(strength * N) of the sampler's N.

    :param timesteps: the sampler's timesteps, noisiest first (N,)
    :param strength: s in (0, 1]; 1 visits all N
    :returns: (ceil(s N),), noisiest first
    """
    strength = checks.strength("strength", strength)
    n = len(timesteps)
    # at least one step: a tiny strength still denoises the lightly noised image once
    keep = max(1, math.ceil(strength * n - 1e-9))
    return timesteps[n - keep:]


def noised_start(schedule: NoiseSchedule, z0: torch.Tensor, t: int, noise: torch.Tensor) -> torch.Tensor:
    """The start of an SDEdit run: z_0 (B, C, h, w) noised to timestep t by q(x_t | x_0)."""
    # x_t = sqrt(\bar\alpha_t) z_0 + sqrt(1 - \bar\alpha_t) \epsilon
    return schedule.add_noise(z0, noise, torch.tensor(t))


def inpaint_blend(x: torch.Tensor, known: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Keep the sampler's x where the mask is 1 and the known image where it is 0.

    :param x: the sampler's state (B, C, h, w)
    :param known: the original at the same noise level (B, C, h, w)
    :param mask: (B or 1, 1, h, w) in [0, 1]; 1 = redraw
    """
    # x <- m x + (1 - m) known
    return mask * x + (1 - mask) * known


def latent_mask(mask: torch.Tensor, factor: int) -> torch.Tensor:
    """A pixel mask (B, 1, H, W) -> a latent mask (B, 1, H / factor, W / factor).

    A latent position describes a factor x factor patch; it is redrawn if any pixel of its patch is
    (max-pooling), so that the redrawn region covers the whole masked area.
    """
    return torch.nn.functional.max_pool2d(mask.float(), factor)


def check_edit_inputs(shape: tuple[int, ...], x_init: torch.Tensor | None, strength: float,
                      mask: torch.Tensor | None) -> None:
    """Refuse an inconsistent img2img or inpainting request before any work, naming the argument."""
    if x_init is None:
        if strength != 1.0:
            raise ValueError(f"strength={strength} needs an image to start from: pass x_init (the clean latents)")
        if mask is not None:
            raise ValueError("a mask needs the image it applies to: pass x_init (the clean latents) as well")
        return
    if not isinstance(x_init, torch.Tensor):
        raise TypeError(f"x_init must be a tensor of clean latents {tuple(shape)}, got {type(x_init).__name__}")
    if tuple(x_init.shape) != tuple(shape):
        raise ValueError(f"x_init has shape {tuple(x_init.shape)}, but the sampler draws {tuple(shape)}")
    if not torch.isfinite(x_init).all():
        raise ValueError("x_init holds NaN or infinite values")
    if mask is not None:
        if not isinstance(mask, torch.Tensor):
            raise TypeError(f"mask must be a tensor (B or 1, 1, h, w) of values in [0, 1], got {type(mask).__name__}")
        if mask.dim() != 4 or mask.shape[1] != 1 or mask.shape[0] not in (1, shape[0]) \
                or tuple(mask.shape[2:]) != tuple(shape[2:]):
            raise ValueError(f"mask has shape {tuple(mask.shape)}; expected ({shape[0]} or 1, 1, "
                             f"{', '.join(map(str, shape[2:]))}), 1 = redraw, 0 = keep")
        if not torch.isfinite(mask).all() or mask.min() < 0 or mask.max() > 1:
            raise ValueError("mask values must lie in [0, 1] (1 = redraw, 0 = keep)")
