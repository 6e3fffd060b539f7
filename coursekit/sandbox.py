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
an address-space limit per process (a runaway allocation fails with ``MemoryError``), and a
wall-clock limit after which the whole sandbox is killed.

Where bubblewrap is missing or cannot start (some containers forbid namespaces), commands
still run with the limits but without the isolation; :func:`probe` says which, and the
grading report prints it in its first line.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
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
    stdout: str
    stderr: str


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


def bwrap_command(command: list[str], work: Path, hide: list[Path], repo: Path = REPO) -> list[str]:
    """``command`` wrapped in bubblewrap: only ``work`` writable, ``hide`` and most of ``repo`` invisible."""
    args = ["bwrap", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp"]
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


def limited(command: list[str], memory_gb: float) -> list[str]:
    """``command`` under an address-space limit of ``memory_gb`` per process (util-linux' prlimit)."""
    limit = int(memory_gb * 2**30)
    return ["prlimit", f"--as={limit}", "--core=0", "--", *command]


def run(command: list[str], work: Path, sandbox: Sandbox, timeout_s: float, memory_gb: float,
        hide: list[Path] = (), env: dict[str, str] | None = None) -> Completed:
    """Run ``command`` with ``work`` as its working (and only writable) folder."""
    work = Path(work).resolve()
    full = bwrap_command(list(command), work, list(hide)) if sandbox.isolated else list(command)
    full = limited(full, memory_gb)
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("JPY_", "JUPYTER_"))}
    environment.update({"HOME": str(work), "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1",
                        "OMP_NUM_THREADS": "1", "MPLBACKEND": "module://matplotlib_inline.backend_inline"})
    environment.update(env or {})
    start = time.perf_counter()
    proc = subprocess.Popen(full, cwd=work, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True, errors="replace", start_new_session=True)
    timed_out = False
    try:
        stdout, stderr = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        timed_out = True
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        stdout, stderr = proc.communicate()
    return Completed(None if timed_out else proc.returncode, timed_out, time.perf_counter() - start,
                     stdout, stderr)
