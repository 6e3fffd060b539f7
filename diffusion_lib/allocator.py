"""Keep freed host memory in the process, so that a training step does not wait on page faults.

A training step allocates and frees the same few hundred tensors every step, the largest a few
MB. glibc's ``malloc`` serves a large block with ``mmap`` and returns it to the system when freed
(or trims the top of its heap), so the next step gets fresh pages from the kernel and the first
write to each 4 KB page stops the program (a page fault; microseconds each, more in a virtual
machine). A step of the default denoiser at batch 256 took 0 to 2,000 page faults from one run to
the next, depending on how the heap happened to be laid out; a run with 2,000 was 1.4x slower.
:func:`keep_freed_memory` asks glibc to keep what it frees for reuse, as PyTorch's CUDA caching
allocator does on the GPU: large blocks come from the heap and the heap is never trimmed. The
numbers computed are the same; the process keeps its peak memory until it exits.

The denoiser's ``Trainer`` and ``python -m diffusion_lib bench`` call it. It does nothing where
the C library is not glibc (macOS, Windows, musl).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

# mallopt() parameters of glibc's <malloc.h>
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
# blocks up to this size come from the heap (glibc accepts at most 32 MB on 64-bit systems); the
# trainer's largest per-step tensors are a few MB, the latent cache of all images is larger and stays
MMAP_THRESHOLD = 32 * 2**20
# free memory at the top of the heap is kept up to this much (instead of glibc's 128 KB)
TRIM_THRESHOLD = 2**30
# grow the heap by this much beyond each request, so that it grows rarely
TOP_PAD = 64 * 2**20

_kept = False


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed memory for reuse (process-wide, once); returns whether it is in effect.

    :returns: False where the C library is not glibc or refused a setting
    """
    global _kept
    if _kept:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt  # glibc only: musl has no mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    settings = ((_M_MMAP_THRESHOLD, MMAP_THRESHOLD), (_M_TRIM_THRESHOLD, TRIM_THRESHOLD), (_M_TOP_PAD, TOP_PAD))
    # mallopt returns 1 on success, 0 on error
    _kept = all(mallopt(param, value) == 1 for param, value in settings)
    return _kept
