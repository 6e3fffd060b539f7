"""Device choice: ``auto`` takes CUDA, then Apple's MPS, then the CPU; what depends on the device is chosen right.

No GPU of either kind is here, so availability is mocked; what runs on the device itself is
checked by ``cuda_check.sh`` on a CUDA machine.
"""

from __future__ import annotations

import pytest
import torch

from coursekit import params
from diffusion_lib import device as D
from diffusion_lib.distributed import Distributed, DistributedError
from diffusion_lib.train import TrainConfig, make_optimizer


@pytest.fixture
def gpus(monkeypatch):
    """Set which GPUs this machine appears to have: ``gpus(cuda=2, mps=True)``."""

    def have(cuda: int = 0, mps: bool = False) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: cuda)
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)

    return have


@pytest.mark.parametrize("cuda, mps, expected", [(1, True, "cuda:0"), (2, False, "cuda:0"), (0, True, "mps"),
                                                 (0, False, "cpu")])
def test_auto_takes_cuda_then_mps_then_the_cpu(gpus, cuda, mps, expected):
    gpus(cuda=cuda, mps=mps)
    assert D.resolve_device("auto") == torch.device(expected)


def test_named_devices(gpus):
    gpus(cuda=2, mps=True)
    assert D.resolve_device("MPS") == torch.device("mps") == D.resolve_device(" mps:0 ")
    assert D.resolve_device("cuda", local_rank=1) == torch.device("cuda:1")
    assert D.resolve_device(torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(ValueError, match="has 2 GPU"):
        D.resolve_device("cuda:2")


def test_a_missing_gpu_or_an_unknown_name_is_a_clear_error(gpus):
    gpus(cuda=0, mps=False)
    with pytest.raises(ValueError, match="Apple-silicon Mac.*use 'cpu' or 'auto'"):
        D.resolve_device("mps")
    with pytest.raises(ValueError, match="no CUDA GPU"):
        D.resolve_device("cuda")
    with pytest.raises(ValueError, match="valid: auto, cpu, cuda, cuda:N, mps"):
        D.resolve_device("metal")
    with pytest.raises(params.ParameterError, match="device.*Apple"):
        params.check(device="mps")


@pytest.mark.parametrize("kind, autocast, fused, channels_last, backend, sums", [
    ("cuda", torch.bfloat16, True, False, "nccl", torch.float64),
    ("mps", None, False, False, None, torch.float32),
    ("cpu", None, True, True, "gloo", torch.float64),
])
def test_device_dependent_choices(kind, autocast, fused, channels_last, backend, sums):
    dev = torch.device(kind)
    assert D.autocast_dtype(dev) == autocast
    assert D.fused_optimizer(dev) is fused
    assert D.default_channels_last(dev) is channels_last
    assert D.accumulator_dtype(dev) == sums
    if backend is None:
        with pytest.raises(ValueError, match="one process"):
            D.distributed_backend(kind)
    else:
        assert D.distributed_backend(kind) == backend


def test_the_optimizer_on_mps_is_foreach_not_fused():
    model = torch.nn.Linear(4, 4)
    optimizer = make_optimizer(model, TrainConfig(out_dir="unused", epochs=1), torch.device("mps"))
    assert not optimizer.defaults["fused"] and optimizer.defaults["foreach"] is True


def test_multi_process_training_on_a_mac_is_refused(gpus, monkeypatch):
    gpus(cuda=0, mps=True)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(DistributedError, match="one process"):
        Distributed.from_env("auto")
