"""Shared pytest configuration: markers and the CUDA switch."""

import os

import pytest
import torch

# At most two intra-op threads (the laptop-sized machine this kit targets); OMP_NUM_THREADS,
# when set, wins: on a machine shared with a training run, one thread per process avoids
# the spin-waiting that makes oversubscribed threads many times slower.
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or max(1, min(2, os.cpu_count() or 1))))

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes more than ~20 s on a 2-core CPU (still run in CI)")
    config.addinivalue_line("markers", "cuda: needs a CUDA GPU; skipped without one")
    config.addinivalue_line("markers", "notebook: executes a notebook with papermill")
