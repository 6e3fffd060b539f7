"""Build and load the fused CPU kernels of ``kernels.c``, or say why they cannot run here.

The kernels (attention on short sequences, GroupNorm + SiLU, GEGLU) are plain C with OpenMP.
On first use the machine's C compiler builds them for this CPU (``-O3 -march=native``, about a
second) into a cache folder, and ``ctypes`` loads the library: no Python headers, no PyTorch
build tools. Without a compiler that can (Windows laptops usually have none, nor has macOS's
clang OpenMP), :func:`library` returns ``None`` and :func:`unavailable_reason` says why; the
model then runs the same formulas as PyTorch ops (``fused.py``), only slower.

The cache folder is ``$DIFFUSION_KERNEL_CACHE`` if set, else ``$XDG_CACHE_HOME/diffusion_lib``
(``~/.cache/diffusion_lib``). A build is named by a hash of the source, the compiler's version,
the flags and the CPU's model and features, so a home folder shared between machines never loads
a library built for another CPU. It is written under a temporary name and renamed into place:
two processes building at once both succeed, and an interrupted build leaves no half-written
library. Nothing else in the folder is touched.

``DIFFUSION_FUSED_KERNELS=0`` turns the kernels off (the PyTorch ops run instead).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from functools import lru_cache
from pathlib import Path

SOURCE = Path(__file__).with_name("kernels.c")
# compiled with -ffast-math (expf and erff vectorise) but linked without it: linking with it would add
# crtfastmath, which sets flush-to-zero for the whole process when the library loads. 512-bit vectors where
# the CPU has them (gcc's tuning prefers 256 bits on several that do): GroupNorm + SiLU ran 1.2-1.3x faster.
X86 = platform.machine().lower() in ("x86_64", "amd64")
FLAGS = ("-O3", "-march=native", *(("-mprefer-vector-width=512",) if X86 else ()), "-ffast-math", "-fopenmp", "-fPIC")
LINK_FLAGS = ("-shared", "-fopenmp")
BUILD_TIMEOUT_S = 120

# pointers are passed as addresses (``tensor.data_ptr()``): the cheapest call ctypes makes
_F, _I64, _INT = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
# the C signatures: pointers first (float, or int64 for an index), then sizes (int64), scalars, and the thread count
SIGNATURES = {
    "attention_forward": [_F] * 6 + [_I64] * 7 + [ctypes.c_float, _INT],
    "attention_backward": [_F] * 9 + [_I64] * 7 + [ctypes.c_float, _INT],
    "group_norm_forward": [_F] * 7 + [_I64] * 4 + [ctypes.c_float, _INT, _INT],
    "group_norm_backward": [_F] * 11 + [_I64] * 4 + [_INT, _INT],
    "geglu_forward": [_F] * 2 + [_I64] * 2 + [_INT],
    "geglu_backward": [_F] * 3 + [_I64] * 2 + [_INT],
}

_reason: str | None = None


def cache_folder() -> Path:
    """Where built kernels are kept (see the module docstring).

    :raises RuntimeError: no absolute folder can be named (no home folder, a relative variable)
    """
    if os.environ.get("DIFFUSION_KERNEL_CACHE"):
        folder = Path(os.environ["DIFFUSION_KERNEL_CACHE"])
    else:
        folder = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "diffusion_lib"
    if not folder.is_absolute():  # never a folder relative to wherever the program was started
        raise RuntimeError(f"no absolute folder for the built kernels ({folder}); set DIFFUSION_KERNEL_CACHE")
    return folder


def _compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


def _cpu_identity() -> str:
    """The CPU's model and feature flags (Linux), so a build for one CPU is never loaded on another."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor()
    wanted = ("model name", "flags", "Features", "CPU part")
    return "\n".join(sorted({line for line in lines if line.split(":")[0].strip() in wanted}))


def _build(compiler: str, target: Path) -> None:
    """Compile ``kernels.c`` into ``target``, atomically; raises ``RuntimeError`` with the compiler's words."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        for command in ([compiler, *FLAGS, "-c", "-o", f"{tmp}.o", str(SOURCE)],
                        [compiler, *LINK_FLAGS, "-o", tmp, f"{tmp}.o", "-lm"]):
            done = subprocess.run(command, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
            if done.returncode != 0:
                raise RuntimeError(f"{compiler} could not build {SOURCE.name}: {done.stderr.strip()[-600:]}")
        os.chmod(tmp, 0o755)
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)
        Path(f"{tmp}.o").unlink(missing_ok=True)


@lru_cache(maxsize=None)
def library() -> ctypes.CDLL | None:
    """The loaded kernels, built first if needed; ``None`` (and :func:`unavailable_reason`) where they cannot be."""
    global _reason
    if os.environ.get("DIFFUSION_FUSED_KERNELS", "1") == "0":
        _reason = "turned off by DIFFUSION_FUSED_KERNELS=0"
        return None
    if not sys.platform.startswith("linux"):
        _reason = f"built only on Linux (this is {sys.platform})"
        return None
    compiler = _compiler()
    if compiler is None:
        _reason = "no C compiler found (cc or gcc; or set CC)"
        return None
    # torch first: its OpenMP runtime (libgomp.so.1) is then the one the kernels bind to, one pool of threads
    import torch  # noqa: F401

    try:
        version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30).stdout
        key = hashlib.sha256("\0".join([SOURCE.read_text(), version, " ".join(FLAGS + LINK_FLAGS), platform.machine(),
                                        _cpu_identity()]).encode()).hexdigest()[:16]
        target = cache_folder() / f"kernels-{key}.so"
        if not target.exists():
            _build(compiler, target)
        lib = ctypes.CDLL(str(target))
    except (OSError, RuntimeError, subprocess.SubprocessError) as error:
        _reason = f"the fused CPU kernels could not be built or loaded: {error}"
        return None
    for name, argtypes in SIGNATURES.items():
        function = getattr(lib, name)
        function.argtypes, function.restype = argtypes, None
    _reason = None
    return lib


def unavailable_reason() -> str | None:
    """Why :func:`library` returned ``None``; ``None`` when the kernels are loaded (or not yet asked for)."""
    return _reason

