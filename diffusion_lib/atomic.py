"""Crash-safe writes: files replaced together with their ``SHA256SUMS``, as one unit.

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
import os
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

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


def recover_locked(directory: Path) -> str | None:
    """:func:`recover` for a caller that already holds the folder's lock."""
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
            outcome = recover_locked(directory)
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
        recover_locked(directory)
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
        recover_locked(directory)
        table = read_checksums(directory)
        for name in names:
            table[name] = sha256_file(directory / name)
        atomic_write_text(directory / SUMS, sums_text(table))
