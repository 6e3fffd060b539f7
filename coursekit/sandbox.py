"""Running untrusted student code: an OS-level sandbox (bubblewrap) with time and memory limits.

Inside the sandbox a command sees the whole file system read-only, except

* its own work folder, the only place it can write;
* a private, empty ``/tmp``;
* the folders it must not see at all (the course repository's reference notebooks, the
  other submissions, the grading output), which are replaced by empty folders. Of the
  repository only the code, the weights, the virtual environment and the PDF template
  stay visible, read-only.

It has no network (loopback only, which the Jupyter kernel needs), no capabilities, its own
PID namespace (when the command ends or is killed, every process it started dies with it),
a minimal environment (none of the grader's variables), and :class:`Limits`: an address-space
limit per process (a runaway allocation fails with ``MemoryError``), a file-size limit, a
``/tmp`` of bounded size, a watchdog that kills it for too many processes or too much
written in its folder, and a wall-clock limit after which the whole sandbox is killed.

Where bubblewrap is missing or cannot start (some containers forbid namespaces), commands
still run with the limits but without the isolation; :func:`probe` says which, and the
grading report prints it in its first line.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from . import REPO

# what student code may read of the kit (read-only); everything else of the repository is hidden
VISIBLE_IN_REPO = ("diffusion_lib", "coursekit", "checkpoints", "answers/templates", "pyproject.toml")


@dataclass
class Sandbox:
    """How commands will run: ``isolated`` is True when bubblewrap works here."""

    isolated: bool
    description: str


@dataclass
class Completed:
    returncode: int | None  # None: killed at the time limit
    timed_out: bool
    seconds: float
    stdout: str  # the last 64 kB
    stderr: str  # the last 64 kB
    limit: str | None = None  # the limit it was killed for, in words (None: it was not)


def probe() -> Sandbox:
    """Check once whether bubblewrap can start a sandbox on this machine."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return Sandbox(False, "NO SANDBOX: bubblewrap (bwrap) is not installed (Debian: apt-get install bubblewrap); "
                              "student code ran with time and memory limits only, NOT isolated")
    try:
        done = subprocess.run([bwrap, "--ro-bind", "/", "/", "--unshare-all", "--die-with-parent", "--cap-drop",
                               "ALL", "true"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as err:
        return Sandbox(False, f"NO SANDBOX: bubblewrap could not start ({err}); student code ran with time and "
                              "memory limits only, NOT isolated")
    if done.returncode != 0:
        return Sandbox(False, f"NO SANDBOX: bubblewrap could not start ({done.stderr.strip() or done.returncode}); "
                              "student code ran with time and memory limits only, NOT isolated")
    return Sandbox(True, "sandbox: bubblewrap (read-only file system, private /tmp, no network, no capabilities, "
                         "reference answers and other submissions hidden)")


def _existing(paths) -> list[Path]:
    return [Path(p).resolve() for p in paths if p is not None and Path(p).exists()]


def bwrap_command(command: list[str], work: Path, hide: list[Path], repo: Path = REPO,
                  tmp_bytes: int = 2**31) -> list[str]:
    """``command`` wrapped in bubblewrap: only ``work`` and a ``/tmp`` of ``tmp_bytes`` writable, ``hide`` and
    most of ``repo`` invisible."""
    args = ["bwrap", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--size", str(tmp_bytes),
            "--tmpfs", "/tmp"]
    tmp = Path("/tmp").resolve()
    masked = [p for p in _existing([*hide, repo]) if p != tmp and tmp not in p.parents]  # /tmp is private already
    outer = [p for p in masked if not any(q in p.parents for q in masked)]
    visible = [repo / name for name in VISIBLE_IN_REPO if (repo / name).exists()]
    prefix = Path(sys.prefix).resolve()
    if repo in prefix.parents:  # a virtual environment inside the repository
        visible.append(prefix)
    # a hidden folder inside a visible one (e.g. submissions kept in checkpoints/) is hidden again after the bind
    inner = [p for p in masked if p not in outer and any(v == p or v in p.parents for v in visible)]
    for path in outer:
        args += ["--tmpfs", str(path)]
    for path in visible:
        args += ["--ro-bind", str(path), str(path)]
    for path in inner:
        args += ["--tmpfs", str(path)]
    for path in outer + inner:  # empty and read-only from now on
        args += ["--remount-ro", str(path)]
    work = work.resolve()
    args += ["--bind", str(work), str(work), "--chdir", str(work),
             "--unshare-all", "--die-with-parent", "--new-session", "--cap-drop", "ALL", "--"]
    return args + command


@dataclass
class Limits:
    """What one sandboxed command may use. Every value must be > 0 (:meth:`checked`)."""

    timeout_s: float = 600.0  # wall clock for the whole command
    memory_gb: float = 8.0  # address space per process
    disk_gb: float = 2.0  # written in its folder, in /tmp (memory), and in any one file
    processes: int = 64  # alive at once in its process tree

    def checked(self) -> "Limits":
        """Refuse a limit that would be off or meaningless (0, negative, NaN, inf), naming the option."""
        for option, value in (("--timeout", self.timeout_s), ("--memory-gb", self.memory_gb),
                              ("--disk-gb", self.disk_gb), ("--max-processes", self.processes)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"{option} must be a finite number > 0, got {value!r}: a limit of 0 or less would "
                                 "either fail every student or switch the limit off")
        if self.processes < 4:
            raise ValueError(f"--max-processes must be >= 4 (papermill, its kernel and their helpers), got "
                             f"{self.processes}")
        return self


def limited(command: list[str], limits: Limits) -> list[str]:
    """``command`` under per-process limits (util-linux' prlimit): address space, file size, no core dumps,
    and, for a user other than root (for whom the kernel ignores it), a cap on processes."""
    args = ["prlimit", f"--as={int(limits.memory_gb * 2**30)}", f"--fsize={int(limits.disk_gb * 2**30)}", "--core=0"]
    if os.geteuid() != 0:
        # RLIMIT_NPROC counts every task of the user, so it is a backstop above what runs now;
        # the watchdog enforces the real limit on the command's own tree
        args.append(f"--nproc={_tasks_of_user() + 16 * limits.processes}")
    return [*args, "--", *command]


def _tasks_of_user() -> int:
    uid, total = os.getuid(), 0
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            text = status.read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
        if int(fields.get("Uid", "-1 0").split()[0]) == uid:
            total += int(fields.get("Threads", "1"))
    return total


def process_tree(root: int) -> list[int]:
    """``root`` and every process descended from it (read from /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split after the last ')'
            text = stat.read_text()
            ppid = int(text[text.rindex(")") + 2 :].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def folder_bytes(folder: Path) -> int:
    """Bytes a folder takes on disk (allocated blocks, so sparse files count as what they use)."""
    total = 0
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames + filenames:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
            except OSError:
                pass
    return total


def minimal_environment(work: Path) -> dict[str, str]:
    """What a student's run sees of the environment: none of the grader's own variables."""
    return {
        "PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin",
        "HOME": str(work),
        "TMPDIR": "/tmp",
        "LANG": "C.UTF-8",
        "PYTHONPATH": str(REPO),
        "PYTHONDONTWRITEBYTECODE": "1",
        "OMP_NUM_THREADS": "1",
        "MPLBACKEND": "module://matplotlib_inline.backend_inline",
        # quiet the kernel's start-up warnings, which would otherwise fill the error column
        "JUPYTER_PLATFORM_DIRS": "1",
        "PYDEVD_DISABLE_FILE_VALIDATION": "1",
    }


def _tail_of(path: Path, limit: int = 64 * 1024) -> str:
    with open(path, "rb") as f:
        f.seek(max(0, os.fstat(f.fileno()).st_size - limit))
        return f.read().decode("utf-8", errors="replace")


def run(command: list[str], work: Path, sandbox: Sandbox, limits: Limits, hide: list[Path] = (),
        env: dict[str, str] | None = None) -> Completed:
    """Run ``command`` with ``work`` as its working (and only writable) folder, under ``limits``.

    A watchdog looks at the command every quarter of a second and kills its whole process
    group when the tree holds more than ``limits.processes`` processes or ``work`` more than
    ``limits.disk_gb``; ``Completed.limit`` then says which. When the command ends, whatever
    it left running is killed (in the sandbox its PID namespace does that already).
    """
    limits = limits.checked()
    work = Path(work).resolve()
    full = bwrap_command(list(command), work, list(hide), tmp_bytes=int(limits.disk_gb * 2**30)) \
        if sandbox.isolated else list(command)
    full = limited(full, limits)
    environment = {**minimal_environment(work), **(env or {})}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="coursekit-run-") as logs:
        out_path, err_path = Path(logs) / "stdout", Path(logs) / "stderr"
        with open(out_path, "wb") as out_f, open(err_path, "wb") as err_f:
            proc = subprocess.Popen(full, cwd=work, env=environment, stdout=out_f, stderr=err_f,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        limit, timed_out = None, False
        while proc.poll() is None:
            if time.perf_counter() - start > limits.timeout_s:
                timed_out = True
            elif len(process_tree(proc.pid)) > limits.processes + 3:  # + bubblewrap's own processes
                limit = f"started more than {limits.processes} processes (--max-processes)"
            elif folder_bytes(work) > limits.disk_gb * 2**30:
                limit = f"wrote more than {limits.disk_gb:g} GB in its folder (--disk-gb)"
            if timed_out or limit:
                _kill_group(proc.pid)
                proc.wait()
                break
            time.sleep(0.25)
        _kill_group(proc.pid)  # anything it left behind
        stdout, stderr = _tail_of(out_path), _tail_of(err_path)
    return Completed(None if timed_out else proc.returncode, timed_out, time.perf_counter() - start,
                     stdout, stderr, limit)


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
