"""The settings of a denoiser's training run, and the model they describe.

:class:`TrainConfig` is stored in ``train_state.json`` with every run, so ``--resume`` knows
what the run was; :func:`build_denoiser_config` turns it into the :class:`DenoiserConfig` to train.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from .checks import MAX_SEED, config_from_dict
from .data import DATASETS, FASHION_MNIST_CLASSES, MNIST_CLASSES
from .denoiser import DenoiserConfig, default_denoiser_config
from .schedules import NoiseSchedule, resolve_schedule_name
from .text_encoder import Tokenizer, current_prompt_keys
from .train_state import MODEL_OPTIONS, TrainingError

CLASS_NAMES = {"fashion-mnist": FASHION_MNIST_CLASSES, "mnist": MNIST_CLASSES}


# ----------------------------------------------------------------------------- configuration
@dataclass
class TrainConfig:
    """Everything that defines a training run (stored in ``train_state.json``).

    :param out_dir: folder for checkpoints and the log (created if needed)
    :param epochs: train until this many epochs are complete (also when resuming)
    :param batch_size: images per optimizer step, summed over all processes
    :param lr: peak AdamW learning rate, reached after ``warmup_steps``
    :param weight_decay: AdamW decoupled weight decay, applied to weight matrices and
        conv kernels only (not to biases and normalisation scales)
    :param warmup_steps: optimizer steps of linear learning-rate warm-up
    :param lr_schedule: ``"constant"`` after warm-up, or ``"cosine"`` decay to 0 at ``epochs``
    :param ema_decay: d in theta_ema <- d theta_ema + (1 - d) theta (warmed up, see :class:`EMA`)
    :param grad_clip: clip the global gradient norm to this value (0 = no clipping)
    :param cond_drop_prob: probability of replacing a prompt by "" (classifier-free guidance)
    :param seed: seeds the weights' initialisation and every random draw of training
    :param device: ``"auto"`` (CUDA if available), ``"cpu"`` or ``"cuda"`` (``"cuda:1"`` ...)
    :param vae_dir: folder holding the frozen autoencoder (``vae.safetensors`` + ``vae.json``); it is
        copied into ``out_dir``, and a resumed run uses that copy
    :param limit: train on the first ``limit`` training images only (quick runs); None = all
    :param dataset: ``"fashion-mnist"`` or ``"mnist"``
    :param prediction_type: ``"epsilon"`` or ``"v_prediction"``; None keeps the model config's
    :param schedule: noise schedule name (``"scaled_linear"``, ``"cosine"``, ...); None keeps the model config's
    :param rescale_zero_terminal_snr: None keeps the model config's; True pairs with v-prediction
    :param denoiser: a full ``DenoiserConfig.to_dict()``; None = ``default_denoiser_config()``
    :param unet: overrides of ``UNetConfig`` fields, e.g. ``{"base_channels": 32}``
    :param prompt: overrides of ``PromptEncoderConfig`` fields, e.g. ``{"depth": 1}``
    :param snapshot_epochs: epochs after which fp16 EMA snapshots are kept
    :param resume: continue the run saved in ``out_dir``
    :param overwrite: allow a fresh run to replace a run already saved in ``out_dir``
    :param progress: show tqdm progress bars
    :param num_threads: CPU threads while training (restored afterwards); None leaves torch's setting.
        On a busy machine fewer threads can be much faster: idle-waiting threads stall every op
    :param compile: ``torch.compile`` the denoiser (faster steps on CUDA after a warm-up)
    :param channels_last: keep the U-Net's maps and kernels in channels_last memory order; None =
        on the CPU only (:func:`~diffusion_lib.device.default_channels_last`)
    """

    out_dir: str
    epochs: int
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 250
    lr_schedule: str = "constant"
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    cond_drop_prob: float = 0.1
    seed: int = 0
    device: str = "auto"
    vae_dir: str = "checkpoints"
    limit: int | None = None
    dataset: str = "fashion-mnist"
    prediction_type: str | None = None
    schedule: str | None = None
    rescale_zero_terminal_snr: bool | None = None
    denoiser: dict | None = None
    unet: dict = field(default_factory=dict)
    prompt: dict = field(default_factory=dict)
    snapshot_epochs: tuple[int, ...] = (1, 2, 5, 10, 25, 50)
    resume: bool = False
    overwrite: bool = False
    progress: bool = True
    num_threads: int | None = None
    compile: bool = False
    channels_last: bool | None = None

    def __post_init__(self) -> None:
        self.out_dir = str(self.out_dir)
        self.vae_dir = str(self.vae_dir)
        self.snapshot_epochs = tuple(int(e) for e in self.snapshot_epochs)
        self.unet = dict(self.unet or {})
        # earlier runs' settings may use the prompt encoder's earlier key names (layers, heads, mlp_ratio)
        self.prompt = current_prompt_keys(dict(self.prompt or {}))
        if isinstance(self.denoiser, dict) and "prompt" in self.denoiser:
            self.denoiser = {**self.denoiser, "prompt": current_prompt_keys(self.denoiser["prompt"])}

    def validate(self) -> None:
        """Raise :class:`TrainingError` naming the first setting that cannot work."""
        e, b = self.epochs, self.batch_size
        checks = [
            (isinstance(e, int) and e >= 1, f"epochs must be an integer >= 1, got {e!r}"),
            (isinstance(b, int) and b >= 1, f"batch_size must be an integer >= 1, got {b!r}"),
            (isinstance(self.seed, int) and not isinstance(self.seed, bool) and 0 <= self.seed <= MAX_SEED,
             f"seed must be an integer in [0, {MAX_SEED}], got {self.seed!r}"),
            (math.isfinite(self.lr) and self.lr > 0, f"lr must be a finite number > 0, got {self.lr}"),
            (self.num_threads is None or (isinstance(self.num_threads, int) and self.num_threads >= 1),
             f"num_threads must be an integer >= 1 or None, got {self.num_threads!r}"),
            (all(e >= 1 for e in self.snapshot_epochs), f"snapshot_epochs must be >= 1, got {self.snapshot_epochs}"),
            (self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}"),
            (self.warmup_steps >= 0, f"warmup_steps must be >= 0, got {self.warmup_steps}"),
            (self.lr_schedule in ("constant", "cosine"),
             f"lr_schedule must be 'constant' or 'cosine', got {self.lr_schedule!r}"),
            (0.0 <= self.ema_decay < 1.0, f"ema_decay must lie in [0, 1), got {self.ema_decay}"),
            (self.grad_clip >= 0, f"grad_clip must be >= 0 (0 = off), got {self.grad_clip}"),
            (0.0 <= self.cond_drop_prob <= 1.0, f"cond_drop_prob must lie in [0, 1], got {self.cond_drop_prob}"),
            (self.limit is None or self.limit >= 1, f"limit must be >= 1 or None (all images), got {self.limit}"),
            (self.dataset in DATASETS, f"unknown dataset {self.dataset!r}; valid: {', '.join(DATASETS)}"),
        ]
        for ok, message in checks:
            if not ok:
                raise TrainingError(message)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["snapshot_epochs"] = list(self.snapshot_epochs)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        return config_from_dict(cls, d)

    def has_model_options(self) -> bool:
        """True when this config says anything about the model (used when resuming)."""
        return any(getattr(self, name) not in (None, {}) for name in MODEL_OPTIONS)


def build_denoiser_config(config: TrainConfig) -> DenoiserConfig:
    """The model to train: ``config.denoiser`` (or the default size for the dataset's classes)
    with the overrides of ``config`` applied.

    Setting only one of ``prompt.dim`` / ``unet.context_dim`` sets both, since the
    U-Net's cross-attention reads the prompt encoder's vectors.
    """
    if config.denoiser is not None:
        base = DenoiserConfig.from_dict(config.denoiser)
    else:
        base = default_denoiser_config(tokenizer=Tokenizer(CLASS_NAMES[config.dataset]))
    d = base.to_dict()
    for part, overrides in (("unet", config.unet), ("prompt", config.prompt)):
        unknown = sorted(set(overrides) - set(d[part]))
        if unknown:
            raise TrainingError(f"unknown {part} setting(s) {unknown}; valid: {sorted(d[part])}")
        d[part].update(overrides)
    if "dim" in config.prompt and "context_dim" not in config.unet:
        d["unet"]["context_dim"] = d["prompt"]["dim"]
    if "context_dim" in config.unet and "dim" not in config.prompt:
        d["prompt"]["dim"] = d["unet"]["context_dim"]
    try:
        if config.prediction_type is not None:
            d["prediction_type"] = config.prediction_type
        if config.schedule is not None:
            d["schedule"]["name"] = resolve_schedule_name(config.schedule)
        if config.rescale_zero_terminal_snr is not None:
            d["schedule"]["rescale_zero_terminal_snr"] = bool(config.rescale_zero_terminal_snr)
        NoiseSchedule.from_dict(d["schedule"])  # fails early, and clearly, for a bad schedule
        return DenoiserConfig.from_dict(d)
    except (TypeError, ValueError) as err:
        raise TrainingError(f"the denoiser settings do not make a valid model: {err}") from err
