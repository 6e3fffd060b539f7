"""The U-Net that predicts the noise: Stable Diffusion's ``UNetModel``, scaled down.

Given a noisy latent ``x_t``, its timestep ``t`` and the prompt's context
vectors ``c``, the U-Net returns a tensor of the same shape as ``x_t``: the
noise ``eps`` it believes was added (or ``v``, see ``denoiser.py``).

Here is the default network on a 4 x 8 x 8 latent (``base_channels=32``,
``channel_mult=(1, 2, 2)``, one ResBlock per level, attention at levels 1
and 2). The encoder runs top-down and saves a skip tensor after every step
(s0..s5); the decoder runs bottom-up and concatenates them in reverse order
(each decoder block stands on the row of the skip it takes)::

    level size  encoder (down_blocks)             skip   decoder (up_blocks)
    0     8x8   conv_in               4 -> 32     s0     ResBlock       32+32 -> 32 -> GN, SiLU, conv_out -> 4
                ResBlock             32 -> 32     s1     ResBlock       64+32 -> 32
                Downsample         8x8 -> 4x4     s2     ResBlock+Attn  64+32 -> 64, Upsample 4x4 -> 8x8
    1     4x4   ResBlock+Attn        32 -> 64     s3     ResBlock+Attn  64+64 -> 64
                Downsample         4x4 -> 2x2     s4     ResBlock+Attn  64+64 -> 64, Upsample 2x2 -> 4x4
    2     2x2   ResBlock+Attn        64 -> 64     s5     ResBlock+Attn  64+64 -> 64
                                  middle (2x2): ResBlock, Attn, ResBlock

* The **encoder** half (``down_blocks``) halves the resolution at every level
  but the last with a stride-2 convolution, and widens the channels to
  ``base_channels * channel_mult[level]``.
* The **decoder** half (``up_blocks``) mirrors it, doubling the resolution
  with nearest-neighbour upsampling + a convolution.
* **Skip connections**: every intermediate map of the encoder is saved and
  *concatenated* (along channels) to the decoder's input at the same
  resolution, so fine detail does not have to squeeze through the bottleneck.
* **Time**: ``t`` becomes a sinusoidal vector, then an MLP; every ResBlock
  adds a learned per-channel bias computed from it, so one network can
  denoise at every noise level.
* **Prompt**: :class:`~diffusion_lib.attention.SpatialTransformer` blocks
  (self-attention, cross-attention to ``c``, feed-forward) sit at the levels
  listed in ``attention_levels`` and in the middle. Attention costs grow with
  the square of the number of pixels. Stable Diffusion 1.x, with 64x64 latents,
  can afford it at 64x64, 32x32, 16x16 and in the middle; this model, on a
  laptop budget, measured that attention at 8x8 halves its training speed and
  keeps it at 4x4, 2x2 and in the middle.

Any input whose height and width are multiples of ``2 ** (len(channel_mult) - 1)``
works; the convolutions and attention do not care about the size.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .attention import SpatialTransformer
from .checks import config_from_dict
from .fused import group_norm
from .layers import Conv3x3, Downsample, Upsample


@dataclass
class UNetConfig:
    """Size of the U-Net.

    :param in_channels: channels of the latent ``x_t``
    :param out_channels: channels of the prediction (= ``in_channels``)
    :param base_channels: channels at the full resolution
    :param channel_mult: one entry per resolution level; level ``i`` has
        ``base_channels * channel_mult[i]`` channels and ``1 / 2**i`` of the input size
    :param num_res_blocks: ResBlocks per level in the encoder (the decoder has one more)
    :param attention_levels: levels that get a SpatialTransformer after each
        ResBlock (the middle block always has one)
    :param context_dim: width of the prompt's context vectors
    :param num_heads: attention heads
    :param norm_groups: groups of every GroupNorm (must divide every channel count)
    :param transformer_depth: BasicTransformerBlocks per SpatialTransformer
    :param ff_mult: feed-forward hidden width = ``ff_mult * channels``
    :param dropout: dropout inside the ResBlocks
    """

    in_channels: int = 4
    out_channels: int = 4
    base_channels: int = 32
    channel_mult: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 1
    attention_levels: tuple[int, ...] = (1, 2)
    context_dim: int = 64
    num_heads: int = 4
    norm_groups: int = 8
    transformer_depth: int = 1
    ff_mult: int = 4
    dropout: float = 0.0

    def __post_init__(self):
        self.channel_mult = tuple(self.channel_mult)
        self.attention_levels = tuple(self.attention_levels)
        levels = len(self.channel_mult)
        bad = [lvl for lvl in self.attention_levels if not 0 <= lvl < levels]
        if bad:
            raise ValueError(f"attention_levels {bad} do not exist: the U-Net has levels 0..{levels - 1}")
        for ch in [self.base_channels * m for m in self.channel_mult]:
            if ch % self.norm_groups:
                raise ValueError(f"{ch} channels cannot be split into norm_groups={self.norm_groups} groups")
            if ch % self.num_heads:
                raise ValueError(f"{ch} channels cannot be split into num_heads={self.num_heads} heads")

    @property
    def size_multiple(self) -> int:
        """Height and width of the input must be multiples of this."""
        return 2 ** (len(self.channel_mult) - 1)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["channel_mult"], d["attention_levels"] = list(self.channel_mult), list(self.attention_levels)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "UNetConfig":
        return config_from_dict(cls, d)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of the timesteps, as in the Transformer's positions and DDPM.

    With ``half = dim / 2`` frequencies ``w_i = max_period ** (-i / half)``, ``i = 0 .. half-1``:

        emb(t) = [cos(t w_0), ..., cos(t w_{half-1}), sin(t w_0), ..., sin(t w_{half-1})]

    Low ``i`` oscillate fast (tell neighbouring steps apart), high ``i``
    slowly (tell early from late); the MLP after it learns what to make of them.

    :param t: (B,) timesteps, integer or float
    :param dim: even embedding width
    :returns: (B, dim) float32
    """
    assert dim % 2 == 0, f"the timestep embedding width must be even, got {dim}"
    half = dim // 2
    # w_i = max_period ** (-i / half)
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    # t w_i
    args = t.float()[:, None] * freqs[None, :]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class ResBlock(nn.Module):
    """Residual block with time injection (``ResBlock`` of Stable Diffusion / DDPM).

    ``h = Conv(SiLU(GN(x)))``, ``h = h + Linear(SiLU(emb))`` (a bias per
    channel), ``h = Conv(Dropout(SiLU(GN(h))))``, output ``skip(x) + h``,
    where ``skip`` is a 1x1 convolution when the channel count changes.
    The last convolution starts at zero, so a fresh block is the identity.
    """

    def __init__(self, in_channels: int, out_channels: int, emb_dim: int, norm_groups: int, dropout: float = 0.0):
        super().__init__()
        assert in_channels % norm_groups == 0, f"{in_channels} channels cannot form {norm_groups} GroupNorm groups"
        self.norm1 = nn.GroupNorm(norm_groups, in_channels)
        # Conv3x3 is nn.Conv2d(..., 3, padding=1), computed faster on tiny maps (see layers.py)
        self.conv1 = Conv3x3(in_channels, out_channels)
        self.emb_proj = nn.Linear(emb_dim, out_channels)
        self.norm2 = nn.GroupNorm(norm_groups, out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = Conv3x3(out_channels, out_channels)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """
        :param x: (B, C_in, H, W)
        :param emb: (B, emb_dim) time embedding
        :returns: (B, C_out, H, W)
        """
        # SiLU(GN(x)): one fused kernel on channels_last CPU maps (fused.py)
        h = self.conv1(group_norm(self.norm1, x, silu=True))
        # h = h + Linear(SiLU(emb))[:, :, None, None]   (time injection: one bias per channel),
        # added inside the next SiLU(GN(h)) (one pass over h on the CPU)
        time_shift = self.emb_proj(F.silu(emb))  # (B, C_out)
        h = self.conv2(self.dropout(group_norm(self.norm2, h, silu=True, shift=time_shift)))
        return self.skip(x) + h


class TimestepSequential(nn.Sequential):
    """Run layers in order, handing each what it needs: ResBlocks get the time
    embedding, SpatialTransformers the context, the rest only the map."""

    def forward(self, h: torch.Tensor, emb: torch.Tensor, context: torch.Tensor,
                context_index: torch.Tensor | None = None) -> torch.Tensor:
        for layer in self:
            if isinstance(layer, ResBlock):
                h = layer(h, emb)
            elif isinstance(layer, SpatialTransformer):
                h = layer(h, context, context_index)
            else:
                h = layer(h)
        return h


class UNet(nn.Module):
    """Noise predictor ``eps_theta(x_t, t, c)``.

    Set ``unet.skip_scale`` (default 1.0) to scale every skip connection, e.g.
    ``0.0`` replaces the skip tensors by zeros to show what the decoder loses without them.
    """

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = cfg = config
        self.skip_scale = 1.0
        emb_dim = 4 * cfg.base_channels

        def attention(ch: int) -> SpatialTransformer:
            return SpatialTransformer(
                ch, cfg.context_dim, cfg.num_heads, cfg.transformer_depth, cfg.norm_groups, cfg.ff_mult
            )

        def res(ch_in: int, ch_out: int) -> ResBlock:
            return ResBlock(ch_in, ch_out, emb_dim, cfg.norm_groups, cfg.dropout)

        # t -> sinusoidal (base_channels) -> MLP -> emb (4 * base_channels)
        self.time_embed = nn.Sequential(
            nn.Linear(cfg.base_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.base_channels, 3, padding=1)

        # encoder: remember the channels of every map that becomes a skip connection
        ch = cfg.base_channels
        skip_channels = [ch]
        self.down_blocks = nn.ModuleList()
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                layers = [res(ch, cfg.base_channels * mult)]
                ch = cfg.base_channels * mult
                if level in cfg.attention_levels:
                    layers.append(attention(ch))
                self.down_blocks.append(TimestepSequential(*layers))
                skip_channels.append(ch)
            if level < len(cfg.channel_mult) - 1:
                self.down_blocks.append(TimestepSequential(Downsample(ch)))
                skip_channels.append(ch)

        self.mid_block = TimestepSequential(res(ch, ch), attention(ch), res(ch, ch))

        # decoder: one more ResBlock per level than the encoder, each eating one skip
        self.up_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                layers = [res(ch + skip_channels.pop(), cfg.base_channels * mult)]
                ch = cfg.base_channels * mult
                if level in cfg.attention_levels:
                    layers.append(attention(ch))
                if level > 0 and i == cfg.num_res_blocks:
                    layers.append(Upsample(ch))
                self.up_blocks.append(TimestepSequential(*layers))

        self.norm_out = nn.GroupNorm(cfg.norm_groups, ch)
        self.conv_out = nn.Conv2d(ch, cfg.out_channels, 3, padding=1)
        # a fresh U-Net predicts 0, the mean of the noise
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
                context_index: torch.Tensor | None = None) -> torch.Tensor:
        """
        :param x: (B, in_channels, H, W) noisy latents; H and W multiples of ``config.size_multiple``
        :param t: (B,) timesteps (int or float), or a scalar for the whole batch
        :param context: (B, L, context_dim) prompt tokens from the prompt encoder
        :param context_index: optional (B,) row of ``context`` that each example uses; ``context`` then
            holds the P distinct prompts of the batch (P, L, context_dim), and each cross-attention
            projects them once (the same result as ``context[context_index]``, with less work)
        :returns: (B, out_channels, H, W)
        """
        cfg = self.config
        b, c, height, width = x.shape
        m = cfg.size_multiple
        assert height % m == 0 and width % m == 0, (
            f"This U-Net halves the resolution {len(cfg.channel_mult) - 1} times, so height and width must be "
            f"multiples of {m} (e.g. {m}x{m}, {2 * m}x{2 * m}, {m}x{2 * m}); got {height}x{width}. "
            f"Pad or crop the input."
        )
        assert c == cfg.in_channels, f"expected {cfg.in_channels} input channels, got x of shape {tuple(x.shape)}"
        rows = context.shape[0] if context_index is None else context_index.shape[0]  # one context per example
        assert rows == b and context.shape[-1] == cfg.context_dim, (
            f"context must be (B={b}, L, {cfg.context_dim}) (or context_index (B={b},)), got {tuple(context.shape)}"
        )
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(b)

        emb = self.time_embed(timestep_embedding(t, cfg.base_channels).to(x.dtype))
        h = self.conv_in(x)
        skips = [h]
        for block in self.down_blocks:
            h = block(h, emb, context, context_index)
            skips.append(h)
        h = self.mid_block(h, emb, context, context_index)
        for block in self.up_blocks:
            # skip connection by concatenation: (B, C, h, w) + (B, C_skip, h, w) -> (B, C + C_skip, h, w),
            # the skip scaled only when asked to (the product is a pass over it, forward and backward)
            skip = skips.pop()
            h = torch.cat([h, skip if self.skip_scale == 1.0 else self.skip_scale * skip], dim=1)
            h = block(h, emb, context, context_index)
        return self.conv_out(group_norm(self.norm_out, h, silu=True))
