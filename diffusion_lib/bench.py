"""``python -m diffusion_lib bench``: how fast the kit trains and samples, measured side by side.

What it measures, each as the median over repeated timed iterations after warm-up:

* denoiser training throughput (images/s) at batch 256 on 4x8x8 latents, prompt encoder
  included: forward, MSE loss, backward, gradient clipping, AdamW step, with the inputs the
  trainer uses (the 31 distinct training prompts, one row per example);
* with ``--vs-diffusers``, the same for diffusers' ``UNet2DConditionModel`` configured to the
  same widths, depth, attention placement, context size and time-embedding width (fed by the
  same prompt encoder the same way, in the same memory order), with parameter counts and
  GFLOP per forward pass beside each;
* with ``--options``, our denoiser's training step with each CPU option on its own and all
  together, against none of them: channels_last, the tiny-map shortcuts (``layers.Conv3x3``
  and explicit attention) and encoding each distinct prompt once;
* autoencoder training throughput (batch 128, 1x32x32);
* sampling: seconds for 100 images with DPM-Solver++ 20 steps, DDIM 50 and DDPM 1000,
  all with classifier-free guidance (conditional and unconditional in one batch), decoding included.

Timings do not depend on the weights, so the models are freshly initialised: the benchmark runs
without any checkpoint. ``--tiny`` shrinks everything to seconds (for the test suite).
"""

from __future__ import annotations

import contextlib
import copy
import platform
import statistics
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from .autoencoder import AutoencoderConfig, AutoencoderKL, vae_loss
from .denoiser import Denoiser, default_denoiser_config
from .device import default_channels_last, synchronize
from .layers import reference_kernels
from .pipeline import Pipeline
from .text_encoder import prompt_table


@dataclass
class Timing:
    name: str
    value: float  # images/s or seconds
    unit: str
    params: int | None = None
    gflop: float | None = None  # per forward pass of one sample


def _sync(device: torch.device) -> None:
    synchronize(device)


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

    def forward(self, x, t, tokens, prompt_index=None):
        context = self.prompt_encoder(tokens)
        if prompt_index is not None:
            context = context[prompt_index]
        return self.unet(x, t, encoder_hidden_states=context).sample


def training_inputs(prompts: torch.Tensor, batch: int, device: torch.device, channels_last: bool):
    """A batch as the trainer builds it: latents, timesteps, the prompt table (31, L) and each example's row."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 4, 8, 8, generator=g)
    t = torch.randint(0, 1000, (batch,), generator=g)
    index = torch.randint(0, len(prompts), (batch,), generator=g)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return x.to(device).contiguous(memory_format=fmt), t.to(device), prompts.to(device), index.to(device)


def training_step(model: torch.nn.Module, inputs, distinct_prompts: bool = True):
    """One full training step of a denoiser-like ``model(x, t, tokens[, prompt_index])`` (a closure)."""
    x, t, prompts, index = inputs
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=True)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(1)).to(x.device)

    def step():
        out = model(x, t, prompts, index) if distinct_prompts else model(x, t, prompts[index])
        loss = F.mse_loss(out, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True)
        opt.step()

    return step


def bench_training(model: torch.nn.Module, name: str, prompts: torch.Tensor, batch: int, iters: int, warmup: int,
                   device: torch.device, channels_last: bool = False) -> Timing:
    """images/s of full training steps of a denoiser-like ``model(x, t, tokens, prompt_index)``."""
    model = model.to(device).train()
    model = model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    inputs = training_inputs(prompts, batch, device, channels_last)
    seconds = median_time(training_step(model, inputs), iters, warmup, device)
    x, t, prompts, index = inputs
    n = batch // 4 if batch >= 4 else batch
    # the architecture's cost of one example: its own prompt through the prompt encoder
    flops = gflop_per_sample(lambda: model(x[:n], t[:n], prompts[index[:n]]), n)
    return Timing(name, batch / seconds, "img/s", sum(p.numel() for p in model.parameters()), flops)


# (name, channels_last, tiny-map shortcuts, distinct prompts)
OPTIONS = (
    ("none of the options", False, False, False),
    ("channels_last only", True, False, False),
    ("tiny-map shortcuts only", False, True, False),
    ("each distinct prompt once only", False, False, True),
    ("all three (the trainer's CPU default)", True, True, True),
)


def bench_options(prompts: torch.Tensor, batch: int, rounds: int, warmup: int, device: torch.device) -> list[Timing]:
    """Our training step with each CPU option alone and all together. The settings take turns, a few
    timed steps each per round, so that a machine that speeds up or slows down affects them alike."""
    denoiser = Denoiser(default_denoiser_config())
    steps = {}
    for name, channels_last, shortcuts, distinct in OPTIONS:
        # a copy per setting, each in its own memory order with its own optimizer, so no step converts anything
        model = copy.deepcopy(denoiser).to(device).train()
        model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        step = training_step(model, training_inputs(prompts, batch, device, channels_last), distinct)

        def run(step=step, shortcuts=shortcuts):
            with contextlib.nullcontext() if shortcuts else reference_kernels():
                step()

        steps[name] = run
    times: dict[str, list[float]] = {name: [] for name in steps}
    for run in steps.values():
        for _ in range(warmup):
            run()
    for _ in range(rounds):
        for name, run in steps.items():
            times[name].append(median_time(run, 3, 1, device))
    base = statistics.median(times[OPTIONS[0][0]])
    rows = []
    for name, seconds in times.items():
        value = statistics.median(seconds)
        rows.append(Timing(f"  options: {name} (x{base / value:.2f})", batch / value, "img/s"))
    return rows


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
    """Seconds for ``n`` images through :class:`Pipeline` (guidance 3, prompts of all classes, decoding included)."""
    pipe = Pipeline(vae, denoiser, device)
    classes = denoiser.tokenizer.class_names
    prompts = [classes[i % len(classes)] for i in range(min(n, len(classes)))]

    def run():
        pipe(prompts, num_images=-(-n // len(prompts)), num_inference_steps=steps, guidance_scale=3.0,
             sampler=sampler, seed=0, progress=False)

    # the model is warm by the time the 1000-step sampler runs: no untimed repeat of it
    seconds = median_time(run, repeats, 0 if steps >= 1000 else 1, device)
    return Timing(f"sample {n} images: {sampler} {steps} steps, guidance", seconds, "s")


def run_bench(device: str = "cpu", vs_diffusers: bool = False, tiny: bool = False, iters: int = 10,
              threads: int | None = None, channels_last: bool | None = None, compile: bool = False,
              options: bool = False) -> list[Timing]:
    """Every measurement of the table. ``channels_last=None``: as the trainer, on the CPU only."""
    from .device import resolve_device

    dev = resolve_device(device)
    if threads:
        torch.set_num_threads(threads)
    channels_last = default_channels_last(dev) if channels_last is None else channels_last
    batch, warmup = (16, 1) if tiny else (256, 3)
    iters = 2 if tiny else iters
    denoiser = Denoiser(default_denoiser_config())
    prompts = prompt_table(denoiser.tokenizer, denoiser.tokenizer.class_names)  # (31, L)
    model = torch.compile(denoiser) if compile else denoiser
    rows = [bench_training(model, "denoiser training (ours)", prompts, batch, iters, warmup, dev, channels_last)]
    if vs_diffusers:
        peer = PeerDenoiser(Denoiser(default_denoiser_config()))
        peer_model = torch.compile(peer) if compile else peer
        rows.append(bench_training(peer_model, "denoiser training (diffusers UNet2DConditionModel)", prompts, batch,
                                   iters, warmup, dev, channels_last))
    if options:
        rows.extend(bench_options(prompts, batch, 1 if tiny else max(iters // 2, 4), warmup, dev))
    rows.append(bench_vae_training(8 if tiny else 128, iters, warmup, dev))
    denoiser.to(memory_format=torch.contiguous_format)
    vae = AutoencoderKL(AutoencoderConfig())
    n = 4 if tiny else 100
    plan = [("dpmsolver++", 2 if tiny else 20), ("ddim", 2 if tiny else 50), ("ddpm", 3 if tiny else 1000)]
    for sampler, steps in plan:
        repeats = 1 if tiny or steps >= 1000 else 3
        rows.append(bench_sampling(denoiser, vae, sampler, steps, n, dev, repeats))
    return rows


def environment(device: str, channels_last: bool | None, compile: bool) -> str:
    from .device import resolve_device

    dev = resolve_device(device)
    channels_last = default_channels_last(dev) if channels_last is None else channels_last
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else (platform.processor() or platform.machine())
    return (f"device: {dev} ({name}), dtype: float32, torch {torch.__version__}, threads: {torch.get_num_threads()}, "
            f"channels_last: {channels_last}, tiny-map shortcuts: {dev.type == 'cpu'}, "
            f"each distinct prompt encoded once: True, torch.compile: {compile}")


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
