"""Checkpoint files: safetensors weights + a JSON config, checked by SHA-256.

A checkpoint directory holds, for each component ``NAME`` (``vae``, ``unet``,
``classifier``, ...):

* ``NAME.safetensors`` - the tensors (never pickled, so loading cannot run code);
* ``NAME.json``        - the config needed to rebuild the module;
* ``SHA256SUMS``       - one ``<sha256>  <file>`` line per file, as ``sha256sum``
  writes it, so ``sha256sum -c SHA256SUMS`` works from a shell too.

Writing is crash-safe and lives in :mod:`diffusion_lib.atomic`: a save replaces several
files and ``SHA256SUMS`` as one unit. This module adds what a component is: how its tensors
and config are written, checked against ``SHA256SUMS`` and loaded into a module.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .atomic import (SUMS, CheckpointError, commit_files, folder_lock, read_checksums, recover, recover_locked,
                     sha256_bytes)


# ------------------------------------------------------------------------------- run folders
def jsonl_bytes(records: list[dict]) -> bytes:
    """A training log's contents: one JSON line per record (epoch), keys sorted."""
    return "".join(json.dumps(r, sort_keys=True) + "\n" for r in records).encode()


def check_output_folder(out_dir: Path | str, component: str, what: str, overwrite: bool) -> Path:
    """Refuse, before any work, an ``--out`` that is a file or already holds a trained ``component``.

    :param what: the component in words ("autoencoder", "classifier") for the message
    :param overwrite: the user asked to replace an existing ``component``
    :raises CheckpointError: naming the folder and the fix
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise CheckpointError(f"--out {out_dir} is a file, not a folder; choose a folder (it is created if missing)")
    existing = [n for n in (f"{component}.safetensors", f"{component}.json") if (out_dir / n).exists()]
    if existing and not overwrite:
        raise CheckpointError(
            f"{out_dir} already holds a trained {what} ({', '.join(existing)}). Choose another --out folder, or "
            f"pass --overwrite to replace it."
        )
    return out_dir


# ----------------------------------------------------------------------------- checking and loading
def _missing_message(path: Path) -> str:
    return (
        f"{path} is missing. Restore it from where the folder came from (for the shipped checkpoints: "
        f"git checkout -- {path}), or train it anew (python -m diffusion_lib train / train-vae --out {path.parent})."
    )


def check_bytes(path: Path, data: bytes, table: dict[str, str]) -> None:
    """Raise :class:`CheckpointError` unless ``data`` (the bytes of ``path``) match ``table``."""
    sums = path.parent / SUMS
    if path.name not in table:
        where = f"is not listed in {sums}" if sums.is_file() else f"has no {sums} beside it"
        raise CheckpointError(
            f"{path} {where}; its integrity cannot be checked. If you trust the file, record it with: "
            f"python -m diffusion_lib checksums {path.parent}"
        )
    actual = sha256_bytes(data)
    if actual != table[path.name]:
        raise CheckpointError(
            f"{path} does not match its SHA-256 in {sums} "
            f"(expected {table[path.name][:12]}..., found {actual[:12]}...): the file is truncated, "
            f"corrupt or was changed. Restore it (for the shipped checkpoints: git checkout -- {path}) or retrain "
            f"it; if you changed it on purpose, record it with: python -m diffusion_lib checksums {path.parent}"
        )


def read_verified(paths: list[Path]) -> list[bytes]:
    """The bytes of ``paths`` (all in one folder), each checked against that folder's ``SHA256SUMS``.

    An interrupted save is finished or undone first (:func:`recover`). Each file is read
    once and the bytes that were checked are the bytes returned. A save by another
    process that lands while we read shows up as a mismatch: then we wait for its lock
    and read again, once.
    """
    directory = paths[0].parent
    if directory.is_dir():
        recover(directory)
    for attempt in (0, 1):
        try:
            table = read_checksums(directory)
            out = []
            for path in paths:
                if not path.is_file():
                    raise CheckpointError(_missing_message(path))
                data = path.read_bytes()
                check_bytes(path, data, table)
                out.append(data)
            return out
        except CheckpointError:
            if attempt == 1 or not os.access(directory, os.W_OK):
                raise
            with folder_lock(directory):  # waits for a save in progress
                recover_locked(directory)
    raise AssertionError("unreachable")


def verify_file(path: Path) -> None:
    """Raise :class:`CheckpointError` unless ``path`` exists and matches ``SHA256SUMS``."""
    read_verified([Path(path)])


def component_files(
    name: str,
    tensors: dict[str, torch.Tensor] | torch.nn.Module,
    config: dict[str, Any],
    *,
    dtype: torch.dtype | None = None,
) -> dict[str, bytes]:
    """The bytes of ``NAME.safetensors`` and ``NAME.json``, ready for :func:`commit_files`.

    :param tensors: a module (its ``state_dict``) or a flat ``{name: tensor}`` dict
    :param config: JSON-serialisable dict from which the module can be rebuilt
    :param dtype: store floating tensors in this dtype (e.g. ``torch.float16`` for
        small ladder snapshots); the loader casts back to the module's dtype
    """
    state = tensors.state_dict() if isinstance(tensors, torch.nn.Module) else tensors
    out = {}
    for key, value in state.items():
        value = value.detach().to("cpu")
        if dtype is not None and value.is_floating_point():
            value = value.to(dtype)
        out[key] = value.contiguous()
    # one metadata key only: a multi-key header is written in varying order, and the same
    # weights must give the same bytes (and SHA-256) every time they are saved
    return {
        f"{name}.safetensors": st_save(out, metadata={"format": "pt"}),
        f"{name}.json": (json.dumps(config, indent=2, sort_keys=True) + "\n").encode(),
    }


def save_component(
    directory: Path | str,
    name: str,
    tensors: dict[str, torch.Tensor] | torch.nn.Module,
    config: dict[str, Any],
    *,
    dtype: torch.dtype | None = None,
) -> Path:
    """Save ``NAME.safetensors`` + ``NAME.json`` and record them in ``SHA256SUMS``, as one unit.

    The arguments are those of :func:`component_files`.

    :returns: the path of the weights file
    """
    commit_files(directory, component_files(name, tensors, config, dtype=dtype))
    return Path(directory) / f"{name}.safetensors"


def load_component(directory: Path | str, name: str, *, verify: bool = True) -> tuple[dict[str, torch.Tensor], dict]:
    """Load ``NAME.safetensors`` and ``NAME.json``, checking both against ``SHA256SUMS``.

    :returns: ``(tensors, config)``; ``config`` is a JSON object (a dict)
    :raises CheckpointError: naming the file and the fix, for a missing, truncated,
        tampered or unreadable file
    """
    directory = Path(directory)
    weights, config_file = directory / f"{name}.safetensors", directory / f"{name}.json"
    if verify:
        weight_bytes, config_bytes = read_verified([weights, config_file])
    else:
        for path in (weights, config_file):
            if not path.is_file():
                raise CheckpointError(_missing_message(path))
        weight_bytes, config_bytes = weights.read_bytes(), config_file.read_bytes()
    try:
        tensors = st_load(weight_bytes)
    except (SafetensorError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{weights} cannot be read as safetensors ({err}). Restore or retrain it.") from err
    try:
        config = json.loads(config_bytes.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{config_file} is not valid JSON ({err}). Restore or retrain it.") from err
    if not isinstance(config, dict):
        raise CheckpointError(
            f"{config_file} holds a JSON {type(config).__name__}, not the object of settings a config is. "
            "Restore or retrain it."
        )
    return tensors, config


def config_from_file(config_cls: type, config: dict, source: Path, what: str) -> Any:
    """``config_cls.from_dict(config)``; a config that does not fit is a :class:`CheckpointError` naming
    ``source`` (the JSON file) and the fix. ``what`` names the model in words ("autoencoder")."""
    try:
        return config_cls.from_dict(config)
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{source} is not a valid {what} config ({err}). Restore it or retrain the {what}.") \
            from err


def load_into(module: torch.nn.Module, tensors: dict[str, torch.Tensor], source: Path | str) -> torch.nn.Module:
    """Copy ``tensors`` into ``module``, casting dtypes; a mismatch names ``source``.

    Stricter than ``load_state_dict``'s message: it says which file does not
    fit and what to do, and lists (a few of) the missing, unexpected and
    wrongly shaped keys.
    """
    own = module.state_dict()
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    wrong = sorted(k for k in set(own) & set(tensors) if own[k].shape != tensors[k].shape)
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
        if wrong:
            k = wrong[0]
            parts.append(f"{len(wrong)} shape mismatches, e.g. {k}: file {tuple(tensors[k].shape)} vs model {tuple(own[k].shape)}")
        raise CheckpointError(
            f"{source} does not fit the {type(module).__name__} built from its config ({'; '.join(parts)}). "
            "The weights and the JSON config come from different models: restore both from the same run, "
            "or retrain."
        )
    module.load_state_dict({k: v.to(own[k].dtype) for k, v in tensors.items()})
    return module
