"""``python -m diffusion_lib bench``: how fast the kit trains and samples, measured side by side.

What it measures, each as the median over repeated timed iterations after warm-up:

* denoiser training throughput (images/s) at batch 256 on 4x8x8 latents, prompt encoder
  included: forward, MSE loss, backward, gradient clipping, AdamW step, with the inputs the
  trainer uses (the 31 distinct training prompts, one row per example);
* with ``--vs-diffusers``, the same for diffusers' ``UNet2DConditionModel`` configured to the
  same widths, depth, attention placement, context size and time-embedding width (fed by the
  same prompt encoder the same way, in the same memory order), with parameter counts and
  GFLOP per forward pass beside each. The two are timed in one process, interleaved: each
  round times a block of steps of one, then of the other (the order alternating between
  rounds), so that a machine that speeds up or slows down affects both alike; the speed-up is
  the median over rounds of the per-round ratio, printed with its range;
* the share of the CPU's peak floating-point rate that our training step reaches: about
  3x the forward GFLOP per image (forward and backward) against cores x clock x FLOP per cycle
  (32 with AVX2 and FMA, 64 with AVX-512: two fused multiply-adds per cycle);
* with ``--options``, our denoiser's training step with each CPU option on its own and all
  together, against none of them: channels_last, the tiny-map shortcuts (``layers.Conv3x3``
  and explicit attention), the transformers' large linear layers as oneDNN convolutions
  (``layers.linear``, x86-64), the fused C kernels (``fused.py``: attention, GroupNorm + SiLU,
  GEGLU) and encoding each distinct prompt once (and projecting it once in cross-attention);
* autoencoder training throughput (batch 128, 1x32x32);
* sampling: seconds for 100 images with DPM-Solver++ 20 steps, DDIM 50 and DDPM 1000,
  all with classifier-free guidance (conditional and unconditional in one batch), decoding included.

Timings do not depend on the weights, so the models are freshly initialised: the benchmark runs
without any checkpoint. ``--tiny`` shrinks everything to seconds (for the test suite).
"""

from __future__ import annotations

import copy
import platform
import statistics
import time
from pathlib import Path
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from . import native
from .allocator import keep_freed_memory
from .autoencoder import AutoencoderConfig, AutoencoderKL, vae_loss
from .denoiser import Denoiser, default_denoiser_config
from .device import default_channels_last, fused_optimizer, synchronize
from .layers import ONEDNN_X86, reference_kernels
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
    # the trainer's optimizer: fused AdamW on the CPU and CUDA, foreach ops on MPS
    fused = fused_optimizer(x.device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=fused, foreach=None if fused else True)
    # stored like x, as the trainer stores it
    noise = torch.empty_like(x).copy_(torch.randn(x.shape, generator=torch.Generator().manual_seed(1)))

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


@dataclass
class Comparison:
    """Ours against a peer, timed interleaved: per-round seconds per step and the speed-up (peer / ours)."""

    ours_s: list[float]
    peer_s: list[float]

    @property
    def ratios(self) -> list[float]:
        return [p / o for o, p in zip(self.ours_s, self.peer_s)]

    def summary(self) -> str:
        r = self.ratios
        return (f"speed-up of ours over diffusers' U-Net: {statistics.median(r):.2f}x median, range "
                f"{min(r):.2f}-{max(r):.2f}x over {len(r)} interleaved rounds")


def compare_training(ours: torch.nn.Module, peer: torch.nn.Module, prompts: torch.Tensor, batch: int, rounds: int,
                     block: int, warmup: int, device: torch.device, channels_last: bool) -> tuple[Timing, Timing, Comparison]:
    """Training steps of ``ours`` and ``peer`` timed in alternating blocks of ``block`` steps, ``rounds`` times
    (the first of the pair alternating); each side's images/s is the median over rounds."""
    steps, flops = [], []
    for model in (ours, peer):
        model.to(device).train().to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        inputs = training_inputs(prompts, batch, device, channels_last)
        steps.append(training_step(model, inputs))
        x, t, table, index = inputs
        n = batch // 4 if batch >= 4 else batch
        flops.append(gflop_per_sample(lambda model=model: model(x[:n], t[:n], table[index[:n]]), n))
    for step in steps:
        for _ in range(warmup):
            step()
    seconds: list[list[float]] = [[], []]
    for r in range(rounds):
        for side in ((0, 1) if r % 2 == 0 else (1, 0)):
            seconds[side].append(median_time(steps[side], block, 0, device))
    timings = [Timing(name, batch / statistics.median(s), "img/s", sum(p.numel() for p in m.parameters()), f)
               for name, s, m, f in zip(("denoiser training (ours)", "denoiser training (diffusers UNet2DConditionModel)"),
                                        seconds, (ours, peer), flops)]
    return timings[0], timings[1], Comparison(*seconds)


def cpu_peak_gflops() -> tuple[float, str] | None:
    """The CPU's peak float32 rate this process may use (GFLOP/s) and how it was estimated; None if unknown.

    cores (torch's threads) x the highest clock in /proc/cpuinfo or cpufreq x FLOP per cycle: 2 FMA units x
    8 float32 lanes x 2 with AVX2 and FMA, 16 lanes with AVX-512. Some AVX-512 cores have one 512-bit FMA
    unit, and the clock drops under wide vector load: both make it too high. Where cpufreq is missing (a
    virtual machine), /proc/cpuinfo gives the nominal clock, and cores that boost above it make it too low:
    on the 2-core machine of the README, convolutions of the training step ran at up to ~1.2x this figure.
    """
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), [])
    if "avx512f" in flags:
        per_cycle, kind = 64, "AVX-512"
    elif "avx2" in flags and "fma" in flags:
        per_cycle, kind = 32, "AVX2+FMA"
    else:
        return None
    try:
        ghz = int(Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").read_text()) / 1e6
    except (OSError, ValueError):
        mhz = [float(line.split(":", 1)[1]) for line in info.splitlines() if line.startswith("cpu MHz")]
        if not mhz:
            return None
        ghz = max(mhz) / 1e3
    cores = torch.get_num_threads()
    return cores * ghz * per_cycle, f"{cores} cores x {ghz:.2f} GHz x {per_cycle} FLOP/cycle ({kind})"


def peak_share(timing: Timing) -> str:
    """What share of the CPU's peak a training throughput is: ~3 x forward GFLOP per image (forward + backward)."""
    peak = cpu_peak_gflops()
    if peak is None or not timing.gflop:
        return ""
    gflops = timing.value * 3 * timing.gflop
    return (f"our training step: {gflops:.1f} GFLOP/s (3 x {timing.gflop:.4f} GFLOP per image), "
            f"{100 * gflops / peak[0]:.1f}% of the CPU's estimated peak {peak[0]:.0f} GFLOP/s ({peak[1]})")


# (name, channels_last, tiny-map shortcuts, oneDNN linear layers, fused C kernels, distinct prompts)
OPTIONS = (
    ("none of the options", False, False, False, False, False),
    ("channels_last only", True, False, False, False, False),
    ("tiny-map shortcuts only", False, True, False, False, False),
    ("oneDNN linear layers only", False, False, True, False, False),
    ("fused C kernels only", False, False, False, True, False),
    ("each distinct prompt once only", False, False, False, False, True),
    ("all five (the trainer's CPU default)", True, True, True, True, True),
)


def bench_options(prompts: torch.Tensor, batch: int, rounds: int, warmup: int, device: torch.device) -> list[Timing]:
    """Our training step with each CPU option alone and all together. The settings take turns, a few
    timed steps each per round, so that a machine that speeds up or slows down affects them alike."""
    denoiser = Denoiser(default_denoiser_config())
    steps = {}
    for name, channels_last, tiny_maps, onednn_linear, fused, distinct in OPTIONS:
        # a copy per setting, each in its own memory order with its own optimizer, so no step converts anything
        model = copy.deepcopy(denoiser).to(device).train()
        model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        step = training_step(model, training_inputs(prompts, batch, device, channels_last), distinct)

        def run(step=step, tiny_maps=tiny_maps, onednn_linear=onednn_linear, fused=fused):
            with reference_kernels(tiny_maps=not tiny_maps, linear=not onednn_linear, fused=not fused):
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
              options: bool = False, rounds: int = 11) -> tuple[list[Timing], Comparison | None]:
    """Every measurement of the table, and the interleaved comparison with diffusers (with ``vs_diffusers``).
    ``channels_last=None``: as the trainer, on the CPU only."""
    from .device import resolve_device

    dev = resolve_device(device)
    keep_freed_memory()  # as the trainer does
    if threads:
        torch.set_num_threads(threads)
    channels_last = default_channels_last(dev) if channels_last is None else channels_last
    batch, warmup = (16, 1) if tiny else (256, 3)
    iters = 2 if tiny else iters
    denoiser = Denoiser(default_denoiser_config())
    prompts = prompt_table(denoiser.tokenizer, denoiser.tokenizer.class_names)  # (31, L)
    model = torch.compile(denoiser) if compile else denoiser
    comparison = None
    if vs_diffusers:
        peer = PeerDenoiser(Denoiser(default_denoiser_config()))
        peer_model = torch.compile(peer) if compile else peer
        ours, theirs, comparison = compare_training(model, peer_model, prompts, batch, 2 if tiny else max(rounds, 1),
                                                    1 if tiny else 3, warmup, dev, channels_last)
        rows = [ours, theirs]
    else:
        rows = [bench_training(model, "denoiser training (ours)", prompts, batch, iters, warmup, dev, channels_last)]
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
    return rows, comparison


def environment(device: str, channels_last: bool | None, compile: bool) -> str:
    from .device import resolve_device

    dev = resolve_device(device)
    channels_last = default_channels_last(dev) if channels_last is None else channels_last
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else (platform.processor() or platform.machine())
    return (f"device: {dev} ({name}), dtype: float32, torch {torch.__version__}, threads: {torch.get_num_threads()}, "
            f"channels_last: {channels_last}, tiny-map shortcuts: {dev.type == 'cpu'}, "
            f"oneDNN linear layers: {dev.type == 'cpu' and ONEDNN_X86}, fused C kernels: {fused_kernels(dev)}, "
            f"each distinct prompt encoded once: True, torch.compile: {compile}")


def fused_kernels(dev: torch.device) -> str:
    """Whether the fused C kernels (``fused.py``) run on ``dev``, or why not."""
    if dev.type != "cpu":
        return "False (CPU only)"
    return "True" if native.library() is not None else f"False ({native.unavailable_reason()})"


def format_rows(rows: list[Timing], comparison: Comparison | None = None, device: str = "cpu") -> str:
    lines = [f"{'what':<58} {'value':>10} {'unit':<6} {'params':>9} {'GFLOP/fwd':>9}"]
    for r in rows:
        params = f"{r.params / 1e6:.2f}M" if r.params else ""
        gflop = f"{r.gflop:.4f}" if r.gflop else ""
        lines.append(f"{r.name:<58} {r.value:>10.1f} {r.unit:<6} {params:>9} {gflop:>9}")
    if comparison is not None:
        lines.append(comparison.summary())
    share = peak_share(rows[0]) if str(device).startswith("cpu") else ""
    if share:
        lines.append(share)
    return "\n".join(lines)
