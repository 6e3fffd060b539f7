"""``python -m diffusion_lib bench``: how fast the kit trains and samples, measured side by side.

What it measures, each as the median over repeated timed iterations after warm-up:

* denoiser training throughput (images/s) at batch 256 on 4x8x8 latents, prompt encoder
  included: forward, MSE loss, backward, gradient clipping, AdamW step;
* with ``--vs-diffusers``, the same for diffusers' ``UNet2DConditionModel`` configured to the
  same widths, depth, attention placement, context size and time-embedding width (fed by the
  same prompt encoder), with parameter counts and GFLOP per forward pass beside each;
* autoencoder training throughput (batch 128, 1x32x32);
* sampling: seconds for 100 images with DPM-Solver++ 20 steps, DDIM 50 and DDPM 1000,
  all with classifier-free guidance (conditional and unconditional in one batch), decoding included.

Timings do not depend on the weights, so the models are freshly initialised: the benchmark runs
without any checkpoint. ``--tiny`` shrinks everything to seconds (for the test suite).
"""

from __future__ import annotations

import platform
import statistics
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from .autoencoder import AutoencoderConfig, AutoencoderKL, vae_loss
from .denoiser import Denoiser, default_denoiser_config
from .guidance import classifier_free_guidance
from .layers import reference_kernels
from .samplers import sample
from .schedules import NoiseSchedule


@dataclass
class Timing:
    name: str
    value: float  # images/s or seconds
    unit: str
    params: int | None = None
    gflop: float | None = None  # per forward pass of one sample


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_time(step, iters: int, warmup: int, device: torch.device) -> float:
    """Median seconds of ``step()`` over ``iters`` runs after ``warmup`` untimed ones."""
    for _ in range(warmup):
        step()
    _sync(device)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def gflop_per_sample(fn, batch: int) -> float:
    """GFLOP of one forward pass per sample, counted by ``torch.utils.flop_counter`` (the architecture's
    count: textbook kernels, fused attention not counted)."""
    with torch.no_grad(), reference_kernels(), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / batch / 1e9


def diffusers_peer(denoiser: Denoiser) -> torch.nn.Module:
    """diffusers' ``UNet2DConditionModel`` with our U-Net's shape (test-only dependency)."""
    from diffusers import UNet2DConditionModel

    cfg = denoiser.config.unet
    levels = range(len(cfg.channel_mult))
    attn = set(cfg.attention_levels)
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=cfg.in_channels,
        out_channels=cfg.out_channels,
        block_out_channels=tuple(cfg.base_channels * m for m in cfg.channel_mult),
        down_block_types=tuple("CrossAttnDownBlock2D" if lvl in attn else "DownBlock2D" for lvl in levels),
        up_block_types=tuple("CrossAttnUpBlock2D" if lvl in attn else "UpBlock2D" for lvl in reversed(levels)),
        mid_block_type="UNetMidBlock2DCrossAttn",
        layers_per_block=cfg.num_res_blocks,
        transformer_layers_per_block=cfg.transformer_depth,
        cross_attention_dim=cfg.context_dim,
        attention_head_dim=cfg.num_heads,  # diffusers' historical name: this is the number of heads
        norm_num_groups=cfg.norm_groups,
        time_embedding_dim=denoiser.unet.time_embed[-1].out_features,
    )


class PeerDenoiser(torch.nn.Module):
    """Our prompt encoder feeding diffusers' U-Net: the same job as :class:`Denoiser`."""

    def __init__(self, denoiser: Denoiser):
        super().__init__()
        self.prompt_encoder = denoiser.prompt_encoder
        self.unet = diffusers_peer(denoiser)

    def forward(self, x, t, tokens):
        return self.unet(x, t, encoder_hidden_states=self.prompt_encoder(tokens)).sample


def bench_training(model: torch.nn.Module, name: str, batch: int, iters: int, warmup: int, device: torch.device,
                   tokens: torch.Tensor, side: int = 8, channels_last: bool = False) -> Timing:
    """images/s of full training steps of a denoiser-like ``model(x, t, tokens)``."""
    model = model.to(device).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=True)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 4, side, side, generator=g).to(device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    noise = torch.randn_like(x)
    t = torch.randint(0, 1000, (batch,), generator=g).to(device)
    tok = tokens.to(device)

    def step():
        loss = F.mse_loss(model(x, t, tok), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True)
        opt.step()

    seconds = median_time(step, iters, warmup, device)
    n = batch // 4 if batch >= 4 else batch
    flops = gflop_per_sample(lambda: model(x[:n], t[:n], tok[:n]), n)
    return Timing(name, batch / seconds, "img/s", sum(p.numel() for p in model.parameters()), flops)


def bench_vae_training(batch: int, iters: int, warmup: int, device: torch.device) -> Timing:
    vae = AutoencoderKL(AutoencoderConfig()).to(device).train()
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-4, foreach=True)
    x = torch.rand(batch, 1, 32, 32, generator=torch.Generator().manual_seed(0)).to(device) * 2 - 1

    def step():
        recon, posterior = vae(x)
        loss = vae_loss(x, recon, posterior, kl_weight=1e-4)[0]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    seconds = median_time(step, iters, warmup, device)
    return Timing("autoencoder training", batch / seconds, "img/s", sum(p.numel() for p in vae.parameters()))


def bench_sampling(denoiser: Denoiser, vae: AutoencoderKL, sampler: str, steps: int, n: int, device: torch.device,
                   repeats: int) -> Timing:
    denoiser, vae = denoiser.to(device).eval(), vae.to(device).eval()
    schedule = NoiseSchedule.from_dict(denoiser.config.schedule)
    cond = denoiser.encode_prompts([denoiser.tokenizer.class_names[i % 10] for i in range(n)])
    uncond = denoiser.encode_prompts([""])

    def run():
        fn = classifier_free_guidance(denoiser, cond, uncond, 3.0)
        z = sample(fn, (n, 4, 8, 8), schedule, sampler, steps, generator=torch.Generator().manual_seed(0),
                   progress=False, device=device)
        with torch.no_grad():
            vae.decode(z / vae.config.scale_factor)

    # the model is warm by the time the 1000-step sampler runs: no untimed repeat of it
    seconds = median_time(run, repeats, 0 if steps >= 1000 else 1, device)
    return Timing(f"sample {n} images: {sampler} {steps} steps, guidance", seconds, "s")


def run_bench(device: str = "cpu", vs_diffusers: bool = False, tiny: bool = False, iters: int = 10,
              threads: int | None = None, channels_last: bool = False, compile: bool = False) -> list[Timing]:
    from .device import resolve_device

    dev = resolve_device(device)
    if threads:
        torch.set_num_threads(threads)
    batch, warmup = (16, 1) if tiny else (256, 3)
    iters = 2 if tiny else iters
    denoiser = Denoiser(default_denoiser_config())
    tokens = denoiser.encode_prompts([denoiser.tokenizer.class_names[i % 10] for i in range(batch)]).cpu()
    model = torch.compile(denoiser) if compile else denoiser
    rows = [bench_training(model, "denoiser training (ours)", batch, iters, warmup, dev, tokens,
                           channels_last=channels_last)]
    if vs_diffusers:
        peer = PeerDenoiser(Denoiser(default_denoiser_config()))
        peer_model = torch.compile(peer) if compile else peer
        rows.append(bench_training(peer_model, "denoiser training (diffusers UNet2DConditionModel)", batch, iters,
                                   warmup, dev, tokens, channels_last=channels_last))
    rows.append(bench_vae_training(8 if tiny else 128, iters, warmup, dev))
    vae = AutoencoderKL(AutoencoderConfig())
    n = 4 if tiny else 100
    plan = [("dpmsolver++", 2 if tiny else 20), ("ddim", 2 if tiny else 50), ("ddpm", 3 if tiny else 1000)]
    for sampler, steps in plan:
        repeats = 1 if tiny or steps >= 1000 else 3
        rows.append(bench_sampling(denoiser, vae, sampler, steps, n, dev, repeats))
    return rows


def environment(device: str, channels_last: bool, compile: bool) -> str:
    from .device import resolve_device

    dev = resolve_device(device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else (platform.processor() or platform.machine())
    return (f"device: {dev} ({name}), dtype: float32, torch {torch.__version__}, threads: {torch.get_num_threads()}, "
            f"channels_last: {channels_last}, torch.compile: {compile}")


def format_rows(rows: list[Timing]) -> str:
    lines = [f"{'what':<58} {'value':>10} {'unit':<6} {'params':>9} {'GFLOP/fwd':>9}"]
    for r in rows:
        params = f"{r.params / 1e6:.2f}M" if r.params else ""
        gflop = f"{r.gflop:.4f}" if r.gflop else ""
        lines.append(f"{r.name:<58} {r.value:>10.1f} {r.unit:<6} {params:>9} {gflop:>9}")
    train = [r for r in rows if r.name.startswith("denoiser training")]
    if len(train) == 2:
        lines.append(f"speed-up of ours over diffusers' U-Net: {train[0].value / train[1].value:.2f}x")
    return "\n".join(lines)
