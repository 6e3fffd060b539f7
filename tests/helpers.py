"""Helpers shared by the tests."""

from __future__ import annotations

import torch


def randomize_zero_inits(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Fresh models zero their last layers (output 0, blocks = identity); give them values so every path shows."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.abs().max() == 0:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    return model
