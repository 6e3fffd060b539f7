"""Multi-head attention and the transformer blocks of the U-Net.

Attention lets every position of a sequence look at every position of a
second sequence (the *context*) and take a weighted average of what it finds
there. With queries ``Q = x W_q`` from the sequence ``x`` (N positions) and
keys / values ``K = c W_k``, ``V = c W_v`` from the context ``c`` (L positions),

    Attention(Q, K, V) = softmax(Q K^T / sqrt(d)) V            (Vaswani et al., 2017)

where ``d`` is the width of one head. Row ``n`` of the N x L matrix
``A = softmax(Q K^T / sqrt(d))`` is a probability distribution over the
context: it says how much position ``n`` takes from each context position.
*Multi-head* attention runs ``heads`` such attentions side by side on slices
of width ``d`` and concatenates the results.

* **Self-attention**: the context is the sequence itself (``c = x``). In the
  U-Net every pixel of a feature map looks at every other pixel.
* **Cross-attention**: the context is the prompt (the output of the prompt
  encoder, ``(B, L, context_dim)``). Every pixel asks "which words concern
  me?"; this is the *only* place where the prompt enters the U-Net, exactly as
  in Stable Diffusion. The maps ``A`` of cross-attention (one heat map per
  word) show where in the image each word acts.

A :class:`SpatialTransformer` wraps these for feature maps: it flattens the
``H x W`` pixels of a ``(B, C, H, W)`` map into ``H*W`` tokens, runs
:class:`BasicTransformerBlock` (self-attention, cross-attention, feed-forward,
each pre-normed and residual) and folds the tokens back into a map.

Large maps use ``F.scaled_dot_product_attention``, which never stores ``A``;
tiny ones (on the CPU) compute ``A`` explicitly, which is faster there: all heads
in one C kernel (``fused.attention_rows``) that reads Q, K and V where one packed
projection wrote them, or with PyTorch's products where the kernel cannot run.
To look at the maps, wrap a forward pass in :func:`record_attention`; only then
is ``A`` kept. The projections are :class:`~diffusion_lib.layers.Linear`: ``nn.Linear``
with the same weights, whose large products run faster on an x86-64 CPU.
"""

from __future__ import annotations

import math
from collections import defaultdict
from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .fused import attention_rows, attention_rows_applies, geglu, group_norm
from .layers import Linear, linear, shortcuts_enabled


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Scaled dot-product attention (Vaswani et al. 2017), the formula itself.

    :param q: queries (..., N, d)
    :param k: keys (..., L, d)
    :param v: values (..., L, d_v)
    :param mask: optional bool, broadcastable to (..., N, L); ``False`` = may not attend
    :returns: the output A V (..., N, d_v) and the weights A (..., N, L), every row summing to 1
    """
    # A = softmax(Q K^T / sqrt(d))   (..., N, L); every row sums to 1 over the keys
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = scores.softmax(dim=-1)
    # out = A V
    return weights @ v, weights


def attention_keys_major(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                         mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    r""":func:`attention`, computed on the transposed matrix ``A^T`` (keys along the rows).

    The CPU's softmax vectorises along the dimension it normalises: a row of 8 prompt tokens
    fills half an AVX-512 register and takes a slow path (~10x slower per entry than a row of
    16). Normalising ``A^T = softmax(K Q^T / sqrt(d))`` down its columns vectorises over the N
    queries instead; ``A V = (A^T)^T V`` reads the transpose without a copy. Same arguments and
    results as :func:`attention` (the weights come back as a transposed view).
    """
    # A^T = softmax(K Q^T / sqrt(d)), normalised over the L keys: dimension -2   (..., L, N)
    scores_t = k @ q.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores_t = scores_t.masked_fill(~mask.transpose(-2, -1), float("-inf"))
    weights = scores_t.softmax(dim=-2).transpose(-2, -1)  # A (..., N, L)
    # out = A V
    return weights @ v, weights


class Attention(nn.Module):
    """Multi-head (self- or cross-) attention as in Stable Diffusion's ``CrossAttention``.

    :param query_dim: width of the sequence that asks (``x``)
    :param context_dim: width of the sequence that is looked at; ``None`` for
        self-attention (the context is ``x`` itself)
    :param heads: number of heads
    :param head_dim: width ``d`` of one head
    """

    def __init__(self, query_dim: int, context_dim: int | None = None, heads: int = 4, head_dim: int = 16):
        super().__init__()
        self.is_cross_attention = context_dim is not None
        context_dim = query_dim if context_dim is None else context_dim
        self.heads, self.head_dim = heads, head_dim
        inner = heads * head_dim
        # Q = x W_q, K = c W_k, V = c W_v  (no biases, as in Stable Diffusion)
        self.to_q = Linear(query_dim, inner, bias=False)
        self.to_k = Linear(context_dim, inner, bias=False)
        self.to_v = Linear(context_dim, inner, bias=False)
        self.to_out = Linear(inner, query_dim)
        # set by record_attention(): (dict to append the maps to, this module's name)
        self.recorder: tuple[dict[str, list[torch.Tensor]], str] | None = None

    # On the CPU, an N x L matrix of at most this many entries (a 4x4 map looking at itself,
    # or at 8 prompt tokens) runs in the fused C kernel of fused.py, or, where that cannot run, is
    # computed explicitly: for so few entries the three plain matrix products beat PyTorch's fused
    # kernel by 30-50%, forward and backward, and storing A costs nothing.
    explicit_max_entries = 256
    # ... and as A^T (attention_keys_major) when there are fewer keys than this: the softmax of a row of
    # 8 prompt tokens (or of a 2x2 map's 4 pixels) does not fill a 16-float AVX-512 register
    keys_major_below = 16

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, heads * d) -> (B, heads, N, d)"""
        b, n, _ = x.shape
        return x.view(b, n, self.heads, self.head_dim).transpose(1, 2)

    def _forward_fused(self, x: torch.Tensor, context: torch.Tensor, context_index: torch.Tensor | None
                       ) -> torch.Tensor:
        """:meth:`forward` on the CPU's fused kernel (``fused.attention_rows``): the projections that share
        an input as one product ([Q | K | V] = x [W_q | W_k | W_v], or Q and [K | V] = c [W_k | W_v], on the
        distinct prompts only when ``context_index`` is given), and all heads read where that product wrote
        them."""
        if context is not x:
            q = self.to_q(x)  # (B, N, heads * d)
            kv = linear(context, torch.cat([self.to_k.weight, self.to_v.weight]))  # (B or P, L, 2 heads d)
            out, weights = attention_rows(q, kv, self.heads, context_index)
        else:
            qkv = linear(x, torch.cat([self.to_q.weight, self.to_k.weight, self.to_v.weight]))  # (B, N, 3 heads d)
            out, weights = attention_rows(qkv, None, self.heads)
        self._record(weights)
        return self.to_out(out)

    def _record(self, weights: torch.Tensor) -> None:
        """Keep the weights A (B, heads, N, L) when :func:`record_attention` asks for them."""
        if self.recorder is not None:
            maps, name = self.recorder
            maps[name].append(weights.detach())

    def forward(
        self, x: torch.Tensor, context: torch.Tensor | None = None, key_mask: torch.Tensor | None = None,
        context_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """
        :param x: (B, N, query_dim)
        :param context: (B, L, context_dim), or ``None`` for self-attention
        :param key_mask: optional bool (B, L); ``False`` marks context positions
            nobody may attend to (padding)
        :param context_index: optional (B,): example ``b`` attends to ``context[context_index[b]]``,
            ``context`` then holding the P distinct prompts of the batch (P, L, context_dim)
        :returns: (B, N, query_dim)
        """
        context = x if context is None else context
        n, l = x.shape[1], context.shape[1]
        # a small N x L matrix: all heads in the fused C kernel where it runs (fused.py), else explicitly
        tiny = n * l <= self.explicit_max_entries
        if tiny and key_mask is None and attention_rows_applies(x, n, l):
            return self._forward_fused(x, context, context_index)
        small = tiny and shortcuts_enabled(x)
        if context_index is not None:
            context = context[context_index]  # (B, L, context_dim): each example's own prompt
        q = self._split_heads(self.to_q(x))  # (B, heads, N, d)
        k = self._split_heads(self.to_k(context))  # (B, heads, L, d)
        v = self._split_heads(self.to_v(context))  # (B, heads, L, d)
        mask = None if key_mask is None else key_mask[:, None, None, :]  # (B, 1, 1, L)

        if self.recorder is None and not small:
            # softmax(Q K^T / sqrt(d)) V, fused: the N x L matrix is never stored
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        else:
            few_keys = small and k.shape[-2] < self.keys_major_below
            out, weights = attention_keys_major(q, k, v, mask) if few_keys else attention(q, k, v, mask)
            self._record(weights)
        b, _, n, _ = out.shape
        # concatenate the heads again: (B, heads, N, d) -> (B, N, heads * d)
        out = out.transpose(1, 2).reshape(b, n, self.heads * self.head_dim)
        return self.to_out(out)


@contextmanager
def record_attention(model: nn.Module, kind: str = "cross") -> Iterator[dict[str, list[torch.Tensor]]]:
    """Keep the attention maps ``A = softmax(Q K^T / sqrt(d))`` of ``model`` while the block runs.

    ::

        with record_attention(denoiser.unet) as maps:
            denoiser(x_t, t, tokens)
        for name, calls in maps.items():   # calls[-1]: (B, heads, H*W, L)
            images = attention_map_images(calls[-1], height, width)

    :param model: any module containing :class:`Attention` layers
    :param kind: ``"cross"`` (pixels -> prompt tokens), ``"self"`` or ``"all"``
    :yields: ``{module name: [A of each forward call, ...]}``, each ``A`` of
        shape ``(B, heads, N, L)`` (N queries, L keys), detached
    """
    if kind not in ("cross", "self", "all"):
        raise ValueError(f"kind must be 'cross', 'self' or 'all', not {kind!r}")
    maps: dict[str, list[torch.Tensor]] = defaultdict(list)
    chosen = [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, Attention) and (kind == "all" or m.is_cross_attention == (kind == "cross"))
    ]
    for name, module in chosen:
        module.recorder = (maps, name)
    try:
        yield maps
    finally:
        for _, module in chosen:
            module.recorder = None


def attention_map_images(weights: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Turn recorded cross-attention maps of one block into one image per token.

    A block at a lower resolution sees ``(height / f) x (width / f)`` pixels;
    ``f`` follows from the number of queries ``N``.

    :param weights: (B, heads, N, L) as recorded by :func:`record_attention`
    :param height: height of the U-Net *input* (the latent)
    :param width: width of the U-Net input
    :returns: (B, L, h, w), averaged over the heads; for each pixel the values
        over the L tokens sum to 1
    """
    b, _, n, tokens = weights.shape
    f = math.isqrt(height * width // n)
    h, w = height // f, width // f
    assert h * w == n, f"{n} attention queries do not fit a {height}x{width} input halved by a power of two"
    return weights.mean(dim=1).transpose(1, 2).reshape(b, tokens, h, w)


class GEGLU(nn.Module):
    """Gated GELU (Shazeer, 2020), the feed-forward input layer of Stable Diffusion.

    ``GEGLU(x) = (x W + b) * GELU(x V + c)``: one half of the projection gates the other.
    """

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = Linear(dim_in, 2 * dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # value * GELU(gate), [value | gate] = the projection: one fused kernel on the CPU (fused.py)
        return geglu(self.proj(x))


class FeedForward(nn.Module):
    """Position-wise MLP: ``GEGLU`` to ``mult * dim`` units, then back to ``dim``."""

    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0):
        super().__init__()
        self.net = nn.Sequential(GEGLU(dim, mult * dim), nn.Dropout(dropout), Linear(mult * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    """Self-attention, cross-attention to the prompt, feed-forward; each pre-normed and residual.

    :param dim: token width
    :param context_dim: width of the prompt tokens
    :param heads: attention heads (``dim`` must be divisible by ``heads``)
    :param ff_mult: hidden width of the feed-forward = ``ff_mult * dim``
    """

    def __init__(self, dim: int, context_dim: int, heads: int, ff_mult: int = 4, dropout: float = 0.0):
        super().__init__()
        head_dim = dim // heads
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, None, heads, head_dim)
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = Attention(dim, context_dim, heads, head_dim)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim, ff_mult, dropout)

    def forward(self, x: torch.Tensor, context: torch.Tensor, context_index: torch.Tensor | None = None
                ) -> torch.Tensor:
        """
        :param x: (B, N, dim) pixels as tokens
        :param context: (B, L, context_dim) prompt tokens; or (P, L, context_dim) with ``context_index``
        :param context_index: optional (B,) row of ``context`` that each example uses
        :returns: (B, N, dim)
        """
        # x = x + SelfAttention(LN(x))        pixels look at pixels
        x = x + self.attn1(self.norm1(x))
        # x = x + CrossAttention(LN(x), c)    pixels look at the prompt
        x = x + self.attn2(self.norm2(x), context, context_index=context_index)
        # x = x + FF(LN(x))
        x = x + self.ff(self.norm3(x))
        return x


class SpatialTransformer(nn.Module):
    """A transformer over the pixels of a feature map, conditioned on the prompt.

    (B, C, H, W) -> GroupNorm -> H*W tokens -> proj_in -> ``depth`` x
    :class:`BasicTransformerBlock` -> proj_out -> (B, C, H, W) -> + input.

    ``proj_out`` starts at zero (as in Stable Diffusion), so a fresh block is
    the identity and training grows its contribution from nothing.

    :param channels: C
    :param context_dim: width of the prompt tokens
    :param heads: attention heads (``channels`` must be divisible by ``heads``)
    :param norm_groups: groups of the GroupNorm
    """

    def __init__(
        self,
        channels: int,
        context_dim: int,
        heads: int,
        depth: int = 1,
        norm_groups: int = 8,
        ff_mult: int = 4,
        dropout: float = 0.0,
    ):
        super().__init__()
        assert channels % heads == 0, f"{channels} channels cannot be split into {heads} attention heads"
        self.norm = nn.GroupNorm(norm_groups, channels, eps=1e-6)
        self.proj_in = Linear(channels, channels)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(channels, context_dim, heads, ff_mult, dropout) for _ in range(depth)
        )
        self.proj_out = Linear(channels, channels)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, x: torch.Tensor, context: torch.Tensor, context_index: torch.Tensor | None = None
                ) -> torch.Tensor:
        """
        :param x: (B, C, H, W)
        :param context: (B, L, context_dim); or (P, L, context_dim) with ``context_index``
        :param context_index: optional (B,) row of ``context`` that each example uses
        :returns: (B, C, H, W)
        """
        b, c, h, w = x.shape
        # (B, C, H, W) -> (B, H*W, C): one token per pixel
        tokens = group_norm(self.norm, x, silu=False).flatten(2).transpose(1, 2)
        tokens = self.proj_in(tokens)
        for block in self.transformer_blocks:
            tokens = block(tokens, context, context_index)
        tokens = self.proj_out(tokens)
        # back to a map; residual connection around the whole transformer
        return x + tokens.transpose(1, 2).reshape(b, c, h, w)
