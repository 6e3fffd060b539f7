"""Three hot spots of the training step as fused CPU kernels, each beside the PyTorch ops it replaces.

PyTorch runs ``SiLU(GroupNorm(x))`` as two ops, each a trip through memory, and multi-head
attention on a 4x4 map as a dozen small ops: heads copied out of the projections' rows, three
batched products of 16 x 16 matrices, a softmax, the heads copied back, and as many again
backward. On the U-Net's small maps the time goes to those trips and copies, not to arithmetic.
The C kernels of ``kernels.c`` (built by :mod:`native`) compute each formula in one pass:

* :func:`attention_rows`: ``softmax(Q K^T / sqrt(d)) V`` for every head, reading Q, K, V where
  the projections wrote them: one packed product [Q | K | V] (or Q and [K | V]), the heads side
  by side in each row;
* :func:`group_norm`: ``SiLU(GroupNorm(x + shift))`` (or the GroupNorm alone, the shift optional) on
  channels_last maps;
* :func:`geglu`: ``value * GELU(gate)`` from the projection's output ``[value | gate]``.

Each function runs the PyTorch ops instead where the kernels do not apply: off the CPU, in
another dtype or layout, inside ``layers.reference_kernels()``, or where the kernels could not be
built (:func:`native.unavailable_reason` says why). The results are the same up to float rounding
(``tests/test_fused.py`` compares values and gradients); the weights are the same modules'.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from . import native
from .layers import shortcuts_enabled

# the kernels' sequences: at most this many queries times keys (a 4x4 map looking at itself is 256)
ATTENTION_MAX_ENTRIES = 4096


def _kernels(x: torch.Tensor):
    """The loaded kernels if they may run on ``x`` (float32 on the CPU, shortcuts on), else ``None``."""
    if x.dtype != torch.float32 or not shortcuts_enabled(x, "fused"):
        return None
    return native.library()


class _Attention(torch.autograd.Function):
    """Multi-head attention over packed projections: ``queries`` (B, N, ...) holds Q in its first
    ``width`` columns; ``keys_values`` (B or P, L, 2 width) holds [K | V] (with ``kv_index`` (B,),
    sample b uses row ``kv_index[b]``), or is ``None`` when ``queries`` is a self-attention's
    [Q | K | V] (B, N, 3 width)."""

    @staticmethod
    def forward(ctx, queries, keys_values, kv_index, heads: int, width: int):
        queries = queries.contiguous()
        kv = queries if keys_values is None else keys_values.contiguous()
        k_at = width if keys_values is None else 0  # K's first column in kv's rows; V follows it
        b, n, _ = queries.shape
        l, d = kv.shape[1], width // heads
        out = queries.new_empty(b, n, width)
        weights_t = queries.new_empty(b, heads, l, n)  # A^T: the kernel's scores run along the queries
        index = None if kv_index is None else kv_index.to(torch.int64).contiguous()
        native.library().attention_forward(
            queries.data_ptr(), kv[..., k_at:].data_ptr(), kv[..., k_at + width:].data_ptr(),
            None if index is None else index.data_ptr(), out.data_ptr(), weights_t.data_ptr(), b, n, l, heads, d,
            queries.shape[2], kv.shape[2], 1.0 / math.sqrt(d), torch.get_num_threads())
        ctx.save_for_backward(queries, kv, index, weights_t)
        ctx.heads, ctx.width, ctx.k_at, ctx.packed = heads, width, k_at, keys_values is None
        weights = weights_t.transpose(-2, -1)
        ctx.mark_non_differentiable(weights)
        return out, weights

    @staticmethod
    def backward(ctx, grad_out, _grad_weights):
        queries, kv, index, weights_t = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        b, n, _ = queries.shape
        l, d, k_at, width = kv.shape[1], ctx.width // ctx.heads, ctx.k_at, ctx.width
        # the gradients in the inputs' own packing: one buffer for [Q | K | V], or one for Q and one for [K | V]
        # (with an index: one row per sample, summed into the shared rows below)
        d_queries = torch.empty_like(queries)
        if ctx.packed:
            d_kv = d_queries
        else:
            d_kv = kv.new_empty(b, l, kv.shape[2]) if index is not None else torch.empty_like(kv)
        native.library().attention_backward(
            queries.data_ptr(), kv[..., k_at:].data_ptr(), kv[..., k_at + width:].data_ptr(),
            None if index is None else index.data_ptr(), weights_t.data_ptr(), grad_out.data_ptr(),
            d_queries.data_ptr(), d_kv[..., k_at:].data_ptr(), d_kv[..., k_at + width:].data_ptr(), b, n, l,
            ctx.heads, d, queries.shape[2], kv.shape[2], 1.0 / math.sqrt(d), torch.get_num_threads())
        if index is not None:
            d_kv = torch.zeros_like(kv).index_add_(0, index, d_kv)
        return d_queries, None if ctx.packed else d_kv, None, None, None


def attention_rows_applies(x: torch.Tensor, queries: int, keys: int) -> bool:
    """Whether :func:`attention_rows` runs the fused kernel for ``queries`` x ``keys`` on input ``x``."""
    return _kernels(x) is not None and queries * keys <= ATTENTION_MAX_ENTRIES


def _formula(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The PyTorch ops that :func:`attention_rows` fuses; same arguments, unpacked."""
    b, n, width = q.shape
    d = width // heads
    # (B, N, heads * d) -> (B, heads, N, d)
    q_h, k_h, v_h = (t.reshape(t.shape[0], t.shape[1], heads, d).transpose(1, 2) for t in (q, k, v))
    # A = softmax(Q K^T / sqrt(d))
    weights = (q_h @ k_h.transpose(-2, -1) / math.sqrt(d)).softmax(dim=-1)
    # out = A V, the heads side by side again
    return (weights @ v_h).transpose(1, 2).reshape(b, n, width), weights.detach()


def attention_rows(queries: torch.Tensor, keys_values: torch.Tensor | None, heads: int,
                   kv_index: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Multi-head ``softmax(Q K^T / sqrt(d)) V`` on packed projections, fused on the CPU.

    :param queries: (B, N, heads * d) = Q, or for self-attention (``keys_values=None``) the
        packed projection [Q | K | V] (B, N, 3 heads d); head ``h`` of each in its columns
        ``h*d .. (h+1)*d``
    :param keys_values: (B, L, 2 heads d) = [K | V], or ``None``; with ``kv_index``, (P, L, 2 heads d)
    :param heads: number of heads
    :param kv_index: optional (B,): sample ``b`` attends to row ``kv_index[b]`` of ``keys_values``
        (the P distinct prompts of a batch, projected once each)
    :returns: the heads' outputs side by side (B, N, heads * d), and the weights A (B, heads, N, L)
        (detached: no gradient flows through them; from the kernel, a transposed view)
    """
    width = queries.shape[-1] // 3 if keys_values is None else keys_values.shape[-1] // 2
    kv = queries if keys_values is None else keys_values
    _check_packing(queries, keys_values, kv_index, width)
    if (not attention_rows_applies(queries, queries.shape[1], kv.shape[1]) or width % heads
            or kv.dtype != queries.dtype):
        if kv_index is not None:
            kv = kv[kv_index]
        q = queries[..., :width]
        k, v = kv[..., -2 * width:].split(width, dim=-1)
        return _formula(q, k, v, heads)
    return _Attention.apply(queries, keys_values, kv_index, heads, width)


def _check_packing(queries: torch.Tensor, keys_values: torch.Tensor | None, kv_index: torch.Tensor | None,
                   width: int) -> None:
    """The shapes :func:`attention_rows` takes, checked before the C kernel reads memory by them.

    :raises ValueError: the packings do not fit together; ``IndexError``: ``kv_index`` points outside ``keys_values``
    """
    if keys_values is None:
        if queries.shape[-1] % 3 or kv_index is not None:
            raise ValueError(f"self-attention takes one packed [Q | K | V] (B, N, 3 width) and no index; got "
                             f"{tuple(queries.shape)}{' and an index' if kv_index is not None else ''}")
        return
    rows = keys_values.shape[0] if kv_index is None else kv_index.shape[0]
    if keys_values.shape[-1] % 2 or queries.shape[-1] != width or rows != queries.shape[0]:
        index = "" if kv_index is None else f", index {tuple(kv_index.shape)}"
        raise ValueError(f"Q (B, N, width) and [K | V] (B, L, 2 width) do not fit: {tuple(queries.shape)} and "
                         f"{tuple(keys_values.shape)}{index}")
    if kv_index is not None and kv_index.numel() and (kv_index.min() < 0 or kv_index.max() >= keys_values.shape[0]):
        raise IndexError(f"kv_index holds rows {kv_index.min().item()}..{kv_index.max().item()}, but keys_values has "
                         f"{keys_values.shape[0]}")


class _GroupNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, shift, weight, bias, groups: int, eps: float, silu: bool):
        b, c, h, w = x.shape
        y = torch.empty_like(x)  # channels_last, as x
        mean, rstd = x.new_empty(b, groups), x.new_empty(b, groups)
        shift = None if shift is None else shift.contiguous()
        native.library().group_norm_forward(
            x.data_ptr(), None if shift is None else shift.data_ptr(), weight.data_ptr(), bias.data_ptr(),
            y.data_ptr(), mean.data_ptr(), rstd.data_ptr(), b, h * w, c, groups, eps, int(silu),
            torch.get_num_threads())
        ctx.save_for_backward(x, shift, weight, bias, mean, rstd)
        ctx.groups, ctx.silu = groups, silu
        return y

    @staticmethod
    def backward(ctx, grad_y):
        x, shift, weight, bias, mean, rstd = ctx.saved_tensors
        b, c, h, w = x.shape
        grad_y = grad_y.contiguous(memory_format=torch.channels_last)
        dx = torch.empty_like(x)
        dshift = None if shift is None else torch.empty_like(shift)
        # per sample: summed over the batch below, in a fixed order (the same bits at any thread count)
        dweight, dbias = x.new_empty(b, c), x.new_empty(b, c)
        native.library().group_norm_backward(
            x.data_ptr(), None if shift is None else shift.data_ptr(), weight.data_ptr(), bias.data_ptr(),
            mean.data_ptr(), rstd.data_ptr(), grad_y.data_ptr(), dx.data_ptr(),
            None if dshift is None else dshift.data_ptr(), dweight.data_ptr(), dbias.data_ptr(), b, h * w, c,
            ctx.groups, int(ctx.silu), torch.get_num_threads())
        return dx, dshift, dweight.sum(0), dbias.sum(0), None, None, None


def group_norm(norm: nn.GroupNorm, x: torch.Tensor, silu: bool, shift: torch.Tensor | None = None) -> torch.Tensor:
    """``SiLU(norm(x + shift))`` with ``silu=True``, else ``norm(x + shift)``: one fused kernel on channels_last
    CPU maps.

    :param norm: an affine ``nn.GroupNorm`` (its weight, bias, groups and eps are used)
    :param x: (B, C, H, W)
    :param shift: optional (B, C), added to every pixel of ``x`` first (a ResBlock's time embedding)
    :returns: (B, C, H, W), in the memory order of ``x``
    """
    if (_kernels(x) is None or x.dim() != 4 or norm.weight is None or norm.weight.dtype != x.dtype
            or not x.is_contiguous(memory_format=torch.channels_last) or x.shape[1] % norm.num_groups
            or (shift is not None and (shift.shape != x.shape[:2] or shift.dtype != x.dtype))):
        if shift is not None:
            x = x + shift[:, :, None, None]
        return F.silu(norm(x)) if silu else norm(x)
    return _GroupNorm.apply(x, shift, norm.weight, norm.bias, norm.num_groups, norm.eps, silu)


class _GEGLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h):
        h = h.contiguous()
        f = h.shape[-1] // 2
        out = h.new_empty(*h.shape[:-1], f)
        native.library().geglu_forward(h.data_ptr(), out.data_ptr(), h.numel() // (2 * f), f, torch.get_num_threads())
        ctx.save_for_backward(h)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        (h,) = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        f = h.shape[-1] // 2
        dh = torch.empty_like(h)
        native.library().geglu_backward(h.data_ptr(), grad_out.data_ptr(), dh.data_ptr(), h.numel() // (2 * f), f,
                                        torch.get_num_threads())
        return dh


def geglu(h: torch.Tensor) -> torch.Tensor:
    """``value * GELU(gate)`` for ``h = [value | gate]`` (the exact, erf-based GELU), fused on the CPU.

    :param h: (..., 2F), the GEGLU projection's output
    :returns: (..., F)
    """
    if _kernels(h) is None or h.shape[-1] % 2:
        value, gate = h.chunk(2, dim=-1)
        return value * F.gelu(gate)
    return _GEGLU.apply(h)
