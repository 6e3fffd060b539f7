"""Resampling layers shared by the autoencoder and the U-Net, the U-Net's 3x3 convolution, and the
linear layer of its transformers."""

from __future__ import annotations

import platform
from contextlib import contextmanager
from functools import lru_cache
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

# the CPU shortcuts: Conv3x3 and attention on tiny maps ("tiny_maps"), large linear layers through oneDNN
# ("linear"), the fused C kernels of fused.py ("fused"); reference_kernels() turns them off
_shortcuts = {"tiny_maps": True, "linear": True, "fused": True}


def shortcuts_enabled(x: torch.Tensor, kind: str = "tiny_maps") -> bool:
    """Whether the CPU shortcuts of ``kind`` may run for input ``x`` (only on the CPU, where they were measured)."""
    return _shortcuts[kind] and x.device.type == "cpu"


@contextmanager
def reference_kernels(tiny_maps: bool = True, linear: bool = True, fused: bool = True) -> Iterator[None]:
    """Run every layer with its textbook kernel: ``nn.Conv2d``'s convolution, ``F.linear``'s matrix
    product and fused attention.

    The results are the same up to float rounding; what changes is the work done. Use it to
    count an architecture's FLOPs (the shortcuts skip multiplications by the zero padding,
    and the fused attention kernel is not counted at all on the CPU) and to test the shortcuts.

    :param tiny_maps: turn off the shortcuts of ``Conv3x3`` and attention on tiny maps
    :param linear: turn off :func:`linear`'s oneDNN path
    :param fused: turn off the fused C kernels (``fused.py``: attention, GroupNorm + SiLU, GEGLU)
    """
    before = dict(_shortcuts)
    _shortcuts["tiny_maps"] = _shortcuts["tiny_maps"] and not tiny_maps
    _shortcuts["linear"] = _shortcuts["linear"] and not linear
    _shortcuts["fused"] = _shortcuts["fused"] and not fused
    try:
        yield
    finally:
        _shortcuts.update(before)


# x86-64 with oneDNN: where the oneDNN kernels were measured faster than the BLAS matrix product
ONEDNN_X86 = platform.machine().lower() in ("x86_64", "amd64") and torch.backends.mkldnn.is_available()
# matrix products of at least this many multiply-adds run as oneDNN convolutions (measured: smaller ones lose)
ONEDNN_MIN_MACS = 8 * 2**20
# the rows are handed to oneDNN as this many images: PyTorch gives a 1x1 convolution to oneDNN only from a
# batch of 16 up (or with several threads)
ONEDNN_IMAGES = 16


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``y = x W^T + b``, as ``F.linear``; large products on an x86-64 CPU run as a oneDNN 1x1 convolution.

    A linear layer applied to every row of ``x`` *is* a 1x1 convolution whose pixels are the rows.
    Seen as 16 images of ``rows / 16`` x 1 pixels with ``K`` channels stored channels_last, ``x``
    needs no copy. The BLAS matrix product behind ``F.linear`` (MKL) reaches only its AVX2 rate on
    the AMD EPYC of the README's performance section, ~80 GFLOP/s a core, and oneDNN's convolution
    twice that: a layer's forward and backward ran 1.07-1.7x faster at 2 threads (1.1-1.9x at 1),
    with cold caches, from 8M multiply-adds up (``bench --options`` times the training step with
    and without). The result is the same up to float rounding: the same multiplications, summed
    in another order.

    :param x: (..., K)
    :param weight: (N, K)
    :param bias: (N,) or None
    :returns: (..., N)
    """
    n, k = weight.shape
    rows = x.numel() // k if k else 0
    if (not (ONEDNN_X86 and shortcuts_enabled(x, "linear")) or rows % ONEDNN_IMAGES
            or rows * k * n < ONEDNN_MIN_MACS or x.dtype != torch.float32):
        return F.linear(x, weight, bias)
    # rows (R, K) -> images (16, K, R/16, 1), stored as (16, R/16, 1, K): the rows' own memory
    images = x.reshape(ONEDNN_IMAGES, rows // ONEDNN_IMAGES, 1, k).permute(0, 3, 1, 2)
    y = F.conv2d(images, weight.view(n, k, 1, 1), bias)  # (16, N, R/16, 1), channels_last
    return y.permute(0, 2, 3, 1).reshape(*x.shape[:-1], n)


class Linear(nn.Linear):
    """``nn.Linear`` (same weights, same names) whose large products run as :func:`linear` chooses."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., in_features) -> (..., out_features)"""
        return linear(x, self.weight, self.bias)


@lru_cache(maxsize=None)
def _tap_selection(height: int, width: int) -> torch.Tensor:
    """Which tap of a 3x3 kernel (padding 1) links each output pixel to each input pixel, one-hot.

    :returns: float (9, P * P), ``P = height * width``; entry ``[3 * ky + kx, p_out * P + p_in]``
        is 1 when input pixel ``p_in`` sits under tap ``(ky, kx)`` of the kernel centred on
        output pixel ``p_out``, else 0 (no tap at all where the kernel does not reach)
    """
    p = height * width
    selection = torch.zeros(9, p, p)
    for y in range(height):
        for x in range(width):
            for ky in range(3):
                for kx in range(3):
                    yi, xi = y + ky - 1, x + kx - 1
                    if 0 <= yi < height and 0 <= xi < width:
                        selection[3 * ky + kx, y * width + x, yi * width + xi] = 1.0
    return selection.view(9, p * p)


class Conv3x3(nn.Conv2d):
    """A 3x3 convolution (stride 1, padding 1) that runs tiny maps as one matrix product.

    A convolution is a linear map, so on an ``H x W`` map it *is* a matrix
    ``M`` of shape ``(C_out*H*W, C_in*H*W)``: ``M[(o, p_out), (i, p_in)] = w[o, i, ky, kx]``
    for the tap ``(ky, kx)`` that links the two pixels, 0 where the kernel does not
    reach. Then ``y = x.flatten(1) @ M^T + b``. On a 2x2 map every output pixel sees
    only 4 of its 9 taps (the rest lie on the zero padding), and the CPU's general
    convolution pays for all 9 in small, badly shaped pieces; the one matrix product
    is ~2.5x faster there, forward and backward (``python -m diffusion_lib bench``).
    On larger maps ``M`` grows as ``(H*W)^2`` and the ordinary convolution wins.

    The weights are an ordinary ``nn.Conv2d``'s (same names, same shapes), so
    checkpoints do not know which path ran.
    """

    # maps of at most this many pixels take the matrix path (on the CPU, where it was measured)
    dense_max_pixels = 4

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(in_channels, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, C_out, H, W)"""
        b, c, height, width = x.shape
        if not shortcuts_enabled(x) or height * width > self.dense_max_pixels:
            return super().forward(x)
        o, p = self.out_channels, height * width
        # M[o, i, p_out, p_in] = sum_k w[o, i, k] S[k, p_out, p_in], S one-hot: the tap k that links the two
        # pixels. A matrix product rather than a lookup w[..., index]: its gradient is a product too, where
        # the lookup's is a scatter-add (index_put_), slow on the CPU
        selection = _tap_selection(height, width).to(x.device, x.dtype)  # (9, P*P)
        matrix = (self.weight.reshape(o * c, 9) @ selection).view(o, c, p, p)  # (C_out, C_in, P, P)
        if x.is_contiguous() or not x.is_contiguous(memory_format=torch.channels_last):
            # x flattened as (C_in, P): y = x M^T + b, b repeated over the P pixels of each output channel
            matrix = matrix.permute(0, 2, 1, 3).reshape(o * p, c * p)
            y = linear(x.reshape(b, c * p), matrix, self.bias.repeat_interleave(p))
            return y.view(b, o, height, width)
        # channels_last: x is stored as (B, H, W, C_in), so it flattens as (P, C_in) without a copy
        matrix = matrix.permute(2, 0, 3, 1).reshape(p * o, p * c)
        y = linear(x.permute(0, 2, 3, 1).reshape(b, p * c), matrix, self.bias.repeat(p))
        return y.view(b, height, width, o).permute(0, 3, 1, 2)  # (B, C_out, H, W), stored channels_last


class Downsample(nn.Module):
    """Halve H and W with a learned stride-2 3x3 convolution: (B, C, H, W) -> (B, C, H/2, W/2)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Double H and W: nearest-neighbour copy, then a 3x3 convolution (no checkerboard artefacts,
    which a transposed convolution may give): (B, C, H, W) -> (B, C, 2H, 2W)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
