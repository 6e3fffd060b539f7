"""Helpers shared by the tests."""

from __future__ import annotations

from pathlib import Path

import torch

# a denoiser of a few thousand parameters: the trainer's bookkeeping is under test, not the model
TINY_UNET = {"base_channels": 8, "channel_mult": [1, 2], "attention_levels": [1], "num_heads": 2, "norm_groups": 4,
             "ff_mult": 1}
TINY_PROMPT = {"dim": 16, "num_heads": 2}


def tiny_run(out_dir: Path, vae_dir: Path, **overrides):
    """A TrainConfig for a one-epoch run of the tiny denoiser on 128 images, on one CPU thread."""
    from diffusion_lib.train import TrainConfig

    settings = dict(out_dir=str(out_dir), epochs=1, batch_size=32, limit=128, vae_dir=str(vae_dir), warmup_steps=3,
                    unet=dict(TINY_UNET), prompt=dict(TINY_PROMPT), snapshot_epochs=(1, 2), progress=False,
                    device="cpu", num_threads=1)
    settings.update(overrides)
    return TrainConfig(**settings)


def randomize_zero_inits(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Fresh models zero their last layers (output 0, blocks = identity); give them values so every path shows."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.abs().max() == 0:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    return model
