r"""Training the denoiser (prompt encoder + U-Net) on the latents of a frozen autoencoder.

Latent diffusion trains in two stages. The autoencoder is trained first and then
frozen; every training image is encoded ONCE into its scaled latent

    z_0 = s * mu(x)        (s = the autoencoder's measured scale_factor, mu = posterior mode)

and the denoiser learns to remove noise from those latents. One training step
(Ho et al. 2020, Algorithm 1, with a text condition c):

    1. draw t ~ U{0, ..., T-1} and \epsilon ~ N(0, I) for every example of the batch
    2. take the batch's latents z_0 and their class prompts c
    3. condition dropout: c <- "" with probability p_drop, so that the SAME network
       also learns the unconditional model needed by classifier-free guidance
       (Ho & Salimans 2022)
    4. the loss (:func:`denoising_loss`): noise z_t = sqrt(\bar\alpha_t) z_0 + sqrt(1 - \bar\alpha_t) \epsilon
       (q(z_t | z_0)), then L = || target - f_\theta(z_t, t, c) ||^2, target = \epsilon (epsilon
       prediction) or v = sqrt(\bar\alpha_t) \epsilon - sqrt(1 - \bar\alpha_t) z_0
    5. AdamW step on L, after clipping the gradient norm
    6. exponential moving average of the weights:
           \theta_ema <- d \theta_ema + (1 - d) \theta

The prompts are the class names put into the templates "a photo of a {}", "a {}"
and "{}", chosen at random per example. All are tokenised once before training;
a step only indexes a table, so the data never leave the device.

Learning rate: linear warm-up over ``warmup_steps`` optimizer steps, then constant
(Stable Diffusion's recipe; the EMA does the averaging) or a cosine decay to 0 at
the last epoch. A cosine schedule's horizon is ``epochs``, so resuming a cosine
run with a larger ``--epochs`` changes the remaining learning rates; a constant
schedule resumes exactly with any ``--epochs``.

Files in ``out_dir`` (written through :mod:`diffusion_lib.checkpoint`: atomic, listed in
``SHA256SUMS``); the autoencoder is copied when a run starts, the rest after every epoch:

=============================================  ==========================================================
``denoiser.safetensors/.json``                 EMA weights + config: what ``Pipeline.from_pretrained`` loads
``vae.safetensors/.json``                      a copy of the frozen autoencoder, so the folder is complete
``denoiser_epochEEE.safetensors/.json``        fp16 EMA snapshots at ``snapshot_epochs`` (the "ladder")
``train_state.safetensors/.json``              raw and EMA weights, AdamW moments, step, epoch and RNG
                                               states: everything ``--resume`` needs
``train_log.jsonl``                            one JSON line per epoch: epoch, step, loss, lr, images/s, ...
=============================================  ==========================================================

Resuming (``resume=True`` / ``--resume``) continues after the last complete epoch.
All training randomness (the permutation, t, \epsilon, templates, condition dropout)
comes from one dedicated ``torch.Generator``; its state is saved with the epoch, as is
torch's global RNG (used by dropout layers), so on the CPU with a fixed seed
"2 epochs" and "1 epoch, then resume to 2" give bitwise identical weights. The
optimizer's settings (learning rate, ...) are taken from the current config, so a
resumed run may change them; the model must stay the same.

Stopping: Ctrl-C (``KeyboardInterrupt``) leaves the last complete epoch's files
untouched (each file is replaced atomically, and only at the end of an epoch),
prints the command that resumes, and re-raises; the command line exits with code
130. A non-finite loss or gradient stops training with a :class:`TrainingError`
naming the epoch and step; nothing of the failing epoch is written.

Several processes: under ``torchrun --nproc_per_node=K -m diffusion_lib train ...``
(``RANK`` / ``WORLD_SIZE`` set) each process joins a process group (gloo on the
CPU, nccl on CUDA), the model is wrapped in ``DistributedDataParallel``, and each
rank trains on its own disjoint slice of every global batch. ``batch_size`` is the
GLOBAL batch (summed over ranks), and every rank draws the same random numbers
for the whole batch and keeps its slice, so K processes follow the same
trajectory as one process, up to floating-point rounding (and dropout-layer masks,
which each rank draws itself). Only rank 0 writes files and shows progress bars.

Beside this file: ``train_config.py`` (the run's settings and the model they describe),
``train_state.py`` (the files of a run and how ``--resume`` reads them back), ``distributed.py``
(the process group and each rank's slice), ``train_cli.py`` (the command line).
"""

from __future__ import annotations

import copy
import contextlib
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .allocator import keep_freed_memory
from .autoencoder import load_autoencoder
from .atomic import recover, sha256_file
from .data import load_split, to_model_space
from .denoiser import Denoiser, DenoiserConfig
from .device import (accumulator_dtype, autocast_dtype, default_channels_last, fused_optimizer,
                     resolve_device, synchronize)
from .distributed import Distributed, DistributedError, shard
from .lr_schedule import warmup_cosine
from .schedules import NoiseSchedule
from .train_config import CLASS_NAMES, TrainConfig, build_denoiser_config
from .train_state import (VAE, TrainingError, config_differences, copy_component, read_saved_run,
                          refuse_to_replace, resume_into, run_autoencoder, save_epoch)
from .text_encoder import PROMPT_TEMPLATES, Tokenizer, prompt_table

# ------------------------------------------------------------------------------ small pieces
class EMA:
    r"""Exponential moving average of a model's weights (Polyak averaging).

        \theta_ema <- d_k \theta_ema + (1 - d_k) \theta,    d_k = min(d, (1 + k) / (10 + k))

    The warm-up of d_k (k = optimizer steps so far) keeps the average from being
    dominated by the random initialisation early on: after 200 steps d_k ~ 0.95,
    an average over the last ~20 steps, while a fixed d = 0.999 would still carry
    ~80% of the initial weights.

    :param model: the module whose weights are averaged; ``shadow`` is a frozen copy
    """

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.shadow = copy.deepcopy(model).eval().requires_grad_(False)

    def decay_at(self, step: int) -> float:
        # d_k = min(d, (1 + k) / (10 + k))
        return min(self.decay, (1.0 + step) / (10.0 + step))

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Move the average towards ``model``'s weights (k = ``step``); buffers are copied."""
        d = self.decay_at(step)
        # theta_ema = d theta_ema + (1 - d) theta  ==  lerp(theta_ema, theta, 1 - d), all tensors at once
        torch._foreach_lerp_(list(self.shadow.parameters()), [p.detach() for p in model.parameters()], 1.0 - d)
        for mine, theirs in zip(self.shadow.buffers(), model.buffers()):
            mine.copy_(theirs)  # buffers are not learned: nothing to average


def learning_rate(config: TrainConfig, step: int, total_steps: int) -> float:
    """Learning rate for optimizer step ``step`` (0-based) of ``total_steps``: warm-up, then constant or cosine."""
    if config.lr_schedule == "cosine":
        # lr_k = lr * (1 + cos(pi * progress)) / 2 after the warm-up, to 0 at the last step
        return warmup_cosine(step, total_steps, config.lr, config.warmup_steps)
    if config.warmup_steps > 0 and step < config.warmup_steps:
        # linear warm-up: lr_k = lr * (k + 1) / warmup_steps
        return config.lr * (step + 1) / config.warmup_steps
    return config.lr


def steps_per_epoch(num_images: int, batch_size: int, world_size: int) -> int:
    """Optimizer steps per epoch: full batches, plus the remainder if every rank gets an image of it."""
    full, rest = divmod(num_images, batch_size)
    return full + (1 if rest >= world_size else 0)


def _progress(iterable, enabled: bool, **kwargs):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, **kwargs)


# ----------------------------------------------------------------------------------- data
@torch.no_grad()
def encode_latents(vae: nn.Module, images: torch.Tensor, device: torch.device, batch_size: int = 500,
                   progress: bool = True) -> torch.Tensor:
    """Encode uint8 images (N, 28, 28) once into scaled latents z_0 (N, C, h, w) on ``device``.

    z_0 = s * mu(x): the posterior mode, not a sample, so the cache is deterministic.
    """
    chunks = []
    starts = range(0, images.shape[0], batch_size)
    for start in _progress(starts, progress, desc="encoding latents", unit="batch", leave=False):
        x = to_model_space(images[start : start + batch_size]).to(device)
        chunks.append(vae.encode_latents(x).float())  # z_0 = s * mu(x)
    return torch.cat(chunks)


# -------------------------------------------------------------------------------- training
def train(config: TrainConfig) -> list[dict[str, Any]]:
    """Train (or resume training) the denoiser; see the module docstring for the recipe and files.

    :returns: one metrics dict per complete epoch of the run (earlier epochs of a
        resumed run included): ``epoch, step, loss, lr, images, images_per_s, wall_s, world_size``
    :raises TrainingError: bad settings, nothing to resume, a model that does not
        match the saved run, or a non-finite loss (the last good checkpoint is kept)
    :raises KeyboardInterrupt: re-raised after saying how to resume
    """
    config.validate()
    threads = torch.get_num_threads()
    if config.num_threads is not None:
        torch.set_num_threads(config.num_threads)
    try:
        dist = Distributed.from_env(config.device)
    except DistributedError as err:
        raise TrainingError(str(err)) from err
    try:
        return Trainer(config, dist).fit()
    finally:
        dist.close()
        torch.set_num_threads(threads)


def denoising_loss(model: nn.Module, schedule: NoiseSchedule, z0: torch.Tensor, t: torch.Tensor,
                   noise: torch.Tensor, prompts: torch.Tensor, rows: torch.Tensor,
                   prediction_type: str = "epsilon") -> torch.Tensor:
    """The latent-diffusion training objective, per example: || target - f_theta(z_t, t, c) ||^2.

    :param model: the denoiser ``f_theta(z_t, t, prompts, rows)``
    :param z0: clean latents (b, C, h, w); :param t: their timesteps (b,); :param noise: eps ~ N(0, I) (b, C, h, w)
    :param prompts: the prompt table (P, L) of token ids; :param rows: each example's prompt, a row of it (b,)
    :returns: (b,) the squared error of each example, averaged over the latent's elements
    """
    # 1. z_t = sqrt(abar_t) z_0 + sqrt(1 - abar_t) eps
    z_t = schedule.add_noise(z0, noise, t)
    # 2. target = eps, or v = sqrt(abar_t) eps - sqrt(1 - abar_t) z_0
    target = schedule.training_target(z0, noise, t, prediction_type)
    reduced = autocast_dtype(z0.device)  # bfloat16 on CUDA, None (float32) on the CPU and MPS
    with torch.autocast(z0.device.type, dtype=reduced) if reduced else contextlib.nullcontext():
        # 3. f_theta(z_t, t, c); the prompt encoder runs once per distinct prompt (the table's rows)
        prediction = model(z_t, t, prompts, rows)
    # 4. || target - f_theta(z_t, t, c) ||^2, averaged over the latent's elements
    return (prediction.float() - target).pow(2).flatten(1).mean(dim=1)


class Trainer:
    """One training run: the cached latents, the model, its EMA, the optimizer and the RNG.

    ``Trainer(config).fit()`` is what :func:`train` does; :meth:`train_step` is
    the heart of it (the numbered steps of the module docstring).
    """

    def __init__(self, config: TrainConfig, dist: Distributed | None = None):
        keep_freed_memory()  # no page faults on each step's fresh tensors (allocator.py)
        self.config = config
        self.dist = dist or Distributed()
        self.out_dir, self.vae_dir = Path(config.out_dir), Path(config.vae_dir)
        self.show_progress = config.progress and self.dist.is_main  # progress bars and messages: rank 0 only
        self._open_out_dir()
        saved = read_saved_run(self.out_dir) if config.resume else None
        self.model_config = self._model_config(saved)
        self._cache_latents(saved)
        self._build_model()
        self.epoch, self.step = 0, 0
        self.saved_epoch = 0  # the last epoch whose files are all written
        self.history: list[dict[str, Any]] = []
        if saved is not None:
            resume_into(self, *saved)
        self._place()
        self.steps_per_epoch = steps_per_epoch(len(self.latents), config.batch_size, self.dist.world_size)
        if self.steps_per_epoch == 0:
            raise TrainingError(
                f"{len(self.latents)} images cannot be shared by {self.dist.world_size} processes; use more images"
            )
        self.total_steps = self.steps_per_epoch * config.epochs
        # non-finite check: every step on the CPU (cheap); every 20 on a GPU, which then runs ahead of Python
        self.check_every = 1 if self.device.type == "cpu" else 20

    # ----------------------------------------------------------------------- setting up
    def _open_out_dir(self) -> None:
        """Check the run's folder (finishing or undoing an interrupted save) and pick the device."""
        if self.out_dir.exists() and not self.out_dir.is_dir():
            raise TrainingError(f"--out {self.out_dir} is a file, not a folder; choose a folder for the run")
        if self.out_dir.is_dir() and self.dist.is_main:
            recover(self.out_dir)  # a save that a crash interrupted is finished or undone first
        try:
            self.device = resolve_device(self.config.device, self.dist.local_rank)
        except ValueError as err:
            raise TrainingError(str(err)) from err
        if self.device.type == "cuda":
            # TF32 for the float32 matmuls that bf16 autocast leaves
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True

    def _cache_latents(self, saved: tuple[dict, dict] | None) -> None:
        """Encode every training image once with the frozen autoencoder (the run's own copy when resuming)."""
        config = self.config
        vae_source = self.vae_dir if saved is None else run_autoencoder(
            self.out_dir, self.vae_dir, saved[1]["vae_sha256"], announce=self.dist.is_main)
        vae = load_autoencoder(vae_source, device=self.device)
        self.vae_sha = sha256_file(vae_source / f"{VAE}.safetensors")
        images = load_split("train", dataset=config.dataset)
        if config.limit is not None:
            images = images.subset(config.limit)
        self.class_names = images.class_names
        self.latents = encode_latents(vae, images.images, self.device, progress=self.show_progress)  # (N, C, h, w)
        self.labels = images.labels.to(self.device)  # (N,)

    def _build_model(self) -> None:
        """The denoiser, its EMA, AdamW, the run's random generator, the schedule and the prompt table."""
        config = self.config
        torch.manual_seed(config.seed)  # the weights' initialisation
        self.model = Denoiser(self.model_config).to(self.device).train()
        self.ema = EMA(self.model, config.ema_decay)
        self.optimizer = make_optimizer(self.model, config, self.device)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        # one generator for every random draw of training, so a resumed run draws the same numbers
        self.generator = torch.Generator(device=self.device).manual_seed(config.seed)
        self.schedule = NoiseSchedule.from_dict(self.model_config.schedule)
        self.prompts = prompt_table(self.model.tokenizer, self.class_names).to(self.device)  # (C * K + 1, L)

    def _place(self) -> None:
        """Memory order, compilation and the multi-process wrapper.

        ``ddp_model`` is what the step calls: the model under DistributedDataParallel, or the model
        itself in a single process (nanoGPT's ``model`` / ``raw_model`` pair, named the other way round)."""
        config = self.config
        self.memory_format = torch.contiguous_format
        if default_channels_last(self.device) if config.channels_last is None else config.channels_last:
            # the same numbers in another memory order: (B, C, H, W) stored as (B, H, W, C)
            self.memory_format = torch.channels_last
            self.model.to(memory_format=torch.channels_last)
            self.latents = self.latents.contiguous(memory_format=torch.channels_last)
        # a resumed run's AdamW moments come back in the file's (contiguous) order: give each its parameter's
        # memory order, as a fresh run creates them. A fused AdamW walks a parameter and its moments in memory
        # order, so mismatched orders pair the wrong elements (foreach ops follow the strides and do not care)
        for param, state in self.optimizer.state.items():
            for name, value in state.items():
                if torch.is_tensor(value) and value.shape == param.shape and value.stride() != param.stride():
                    state[name] = torch.empty_like(param).copy_(value)
        self.ddp_model: nn.Module = self.model
        if config.compile:
            self.model.compile()
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp_model = DistributedDataParallel(self.model, device_ids=ids)

    def _model_config(self, saved: tuple[dict, dict] | None) -> DenoiserConfig:
        """The saved run's model (checked against any model options), or a new one."""
        config = self.config
        if saved is None:
            refuse_to_replace(self.out_dir, config.overwrite)
            model_config = build_denoiser_config(config)
        elif config.has_model_options():
            model_config = build_denoiser_config(config)
            # the saved config through from_dict: a run saved with earlier key names compares by today's
            saved_model = DenoiserConfig.from_dict(saved[1]["denoiser_config"]).to_dict()
            diff = config_differences(saved_model, model_config.to_dict())
            if diff:
                raise TrainingError(
                    f"cannot resume the run in {self.out_dir} with a different model. The saved model differs in: "
                    + "; ".join(diff)
                    + ". Resume without model options (the saved config is used), give the same ones, "
                    "or start a fresh run in another --out folder."
                )
        else:
            model_config = DenoiserConfig.from_dict(saved[1]["denoiser_config"])
        classes = tuple(Tokenizer.from_dict(model_config.tokenizer).class_names)
        if classes != tuple(CLASS_NAMES[config.dataset]):
            raise TrainingError(
                f"the model's tokenizer knows the classes {list(classes)} but {config.dataset} has "
                f"{list(CLASS_NAMES[config.dataset])}; use a denoiser config made for {config.dataset}."
            )
        return model_config

    # ------------------------------------------------------------------------- training
    def train_step(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step on the global batch ``indices`` (B,); this rank trains on its slice.

        :returns: the loss of each example of this rank's slice (b,), and the gradient norm
            before clipping (a scalar); both detached, left on the device
        """
        g, device, n = self.generator, self.device, indices.numel()
        # 1. t ~ U{0, ..., T-1}, eps ~ N(0, I), a prompt template and the dropout coin: every rank draws them for
        #    the whole global batch, then keeps its slice (so the run does not depend on the number of ranks)
        t = torch.randint(0, self.schedule.num_train_timesteps, (n,), generator=g, device=device)
        noise = torch.randn((n, *self.latents.shape[1:]), generator=g, device=device)
        # stored like the latents (the same values): a loss gradient in another memory order than the model's
        # would reach every convolution of the decoder in that order, and each would reorder it
        noise = noise.contiguous(memory_format=self.memory_format)
        template = torch.randint(0, len(PROMPT_TEMPLATES), (n,), generator=g, device=device)
        drop = torch.rand(n, generator=g, device=device) < self.config.cond_drop_prob
        mine = shard(n, self.dist.rank, self.dist.world_size)
        indices, t, noise, template, drop = indices[mine], t[mine], noise[mine], template[mine], drop[mine]

        # 2. the batch: cached latents z_0 and their prompts, e.g. "a photo of a bag", as rows of the table
        z0 = self.latents[indices]
        prompt = self.labels[indices] * len(PROMPT_TEMPLATES) + template
        # 3. classifier-free guidance training: c <- "" (the table's last row) with probability p_drop
        prompt = torch.where(drop, len(self.prompts) - 1, prompt)
        # 4. the denoising loss of each example
        per_example = denoising_loss(self.ddp_model, self.schedule, z0, t, noise, self.prompts, prompt,
                                     self.model_config.prediction_type)
        # L = mean over the GLOBAL batch; DDP averages the ranks' gradients, hence * world_size
        loss = per_example.sum() * (self.dist.world_size / n)

        # 5. AdamW step on the clipped gradient, with this step's learning rate
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(self.config, self.step, self.total_steps)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clip = self.config.grad_clip if self.config.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, clip, foreach=True)
        self.optimizer.step()
        # 6. theta_ema <- d theta_ema + (1 - d) theta
        self.ema.update(self.model, self.step)
        self.step += 1
        return per_example.detach(), grad_norm.detach()

    def train_epoch(self) -> dict[str, Any]:
        """One pass over the (shuffled) latents; returns the epoch's metrics."""
        self.epoch += 1
        device, batch = self.device, self.config.batch_size
        start = time.perf_counter()
        loss_sum = torch.zeros((), device=device, dtype=accumulator_dtype(device))
        count = torch.zeros((), device=device, dtype=accumulator_dtype(device))
        bad = torch.zeros((), device=device)
        checked = self.step
        perm = torch.randperm(len(self.latents), generator=self.generator, device=device)
        bar = _progress(range(self.steps_per_epoch), self.show_progress, desc=f"epoch {self.epoch}/{self.config.epochs}",
                        unit="step", dynamic_ncols=True)
        for i in bar:
            losses, grad_norm = self.train_step(perm[i * batch : (i + 1) * batch])
            loss_sum += losses.sum()
            count += losses.numel()
            bad += (~torch.isfinite(losses.sum())).float() + (~torch.isfinite(grad_norm)).float()
            if self.step % self.check_every == 0 or i == self.steps_per_epoch - 1:
                self._stop_if_not_finite(bad, checked)
                checked = self.step
                if self.show_progress:
                    bar.set_postfix(loss=f"{(loss_sum / count).item():.4f}", lr=f"{self.lr:.2e}")
        if self.show_progress:
            bar.close()
        synchronize(device)
        wall = time.perf_counter() - start
        # each rank saw a slice of every batch: the totals are the sums over ranks
        loss_sum, count = self.dist.all_reduce_sum(torch.stack([loss_sum, count])).tolist()
        self._stop_if_weights_not_finite()
        return {
            "epoch": self.epoch,
            "step": self.step,
            "loss": loss_sum / count,
            "lr": self.lr,
            "images": int(count),
            "images_per_s": count / wall,
            "wall_s": wall,
            "world_size": self.dist.world_size,
        }

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def fit(self) -> list[dict[str, Any]]:
        """Train until ``config.epochs`` epochs are complete, saving after each one."""
        if self.epoch >= self.config.epochs:
            if self.dist.is_main:
                print(f"{self.out_dir} is already trained for {self.epoch} epochs (asked for "
                      f"{self.config.epochs}); nothing to do.")
            return self.history
        if self.dist.is_main and not self.config.resume:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            if self.vae_dir.resolve() != self.out_dir.resolve():
                copy_component(self.vae_dir, self.out_dir, VAE)
        try:
            while self.epoch < self.config.epochs:
                metrics = self.train_epoch()
                self.history.append(metrics)
                if self.dist.is_main:
                    save_epoch(self)
                    if self.show_progress:
                        print(f"epoch {self.epoch}: loss {metrics['loss']:.4f}, "
                              f"{metrics['images_per_s']:.0f} images/s, {metrics['wall_s']:.1f} s", flush=True)
        except KeyboardInterrupt:
            if self.dist.is_main:
                self._say_how_to_resume()
            raise
        return self.history

    # ------------------------------------------------------------------------ safeguards
    def _stop_if_not_finite(self, bad: torch.Tensor, checked: int) -> None:
        """Stop on a non-finite loss or gradient; all ranks take the same decision."""
        if self.dist.all_reduce_sum(bad.clone()).item() > 0:
            steps = f"step {self.step}" if self.step - checked <= 1 else f"steps {checked + 1}..{self.step}"
            raise TrainingError(
                f"the loss or the gradient became NaN/inf in epoch {self.epoch} ({steps}). Training stopped; "
                f"the last good checkpoint in {self.out_dir} (the end of epoch {self.epoch - 1}) was kept. "
                "Try a lower --lr, a longer --warmup-steps, or gradient clipping (--grad-clip 1.0)."
            )

    def _stop_if_weights_not_finite(self) -> None:
        for what, module in (("weights", self.model), ("EMA weights", self.ema.shadow)):
            for key, value in module.state_dict().items():
                if value.is_floating_point() and not torch.isfinite(value).all():
                    raise TrainingError(
                        f"the {what} became NaN/inf in epoch {self.epoch} (first in {key}); the checkpoint of "
                        f"epoch {self.epoch - 1} in {self.out_dir} was kept. Try a lower --lr or a longer "
                        "--warmup-steps."
                    )

    def _say_how_to_resume(self) -> None:
        done = self.saved_epoch
        if done >= 1:
            print(f"\ninterrupted in epoch {self.epoch}: the checkpoint of epoch {done} in {self.out_dir} is "
                  f"complete. Continue with: python -m diffusion_lib train --out {self.out_dir} "
                  f"--epochs {self.config.epochs} --resume", file=sys.stderr, flush=True)
        else:
            print("\ninterrupted in epoch 1: no epoch had finished, so there is nothing to resume. "
                  "Run the same command again to start over.", file=sys.stderr, flush=True)



def make_optimizer(model: nn.Module, config: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices and kernels only (decaying biases and norm scales only hurts)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # fused: one kernel for the whole update (CUDA, CPU); foreach: batched ops elsewhere (MPS)
    fused = fused_optimizer(device)
    return torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.999), eps=1e-8, fused=fused,
                             foreach=None if fused else True)


if __name__ == "__main__":  # python -m diffusion_lib.train ... is python -m diffusion_lib train ...
    from .train_cli import main

    sys.exit(main())
