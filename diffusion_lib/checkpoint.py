"""Checkpoint files: safetensors weights + a JSON config, checked by SHA-256.

A checkpoint directory holds, for each component ``NAME`` (``vae``, ``unet``,
``classifier``, ...):

* ``NAME.safetensors`` - the tensors (never pickled, so loading cannot run code);
* ``NAME.json``        - the config needed to rebuild the module;
* ``SHA256SUMS``       - one ``<sha256>  <file>`` line per file, as ``sha256sum``
  writes it, so ``sha256sum -c SHA256SUMS`` works from a shell too.

Every write goes to a temporary file in the same folder and is then renamed
over the target (``os.replace`` is atomic on POSIX), so an interrupted save
leaves the previous complete file, never half of a new one.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

SUMS = "SHA256SUMS"


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, corrupt, tampered with or does not fit the model."""


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old or the new file, never a mix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates the file owner-only; shipped files must be readable by everyone
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path | str, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def sha256_file(path: Path | str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_checksums(directory: Path | str) -> dict[str, str]:
    """``{file name: sha256}`` from ``directory/SHA256SUMS`` (empty if absent)."""
    sums = Path(directory) / SUMS
    if not sums.is_file():
        return {}
    table = {}
    for line in sums.read_text().splitlines():
        if line.strip():
            digest, name = line.split(maxsplit=1)
            table[name.lstrip("*")] = digest
    return table


def update_checksums(directory: Path | str, names: list[str]) -> None:
    """Record the current SHA-256 of ``names`` in ``SHA256SUMS``, keeping other entries."""
    directory = Path(directory)
    table = read_checksums(directory)
    for name in names:
        table[name] = sha256_file(directory / name)
    lines = "".join(f"{table[n]}  {n}\n" for n in sorted(table))
    atomic_write_text(directory / SUMS, lines)


def verify_file(path: Path) -> None:
    """Raise :class:`CheckpointError` unless ``path`` exists and matches ``SHA256SUMS``."""
    if not path.is_file():
        raise CheckpointError(
            f"{path} is missing. Train it (python -m diffusion_lib train / train-vae --out {path.parent}) "
            f"or restore the file from the repository (git checkout -- {path})."
        )
    table = read_checksums(path.parent)
    if path.name not in table:
        raise CheckpointError(
            f"{path} is not listed in {path.parent / SUMS}; its integrity cannot be checked. "
            f"If you trust the file, record it with: python -m diffusion_lib checksums {path.parent}"
        )
    actual = sha256_file(path)
    if actual != table[path.name]:
        raise CheckpointError(
            f"{path} does not match its SHA-256 in {path.parent / SUMS} "
            f"(expected {table[path.name][:12]}..., found {actual[:12]}...): the file is truncated, "
            f"corrupt or was changed. Restore it (git checkout -- {path}) or retrain it; if you changed it "
            f"on purpose, record it with: python -m diffusion_lib checksums {path.parent}"
        )


def save_component(
    directory: Path | str,
    name: str,
    tensors: dict[str, torch.Tensor] | torch.nn.Module,
    config: dict[str, Any],
    *,
    dtype: torch.dtype | None = None,
) -> Path:
    """Save ``NAME.safetensors`` + ``NAME.json`` atomically and update ``SHA256SUMS``.

    :param tensors: a module (its ``state_dict``) or a flat ``{name: tensor}`` dict
    :param config: JSON-serialisable dict from which the module can be rebuilt
    :param dtype: store floating tensors in this dtype (e.g. ``torch.float16`` for
        small ladder snapshots); the loader casts back to the module's dtype
    :returns: the path of the weights file
    """
    directory = Path(directory)
    state = tensors.state_dict() if isinstance(tensors, torch.nn.Module) else tensors
    out = {}
    for key, value in state.items():
        value = value.detach().to("cpu")
        if dtype is not None and value.is_floating_point():
            value = value.to(dtype)
        out[key] = value.contiguous()
    weights = directory / f"{name}.safetensors"
    # one metadata key only: a multi-key header is written in varying order, and the same
    # weights must give the same bytes (and SHA-256) every time they are saved
    atomic_write_bytes(weights, st_save(out, metadata={"format": "pt"}))
    atomic_write_text(directory / f"{name}.json", json.dumps(config, indent=2, sort_keys=True) + "\n")
    update_checksums(directory, [weights.name, f"{name}.json"])
    return weights


def load_component(directory: Path | str, name: str, *, verify: bool = True) -> tuple[dict[str, torch.Tensor], dict]:
    """Load ``NAME.safetensors`` and ``NAME.json``, checking both against ``SHA256SUMS``.

    :returns: ``(tensors, config)``
    :raises CheckpointError: naming the file and the fix, for a missing, truncated,
        tampered or unreadable file
    """
    directory = Path(directory)
    weights, config_file = directory / f"{name}.safetensors", directory / f"{name}.json"
    for path in (weights, config_file):
        if verify:
            verify_file(path)
        elif not path.is_file():
            raise CheckpointError(f"{path} is missing.")
    try:
        tensors = st_load(weights.read_bytes())
    except (SafetensorError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{weights} cannot be read as safetensors ({err}). Restore or retrain it.") from err
    try:
        config = json.loads(config_file.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{config_file} is not valid JSON ({err}). Restore or retrain it.") from err
    return tensors, config


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
