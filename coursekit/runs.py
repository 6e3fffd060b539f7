"""Training runs side by side: the shipped epoch ladder, its log, and a run made inside a notebook.

* :func:`ladder`            - the fp16 EMA snapshots ``denoiser_epochEEE`` found in a folder, by epoch
* :func:`read_log`          - the per-epoch lines of a ``train_log.jsonl``
* :func:`matching_rung`     - the rung whose weights a final model holds (to tell how many epochs it had)
* :func:`train_or_reuse`    - train a run, or take the finished run already in ``out_dir`` when it was made
  with the same settings (re-running a notebook cell then costs nothing), or resume it when only more
  epochs are asked for
* :func:`load_raw_denoiser` - the raw (not averaged) weights of a run's last epoch, to compare with its EMA

Training itself is ``diffusion_lib.train``; this module only decides whether it has to run.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from diffusion_lib.atomic import CheckpointError, sha256_file
from diffusion_lib.checkpoint import load_component, load_into
from diffusion_lib.denoiser import Denoiser, DenoiserConfig
from diffusion_lib.train import TrainConfig, train
from diffusion_lib.train_state import DENOISER, LOG_FILE, SNAPSHOT_PATTERN, STATE, VAE

# settings that change where or how fast a run is made, not the weights it ends with
NOT_COMPARED = ("out_dir", "vae_dir", "epochs", "resume", "overwrite", "progress", "num_threads", "device", "compile")


@dataclass(frozen=True)
class Rung:
    """One snapshot of the ladder: ``name`` ("denoiser_epoch005") holds the EMA weights after ``epoch`` epochs."""

    epoch: int
    name: str


def ladder(directory: str | Path) -> list[Rung]:
    """Every ``denoiser_epochEEE.safetensors`` in ``directory`` that has its ``.json`` beside it, by epoch."""
    rungs = []
    for path in Path(directory).glob("denoiser_epoch*.safetensors"):
        match = SNAPSHOT_PATTERN.match(path.stem)
        if match and path.with_suffix(".json").is_file():
            rungs.append(Rung(int(match.group(1)), path.stem))
    return sorted(rungs, key=lambda r: r.epoch)


def read_log(path: str | Path) -> list[dict[str, Any]]:
    """The per-epoch dicts of a ``train_log.jsonl`` (``epoch, step, loss, lr, images, images_per_s, wall_s``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: a training run writes it after its first epoch "
                                "(python -m diffusion_lib train --out DIR)")
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not a JSON-lines training log ({err}); restore it or retrain") from err


def matching_rung(directory: str | Path, name: str = DENOISER) -> Rung | None:
    """The rung of ``directory``'s ladder that holds exactly the weights of ``name``, else None.

    A snapshot is the same EMA weights as the final ``denoiser`` of that epoch, stored in fp16, so the final
    model of a run saved at a snapshot epoch equals that rung bit for bit once cast to fp16.
    """
    tensors, _ = load_component(directory, name)
    for rung in ladder(directory):
        snapshot, _ = load_component(directory, rung.name)
        if set(snapshot) == set(tensors) and all(
            torch.equal(tensors[k].to(snapshot[k].dtype), snapshot[k]) for k in snapshot
        ):
            return rung
    return None


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k not in NOT_COMPARED}


def saved_run(config: TrainConfig) -> dict[str, Any] | None:
    """The metadata of the run in ``config.out_dir`` if it was made with the same settings and the same
    autoencoder (its files intact), else None."""
    out = Path(config.out_dir)
    try:
        _, meta = load_component(out, STATE)
        load_component(out, DENOISER)
        own_vae = sha256_file(Path(config.vae_dir) / f"{VAE}.safetensors")
    except (CheckpointError, OSError):
        return None
    saved = TrainConfig.from_dict(meta["train_config"]).to_dict()
    if _comparable(saved) != _comparable(config.to_dict()) or meta.get("vae_sha256") != own_vae:
        return None
    return meta


def train_or_reuse(config: TrainConfig) -> tuple[list[dict[str, Any]], str]:
    """Train ``config``, reusing the run already in ``config.out_dir`` where that gives the same weights.

    * same settings, ``config.epochs`` epochs done: nothing to train, its history is returned;
    * same settings, fewer epochs done, constant learning rate: resume it (on the CPU with a fixed seed
      this equals an uninterrupted run, see ``diffusion_lib.train``);
    * anything else: a fresh run that replaces the folder's run.

    :returns: ``(history, how)``: one metrics dict per epoch, and ``"reused"``, ``"resumed"`` or ``"trained"``
    """
    meta = saved_run(config)
    if meta is not None and meta["epoch"] == config.epochs:
        return list(meta["history"]), "reused"
    with torch.enable_grad():  # a notebook may have switched gradients off for its evaluation cells
        if meta is not None and meta["epoch"] < config.epochs and config.lr_schedule == "constant":
            return train(dataclasses.replace(config, resume=True, overwrite=False)), "resumed"
        return train(dataclasses.replace(config, resume=False, overwrite=True)), "trained"


def load_raw_denoiser(directory: str | Path, device: str | torch.device = "cpu") -> Denoiser:
    """The raw weights theta of the last finished epoch (``train_state``), not the EMA theta_ema
    that ``denoiser.safetensors`` holds; eval mode."""
    tensors, meta = load_component(directory, STATE)
    model = Denoiser(DenoiserConfig.from_dict(meta["denoiser_config"]))
    raw = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    load_into(model, raw, Path(directory) / f"{STATE}.safetensors")
    return model.to(device).eval()


__all__ = ["Rung", "ladder", "read_log", "matching_rung", "saved_run", "train_or_reuse", "load_raw_denoiser", "LOG_FILE"]
