"""Checkpoint files: safetensors weights + a JSON config, checked by SHA-256.

A checkpoint directory holds, for each component ``NAME`` (``vae``, ``unet``,
``classifier``, ...):

* ``NAME.safetensors`` - the tensors (never pickled, so loading cannot run code);
* ``NAME.json``        - the config needed to rebuild the module;
* ``SHA256SUMS``       - one ``<sha256>  <file>`` line per file, as ``sha256sum``
  writes it, so ``sha256sum -c SHA256SUMS`` works from a shell too.

Saving is crash-safe as a whole, not only file by file. A save (:func:`commit_files`)
replaces several files and ``SHA256SUMS`` together, in three steps:

1. every new file is written to a hidden staging name ``.FILE.staged`` and synced;
2. the new ``SHA256SUMS`` is written as ``.SHA256SUMS.next`` (the journal): from the
   moment it exists the save is decided, because every new file is already complete;
3. each staged file is renamed over its target, then the journal over ``SHA256SUMS``.

A process killed at any moment leaves either a journal (the save is finished by
renaming what is left) or none (the staged files are deleted and the old files,
still in place, match the old ``SHA256SUMS``). :func:`recover` does that, and every
load calls it first, so a folder always loads its last complete save. Writers and
recovery hold an exclusive ``flock`` on ``.SHA256SUMS.lock``, so a reader never
finishes a save that another process is still making.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

SUMS = "SHA256SUMS"
JOURNAL = ".SHA256SUMS.next"  # the next SHA256SUMS of a save in progress: its presence commits the save
LOCK = ".SHA256SUMS.lock"
STAGED_SUFFIX = ".staged"  # ".FILE.staged": a new FILE, written but not yet in place


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, corrupt, tampered with or does not fit the model."""


def write_point(label: str) -> None:
    """Called after every step of a save that changes the folder; does nothing.

    The crash tests replace it to kill the process at each step in turn (fault injection).
    """


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    # shipped files must be readable by everyone
    os.chmod(path, 0o644)


def _sync_folder(directory: Path) -> None:
    """Make the renames in ``directory`` durable (a power cut after a rename keeps it)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old or the new file, never a mix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        _write_synced(Path(tmp), data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path | str, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path | str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def parse_checksums(text: str, source: Path | str) -> dict[str, str]:
    """``{file name: sha256}`` from the text of a ``SHA256SUMS`` file.

    :raises CheckpointError: naming ``source`` and the line, for a line that is not
        ``<64 hex digits>  <file name>`` (a merge conflict, an edit gone wrong)
    """
    table = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=1)
        digest = parts[0].lower()
        if len(parts) != 2 or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise CheckpointError(
                f"{source} line {number} is not '<sha256>  <file>' (found {line[:50]!r}). Restore the file "
                f"(git checkout -- {source}) or record the folder's files anew with: "
                f"python -m diffusion_lib checksums {Path(source).parent}"
            )
        table[parts[1].strip().lstrip("*")] = digest
    return table


def sums_text(table: dict[str, str]) -> str:
    return "".join(f"{table[n]}  {n}\n" for n in sorted(table))


def read_checksums(directory: Path | str) -> dict[str, str]:
    """``{file name: sha256}`` from ``directory/SHA256SUMS`` (empty if absent)."""
    sums = Path(directory) / SUMS
    if not sums.is_file():
        return {}
    return parse_checksums(sums.read_text(errors="replace"), sums)


# ----------------------------------------------------------------------------- saving as one unit
@contextmanager
def folder_lock(directory: Path) -> Iterator[None]:
    """An exclusive lock on ``directory``'s checkpoint files, held by one process at a time.

    ``flock`` on ``.SHA256SUMS.lock``, released by the kernel if the process dies. The
    holder deletes the file when it is done, so nothing is left in the folder; a waiter
    that then holds a lock on the deleted file notices (another inode at the path, or
    none) and locks again.
    """
    path = directory / LOCK
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        yield
    finally:
        path.unlink(missing_ok=True)
        os.close(fd)  # closing releases the lock


def _staged_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.glob(f".*{STAGED_SUFFIX}") if p.is_file())


def _finish(directory: Path) -> None:
    """Step 3 of a save whose journal exists: put every staged file in place, then the sums."""
    for staged in _staged_files(directory):
        os.replace(staged, directory / staged.name[1 : -len(STAGED_SUFFIX)])
        write_point(f"placed {staged.name}")
    os.replace(directory / JOURNAL, directory / SUMS)
    _sync_folder(directory)
    write_point("sums")


def _recover_locked(directory: Path) -> str | None:
    if (directory / JOURNAL).is_file():
        _finish(directory)
        return "finished"
    leftovers = _staged_files(directory) + [directory / (JOURNAL + STAGED_SUFFIX)]
    if any(p.exists() for p in leftovers):
        for path in leftovers:
            path.unlink(missing_ok=True)
        return "discarded"
    return None


def recover(directory: Path | str) -> str | None:
    """Finish or undo a save that a crash interrupted in ``directory``.

    :returns: ``"finished"`` (the save had reached its journal: its files are now in
        place), ``"discarded"`` (it had not: its staged files are deleted, the previous
        files stand) or None (nothing was interrupted)
    :raises CheckpointError: the folder holds an interrupted save but cannot be written
    """
    directory = Path(directory)
    # a lock file left by a killed writer is taken (waiting, if its writer is alive) and removed
    traces = [directory / JOURNAL, directory / (JOURNAL + STAGED_SUFFIX), directory / LOCK]
    if not any(p.exists() for p in traces) and not _staged_files(directory):
        return None
    try:
        with folder_lock(directory):
            outcome = _recover_locked(directory)
    except OSError as err:
        raise CheckpointError(
            f"{directory} holds a save that was interrupted (a crash or a kill) and cannot be completed here "
            f"({err}). Run the command again where {directory} is writable."
        ) from err
    if outcome:
        what = ("its files were complete and are now in place" if outcome == "finished"
                else "it had not finished, so the previous files were kept")
        print(f"note: {directory} held a save that was interrupted; {what}.", file=sys.stderr)
    return outcome


def commit_files(directory: Path | str, files: dict[str, bytes], unlisted: tuple[str, ...] = ()) -> None:
    """Replace ``files`` (``{name: bytes}``) in ``directory`` and record them in ``SHA256SUMS``, as one unit.

    A crash at any moment leaves either every old file or every new one, each matching
    ``SHA256SUMS`` once :func:`recover` has run (see the module docstring).

    :param unlisted: names among ``files`` that are replaced with the rest but not
        recorded in ``SHA256SUMS`` (a log)
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with folder_lock(directory):
        _recover_locked(directory)
        table = read_checksums(directory)
        written: list[Path] = []
        try:
            # 1. every new file complete and synced under its staging name
            for name, data in files.items():
                staged = directory / f".{name}{STAGED_SUFFIX}"
                written.append(staged)
                _write_synced(staged, data)
                write_point(f"staged {name}")
                if name not in unlisted:
                    table[name] = sha256_bytes(data)
            # 2. the journal: once it is in place, the save is decided
            journal_tmp = directory / (JOURNAL + STAGED_SUFFIX)
            written.append(journal_tmp)
            _write_synced(journal_tmp, sums_text(table).encode())
            write_point("journal written")
            os.replace(journal_tmp, directory / JOURNAL)
        except BaseException:
            for path in written:
                path.unlink(missing_ok=True)
            raise
        write_point("journal")
        # 3. everything in place
        _finish(directory)


def update_checksums(directory: Path | str, names: list[str]) -> None:
    """Record the current SHA-256 of ``names`` in ``SHA256SUMS``, keeping other entries."""
    directory = Path(directory)
    with folder_lock(directory):
        _recover_locked(directory)
        table = read_checksums(directory)
        for name in names:
            table[name] = sha256_file(directory / name)
        atomic_write_text(directory / SUMS, sums_text(table))


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
                _recover_locked(directory)
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
