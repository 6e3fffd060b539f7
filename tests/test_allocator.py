"""Freed host memory is kept for reuse: a step's fresh tensors cost no page faults.

Each check runs in a fresh Python process, since the setting is process-wide and one-way.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

# a training step's pattern: the forward pass piles up activations (1-8 MB each, ~90 MB at the
# peak) beside short-lived temporaries, the backward pass frees them in reverse; the page faults
# of the last steps are counted (the first ones grow the heap)
SCRIPT = textwrap.dedent("""
    import resource, sys, torch
    from diffusion_lib.allocator import keep_freed_memory
    kept = keep_freed_memory() if sys.argv[1] == "keep" else False
    sizes = [1, 8, 2, 4, 8, 1, 2, 4, 4, 2, 8, 1] * 2  # MB
    def step():
        alive = []
        for n in sizes:  # forward
            alive.append(torch.ones(n * 2**18))
            temporary = torch.ones(n * 2**18)
            del temporary
        while alive:  # backward
            gradient = torch.ones(alive[-1].numel())
            del gradient
            alive.pop()
    for _ in range(3):
        step()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(8):
        step()
    print(kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")


def page_faults(mode: str) -> tuple[bool, int]:
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True)
    kept, faults = out.stdout.split()
    return kept == "True", int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_kept_memory_is_reused_without_page_faults():
    kept, faults = page_faults("keep")
    assert kept
    # the 8 steps write ~560,000 4 KB pages; kept memory is reused without faulting them in again (the
    # few faults seen, 0 or 1,024 between runs, are not the heap's: e.g. a worker thread's first stack)
    assert faults <= 2048, faults
    # glibc's defaults give freed memory back and fault it in again (over 200,000 in the 8 steps, measured)
    assert page_faults("default")[1] > 4 * 2048


def test_keep_freed_memory_is_idempotent():
    from diffusion_lib.allocator import keep_freed_memory

    first = keep_freed_memory()
    assert keep_freed_memory() == first
