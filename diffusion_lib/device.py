"""Choosing the device (``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``) and the few choices that depend on it.

``auto`` takes an NVIDIA GPU (CUDA) if there is one, then Apple's GPU (MPS, on Apple-silicon
Macs), then the CPU. What differs between them lives here, so that the training and sampling
code asks one question per choice instead of testing device names:

======================  ===============  ==================  ====================
choice                  CUDA             MPS                 CPU
======================  ===============  ==================  ====================
autocast                bfloat16         none (float32)      none (float32)
AdamW                   fused kernel     foreach             foreach
channels_last default   no               no                  yes (bench --options)
multi-process backend   nccl             refused             gloo
running sums            float64          float32             float64
======================  ===============  ==================  ====================

MPS has no float64, and its float16 autocast would need a gradient scaler (bfloat16 needs
macOS 14): the kit trains in float32 there.
"""

from __future__ import annotations

import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N", "mps")


def mps_available() -> bool:
    """Whether Apple's Metal GPU can be used (Apple silicon, macOS 12.3+, a PyTorch built with MPS)."""
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(name: str | torch.device, local_rank: int = 0) -> torch.device:
    """``"auto"`` -> CUDA, else MPS, else the CPU; plain ``"cuda"`` -> this process's GPU.

    :param local_rank: the GPU index a plain ``"cuda"`` means (one GPU per process under torchrun)
    :raises ValueError: an unknown device name, or a GPU asked for where there is none
    """
    if isinstance(name, torch.device):
        name = str(name)
    name = name.strip().lower()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if mps_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if name in ("mps", "mps:0"):
        if not mps_available():
            raise ValueError(f"device {name!r} was asked for but Apple's Metal GPU (MPS) is not available here: it "
                             "needs an Apple-silicon Mac with macOS 12.3 or later; use 'cpu' or 'auto'")
        return torch.device("mps")
    if name == "cuda" or (name.startswith("cuda:") and name[5:].isdigit()):
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} was asked for but no CUDA GPU is available here; use 'cpu' or 'auto'")
        if name == "cuda":
            name = f"cuda:{local_rank}"
        index = int(name[5:])
        if index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r} does not exist: this machine has {torch.cuda.device_count()} GPU(s)")
        return torch.device(name)
    raise ValueError(f"unknown device {name!r}; valid: {', '.join(DEVICE_CHOICES)}")


def default_channels_last(device: torch.device) -> bool:
    """Whether training keeps its maps in channels_last order when not told: on the CPU, where this U-Net's
    convolutions are faster in that order (measured by ``python -m diffusion_lib bench --options``)."""
    return device.type == "cpu"


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The reduced precision the training step runs its model in, or None for float32.

    bfloat16 on CUDA (same exponent range as float32: no loss scaling); float32 on the CPU, where
    autocast is slower at this size, and on MPS (see the module's text)."""
    return torch.bfloat16 if device.type == "cuda" else None


def fused_optimizer(device: torch.device) -> bool:
    """Whether AdamW runs as one fused kernel (CUDA, CPU) rather than torch's foreach ops (MPS).

    On the CPU the fused step of the default denoiser takes ~2 ms against ~7 ms for the foreach one
    (2 threads): the foreach ops loop over its ~350 small tensors a dozen times and read each step
    count back with ``.item()``. A training step at batch 256 takes ~170 ms.
    """
    return device.type in ("cuda", "cpu")


def accumulator_dtype(device: torch.device) -> torch.dtype:
    """The dtype of running sums kept on ``device`` (an epoch's loss): float64, or float32 on MPS, which has none."""
    return torch.float32 if device.type == "mps" else torch.float64


def distributed_backend(device_type: str) -> str:
    """The torch.distributed backend for multi-process training on ``device_type``.

    :raises ValueError: MPS (one GPU per Mac, and no collective backend for it)
    """
    if device_type == "cuda":
        return "nccl"
    if device_type == "mps":
        raise ValueError("multi-process training (torchrun) runs on CUDA GPUs or CPUs; a Mac's GPU is one device: "
                         "train with one process (python -m diffusion_lib train --device mps)")
    return "gloo"


def synchronize(device: torch.device) -> None:
    """Wait for the GPU's queued work (so that a timing is true); nothing on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()
