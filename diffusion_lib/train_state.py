"""A training run's folder: the files written after each epoch, and how a run comes back from them.

``train_state.safetensors`` holds the raw weights theta, the EMA weights, AdamW's moments and
step counts and the random generators' states; ``train_state.json`` the epoch, step, configs and
history. Written and restored exactly, so that a resumed run equals an uninterrupted one
bit for bit (on the same device and thread count). The list of files is in
:mod:`diffusion_lib.train`'s docstring; this module is the engineering behind ``--resume``, kept
apart from the recipe.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn

from .atomic import CheckpointError, commit_files, sha256_file
from .checkpoint import component_files, jsonl_bytes, load_component, load_into
from .denoiser import AUTOENCODER_SHA256

if TYPE_CHECKING:
    from .train import EMA, Trainer

STATE = "train_state"  # component name of the resumable training state
DENOISER = "denoiser"  # component name of the EMA weights the pipeline loads
VAE = "vae"  # component name of the run's copy of its frozen autoencoder
LOG_FILE = "train_log.jsonl"
STATE_FORMAT = 1
# what train_state.json must hold for --resume
STATE_KEYS = ("epoch", "step", "denoiser_config", "train_config", "vae_sha256", "history")
# the fp16 EMA snapshots of the ladder: snapshot_name(5) == "denoiser_epoch005", parsed by SNAPSHOT_PATTERN
SNAPSHOT_PATTERN = re.compile(rf"^{DENOISER}_epoch(\d+)$")
# the settings of TrainConfig that define the model (a resumed run must keep them)
MODEL_OPTIONS = ("denoiser", "unet", "prompt", "prediction_type", "schedule", "rescale_zero_terminal_snr")
# settings that may change when a run resumes: where files go, how it runs (the model options are checked apart)
RESUMABLE_SETTINGS = ("epochs", "resume", "out_dir", "vae_dir", "overwrite", "progress", "num_threads", "compile",
                      "channels_last")


class TrainingError(RuntimeError):
    """Training cannot start or go on (bad settings, nothing to resume, a non-finite loss, ...)."""


def snapshot_name(epoch: int) -> str:
    """The component name of the EMA snapshot kept after ``epoch`` epochs (one rung of the ladder)."""
    return f"{DENOISER}_epoch{epoch:03d}"


# --------------------------------------------------------------------------- writing an epoch
def save_epoch(trainer: Trainer) -> None:
    """Write the trainer's epoch as ONE unit (:func:`~diffusion_lib.checkpoint.commit_files`): a crash
    at any moment leaves the previous epoch's files or this epoch's, all of them matching
    ``SHA256SUMS``, never a mix."""
    model_config = trainer.model_config.to_dict()
    denoiser_json = {**model_config, AUTOENCODER_SHA256: trainer.vae_sha}
    files = {}
    if trainer.epoch in trainer.config.snapshot_epochs:
        files.update(component_files(snapshot_name(trainer.epoch), trainer.ema.shadow, denoiser_json,
                                     dtype=torch.float16))
    files.update(component_files(DENOISER, trainer.ema.shadow, denoiser_json))
    tensors, scalars = state_tensors(trainer.model, trainer.ema, trainer.optimizer, trainer.generator,
                                     trainer.device)
    meta = {
        "format": STATE_FORMAT,
        "epoch": trainer.epoch,
        "step": trainer.step,
        "denoiser_config": model_config,
        "train_config": trainer.config.to_dict(),
        "vae_sha256": trainer.vae_sha,
        "device_type": trainer.device.type,
        "optimizer_scalars": scalars,
        "history": trainer.history,
        "torch_version": torch.__version__,
    }
    files.update(component_files(STATE, tensors, meta))
    files[LOG_FILE] = jsonl_bytes(trainer.history)
    try:
        commit_files(trainer.out_dir, files, unlisted=(LOG_FILE,))
    except OSError as err:
        kept = (f"the checkpoint of epoch {trainer.saved_epoch} was kept; free space (or fix the folder), then "
                f"continue with --resume" if trainer.saved_epoch else "no epoch had been saved yet")
        raise TrainingError(f"could not write the checkpoint of epoch {trainer.epoch} to {trainer.out_dir} ({err}); "
                            f"{kept}.") from err
    trainer.saved_epoch = trainer.epoch


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


# ------------------------------------------------------------------------ reading a run back
def read_saved_run(out_dir: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors and JSON of the last complete epoch in ``out_dir``, checked to be resumable."""
    state_file = out_dir / f"{STATE}.safetensors"
    parts = sorted(out_dir.glob(f"{STATE}.safetensors.part*"))
    if not state_file.is_file() and parts:
        # a run folder moved in pieces (files of at most 16 MB): the parts must be joined first
        raise TrainingError(
            f"{state_file} is stored in {len(parts)} parts; join them first: "
            f"cat {' '.join(str(p) for p in parts)} > {state_file}"
        )
    if not state_file.is_file():
        raise TrainingError(
            f"nothing to resume: {state_file} does not exist (no epoch of a run in {out_dir} has "
            f"finished). Start a fresh run by leaving out --resume (resume=False)."
        )
    tensors, meta = load_component(out_dir, STATE)
    meta_file = out_dir / f"{STATE}.json"
    if meta.get("format") != STATE_FORMAT:
        raise TrainingError(f"{meta_file} has an unknown format; start a fresh run.")
    missing = [key for key in STATE_KEYS if key not in meta]
    if missing or "rng.torch_cpu" not in tensors:
        raise TrainingError(
            f"{meta_file} lacks {', '.join(missing) or 'the random-number state'}, which resuming needs: the "
            f"run's training state is incomplete. Restore the run folder as it was saved, or start a fresh run "
            f"(--overwrite, or another --out folder)."
        )
    return tensors, meta


def refuse_to_replace(out_dir: Path, overwrite: bool) -> None:
    """A fresh run never replaces a trained one unless told to (``overwrite``)."""
    existing = [n for n in (f"{STATE}.safetensors", f"{DENOISER}.safetensors") if (out_dir / n).exists()]
    if existing and not overwrite:
        raise TrainingError(
            f"{out_dir} already holds a trained denoiser ({', '.join(existing)}). Pass --resume to "
            f"continue that run, --overwrite to start over and replace it, or choose another --out folder."
        )


def run_autoencoder(out_dir: Path, vae_dir: Path, recorded_sha: str, announce: bool) -> Path:
    """The folder of the autoencoder a resumed run uses: the run's own copy, the one it was trained on."""
    own = out_dir / f"{VAE}.safetensors"
    if not own.is_file() or sha256_file(own) != recorded_sha:
        raise TrainingError(
            f"{own} is missing or is not the autoencoder the run in {out_dir} was trained on (recorded "
            f"SHA-256 {recorded_sha[:12]}...). Restore that file, or start a fresh run in another --out folder."
        )
    other = vae_dir / f"{VAE}.safetensors"
    if vae_dir.resolve() != out_dir.resolve() and other.is_file() and sha256_file(other) != recorded_sha:
        if announce:
            print(f"note: {other} differs from the autoencoder this run was trained on; resuming with the "
                  f"run's own copy, {own}.")
    return out_dir


def resume_into(trainer: Trainer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Put a saved run's state into a freshly built trainer, and say what changed since it was saved."""
    restore_state(tensors, meta, trainer.model, trainer.ema, trainer.optimizer, trainer.generator, trainer.device,
                  trainer.out_dir / f"{STATE}.safetensors")
    trainer.epoch, trainer.step, trainer.history = meta["epoch"], meta["step"], list(meta["history"])
    trainer.saved_epoch = trainer.epoch
    # the model options were checked when the model was built; these others do not change the training
    ignore = (*RESUMABLE_SETTINGS, *MODEL_OPTIONS)
    changed = config_differences(
        {k: v for k, v in meta["train_config"].items() if k not in ignore},
        {k: v for k, v in trainer.config.to_dict().items() if k not in ignore},
    )
    if trainer.dist.is_main:
        c = trainer.config
        print(f"resuming {trainer.out_dir} after epoch {trainer.epoch} of {c.epochs} (seed {c.seed}, lr {c.lr:g} "
              f"{c.lr_schedule}, batch {c.batch_size})", flush=True)
        if changed:
            print("changed settings: " + "; ".join(changed), flush=True)


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
