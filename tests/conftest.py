"""Shared pytest configuration: markers and the CUDA switch."""

import os

from pathlib import Path

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


@pytest.fixture
def one_thread():
    """Tiny models run thousands of tiny ops: a second thread gains nothing, and on a busy machine the
    threads wait on each other (on a busy 2-core machine two threads made one test ten times slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def vae_dir(tmp_path_factory) -> Path:
    """A small, untrained autoencoder saved as vae.safetensors + vae.json (random weights do for trainer tests)."""
    from diffusion_lib.autoencoder import AutoencoderConfig, AutoencoderKL
    from diffusion_lib.checkpoint import save_component

    directory = tmp_path_factory.mktemp("vae")
    torch.manual_seed(0)
    config = AutoencoderConfig(channels=(8, 8, 8), norm_groups=4, scale_factor=2.0)
    save_component(directory, "vae", AutoencoderKL(config), config.to_dict())
    return directory
