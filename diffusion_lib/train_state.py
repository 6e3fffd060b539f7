"""The resumable training state: what a run folder holds besides the weights, and how it comes back.

``train_state.safetensors`` holds the raw weights theta, the EMA weights, AdamW's moments and
step counts and the random generators' states; ``train_state.json`` the epoch, step, configs and
history. Written and restored exactly, so that a resumed run equals an uninterrupted one
bit for bit (on the same device and thread count).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn

from .checkpoint import CheckpointError, commit_files, load_component, load_into

if TYPE_CHECKING:
    from .train import EMA


def state_tensors(model: nn.Module, ema: EMA, optimizer: torch.optim.Optimizer, generator: torch.Generator,
                   device: torch.device) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Flatten everything ``--resume`` needs into ``{name: tensor}`` plus JSON-able scalars."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors.update({f"ema.{k}": v for k, v in ema.shadow.state_dict().items()})
    scalars: dict[str, Any] = {}
    # optimizer.state_dict() = {"state": {param index: {"step": t, "exp_avg": t, ...}}, "param_groups": [...]};
    # the param groups are rebuilt from the config, so only the per-parameter state is stored
    for index, per_param in optimizer.state_dict()["state"].items():
        for key, value in per_param.items():
            if torch.is_tensor(value):
                tensors[f"optimizer.{index}.{key}"] = value
            else:
                scalars[f"{index}.{key}"] = value
    tensors["rng.generator"] = generator.get_state()
    tensors["rng.torch_cpu"] = torch.get_rng_state()
    if device.type == "cuda":
        tensors["rng.torch_cuda"] = torch.cuda.get_rng_state(device)
    elif device.type == "mps":
        tensors["rng.torch_mps"] = torch.mps.get_rng_state()
    return tensors, scalars


def restore_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any], model: nn.Module, ema: EMA,
                   optimizer: torch.optim.Optimizer, generator: torch.Generator, device: torch.device,
                   source: Path) -> None:
    """Put the state written by :func:`state_tensors` back into freshly built objects.

    The optimizer's hyper-parameters come from the current config (only the moments
    and step counts are loaded), so a resumed run may change e.g. the learning rate.
    """

    def part(prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}

    load_into(model, part("model."), source)
    load_into(ema.shadow, part("ema."), source)
    state: dict[int, dict[str, Any]] = {}
    for key, value in part("optimizer.").items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    for key, value in meta.get("optimizer_scalars", {}).items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    current = optimizer.state_dict()
    if state and set(state) != set(range(sum(len(g["params"]) for g in current["param_groups"]))):
        raise CheckpointError(f"{source}: the optimizer state does not fit the model. Start a fresh run.")
    current["state"] = state
    optimizer.load_state_dict(current)
    torch.set_rng_state(tensors["rng.torch_cpu"])
    if meta.get("device_type", "cpu") == device.type:
        generator.set_state(tensors["rng.generator"])
        if device.type == "cuda":
            torch.cuda.set_rng_state(tensors["rng.torch_cuda"], device)
        elif device.type == "mps" and "rng.torch_mps" in tensors:
            torch.mps.set_rng_state(tensors["rng.torch_mps"])
    else:
        # a CPU generator's state means nothing to a CUDA generator (and back): start a new stream
        generator.manual_seed(int(meta["train_config"]["seed"]) + int(meta["epoch"]))
        print(f"note: the run was saved on {meta.get('device_type')} and resumes on {device.type}; training "
              "goes on correctly but draws different random numbers than it would have on the same device.")


def config_differences(saved: Any, new: Any, prefix: str = "") -> list[str]:
    """Readable ``key: saved -> new`` lines for two nested config dicts."""
    if isinstance(saved, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(saved) | set(new)):
            out += config_differences(saved.get(key, "<absent>"), new.get(key, "<absent>"), f"{prefix}{key}.")
        return out
    return [] if saved == new else [f"{prefix.rstrip('.')}: {saved!r} -> {new!r}"]


def copy_component(src: Path, dst: Path, name: str) -> None:
    """Copy NAME.safetensors + NAME.json byte for byte (checked, and saved as one unit with SHA256SUMS).

    The run's folder carries its own autoencoder, so ``Pipeline.from_pretrained(out_dir)``
    needs nothing else, and the copy keeps the SHA-256 the run recorded.
    """
    load_component(src, name)  # verifies the source against its SHA256SUMS
    commit_files(dst, {file: (src / file).read_bytes() for file in (f"{name}.safetensors", f"{name}.json")})


def log_bytes(history: list[dict]) -> bytes:
    """``train_log.jsonl``: one JSON line per complete epoch."""
    return "".join(json.dumps(h, sort_keys=True) + "\n" for h in history).encode()
