"""The denoiser: tokenizer + prompt encoder + U-Net, saved and loaded as one component.

    prompts --Tokenizer--> tokens (B, L) --PromptEncoder--> context c (B, L, D)
    (x_t, t, c) --UNet--> prediction (B, 4, h, w)

The prediction is the noise ``eps`` (``prediction_type="epsilon"``, as in
Stable Diffusion 1.x) or the velocity

    v = sqrt(abar_t) * eps - sqrt(1 - abar_t) * x_0      (``"v_prediction"``, Salimans & Ho, 2022)

The config also records the noise schedule the model was trained with, since
a model is only right for the schedule it has seen;
``NoiseSchedule.from_dict(config.schedule)`` (``diffusion_lib.schedules``) rebuilds it.

On disk it is ``denoiser.safetensors`` + ``denoiser.json`` (see ``checkpoint.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .atomic import CheckpointError, sha256_file
from .checkpoint import config_from_file, load_component, load_into, save_component
from .checks import config_from_dict
from .text_encoder import PromptEncoder, PromptEncoderConfig, Tokenizer
from .unet import UNet, UNetConfig

# what a denoiser may be trained to predict (schedules.PREDICTION_TYPES also converts from "sample", x_0)
DENOISER_PREDICTION_TYPES = ("epsilon", "v_prediction")


def default_schedule() -> dict:
    return {"name": "scaled_linear", "num_train_timesteps": 1000, "rescale_zero_terminal_snr": False}


@dataclass
class DenoiserConfig:
    """Everything needed to rebuild a :class:`Denoiser` (stored as ``denoiser.json``).

    :param unet: the U-Net's size; ``unet.context_dim`` must equal ``prompt.dim``
    :param prompt: the prompt encoder's size
    :param tokenizer: ``Tokenizer.to_dict()``
    :param prediction_type: ``"epsilon"`` or ``"v_prediction"``
    :param schedule: ``NoiseSchedule.to_dict()`` of the training schedule
    """

    unet: UNetConfig
    prompt: PromptEncoderConfig
    tokenizer: dict
    prediction_type: str = "epsilon"
    schedule: dict = field(default_factory=default_schedule)

    def __post_init__(self):
        if self.prediction_type not in DENOISER_PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {DENOISER_PREDICTION_TYPES}, not {self.prediction_type!r}")
        tokenizer = Tokenizer.from_dict(self.tokenizer)
        if (self.prompt.vocab_size, self.prompt.max_length) != (tokenizer.vocab_size, tokenizer.max_length):
            raise ValueError(
                f"The prompt encoder (vocab_size={self.prompt.vocab_size}, max_length={self.prompt.max_length}) "
                f"does not fit the tokenizer (vocab_size={tokenizer.vocab_size}, max_length={tokenizer.max_length})"
            )
        if self.unet.context_dim != self.prompt.dim:
            raise ValueError(
                f"unet.context_dim={self.unet.context_dim} must equal the prompt encoder's dim={self.prompt.dim}"
            )

    def to_dict(self) -> dict:
        return {
            "unet": self.unet.to_dict(),
            "prompt": self.prompt.to_dict(),
            "tokenizer": dict(self.tokenizer),
            "prediction_type": self.prediction_type,
            "schedule": dict(self.schedule),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "DenoiserConfig":
        return config_from_dict(cls, d)


def default_denoiser_config(
    prediction_type: str = "epsilon", schedule: dict | None = None, tokenizer: Tokenizer | None = None
) -> DenoiserConfig:
    """The shipped model size (1.76 M parameters, 0.043 GFLOP per 4x8x8 latent and forward pass).

    Its training speed is measured by ``python -m diffusion_lib bench`` (the README's performance section).
    """
    tokenizer = tokenizer or Tokenizer()
    prompt = PromptEncoderConfig(vocab_size=tokenizer.vocab_size, max_length=tokenizer.max_length, dim=64, depth=2)
    unet = UNetConfig(context_dim=prompt.dim)
    return DenoiserConfig(unet, prompt, tokenizer.to_dict(), prediction_type, schedule or default_schedule())


class Denoiser(nn.Module):
    """``model(x_t, t, tokens)`` -> the prediction of ``eps`` (or ``v``) for a batch of latents."""

    def __init__(self, config: DenoiserConfig):
        super().__init__()
        self.config = config
        self.tokenizer = Tokenizer.from_dict(config.tokenizer)
        self.prompt_encoder = PromptEncoder(config.prompt)
        self.unet = UNet(config.unet)

    @property
    def prediction_type(self) -> str:
        return self.config.prediction_type

    def encode_prompts(self, prompts: list[str] | str) -> torch.Tensor:
        """Prompts -> tokens (B, L) on the model's device (``""`` = unconditional)."""
        return self.tokenizer.encode(prompts).to(self.unet.conv_in.weight.device)

    def forward(
        self, x_t: torch.Tensor, t: torch.Tensor, tokens: torch.Tensor, prompt_index: torch.Tensor | None = None
    ) -> torch.Tensor:
        """
        :param x_t: (B, 4, h, w) noisy (scaled) latents
        :param t: (B,) timesteps
        :param tokens: (B, L) from :meth:`encode_prompts`; or, with ``prompt_index``, the
            P distinct prompts of the batch (P, L)
        :param prompt_index: optional (B,) row of ``tokens`` that each example uses. A batch
            of 256 holds at most 31 distinct training prompts: encoding each once and looking
            the context up gives the same result as encoding all 256
        :returns: (B, 4, h, w), ``eps`` or ``v`` according to ``config.prediction_type``
        """
        context = self.prompt_encoder(tokens)  # (B or P, L, D)
        # with prompt_index, the U-Net looks each example's context up itself (context[prompt_index], (B, L, D)),
        # where it is cheapest: the cross-attentions project the P distinct prompts only
        return self.unet(x_t, t, context, context_index=prompt_index)


def save_denoiser(
    directory: Path | str,
    denoiser: Denoiser,
    ema: nn.Module | dict[str, torch.Tensor] | None = None,
    name: str = "denoiser",
    dtype: torch.dtype | None = None,
) -> Path:
    """Write ``NAME.safetensors`` + ``NAME.json`` (atomically, with checksums).

    :param denoiser: the model (a DistributedDataParallel wrapper is unwrapped)
    :param ema: exponential moving average of the weights: a module of the same
        architecture (e.g. ``torch.optim.swa_utils.AveragedModel``) or its state
        dict. When given, these weights are saved instead of ``denoiser``'s own,
        since the EMA weights are the ones to sample with.
    :param dtype: e.g. ``torch.float16`` to halve the file size
    :returns: the path of the weights file
    """
    denoiser = _unwrap(denoiser)
    if ema is None:
        state = denoiser.state_dict()
    elif isinstance(ema, nn.Module):
        state = _unwrap(ema).state_dict()
    else:
        state = ema
    if set(state) != set(denoiser.state_dict()):
        raise ValueError("ema does not hold the same parameters as the denoiser")
    return save_component(directory, name, state, denoiser.config.to_dict(), dtype=dtype)


def _unwrap(module: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel or AveragedModel wrapper (or the model itself)."""
    inner = getattr(module, "module", None)
    return inner if isinstance(inner, nn.Module) else module


AUTOENCODER_SHA256 = "autoencoder_sha256"  # key of a denoiser's JSON: the autoencoder it was trained on


def load_denoiser(directory: Path | str, device: str | torch.device = "cpu", name: str = "denoiser") -> Denoiser:
    """Rebuild a :class:`Denoiser` from ``directory/NAME.json`` and load its weights (eval mode).

    A denoiser only works on the latents of the autoencoder it was trained on. Its JSON
    records that autoencoder's SHA-256 (``autoencoder_sha256``, written by the trainer);
    when ``directory`` also holds a ``vae.safetensors``, the two must agree.

    :raises CheckpointError: a missing, corrupt or mismatched file, or a denoiser beside an
        autoencoder it was not trained on (the message names the files and the fix)
    """
    directory = Path(directory)
    tensors, config = load_component(directory, name)
    source = directory / f"{name}.json"
    recorded = config.pop(AUTOENCODER_SHA256, None)
    config = config_from_file(DenoiserConfig, config, source, "denoiser")
    vae_file = directory / "vae.safetensors"
    if recorded is not None and vae_file.is_file():
        actual = sha256_file(vae_file)
        if actual != recorded:
            raise CheckpointError(
                f"{source} was trained on the autoencoder with SHA-256 {str(recorded)[:12]}..., but {vae_file} "
                f"beside it is another one ({actual[:12]}...): its latents mean nothing to this denoiser. Restore the "
                f"autoencoder it was trained on, or train a denoiser on this one (python -m diffusion_lib train "
                f"--vae-dir {directory} --out NEW_FOLDER)."
            )
    denoiser = Denoiser(config)
    load_into(denoiser, tensors, directory / f"{name}.safetensors")
    return denoiser.to(device).eval()
