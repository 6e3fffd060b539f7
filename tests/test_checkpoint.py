"""Checkpoint files: atomic writes, checksums, and a clear error for every way a file can be wrong."""

import json

import pytest
import torch
from torch import nn

from diffusion_lib.atomic import CheckpointError, read_checksums, sha256_file
from diffusion_lib.checkpoint import load_component, load_into, save_component


def small_net(width=4):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, width), nn.ReLU(), nn.Linear(width, 2))


def test_round_trip_and_sums(tmp_path):
    net = small_net()
    save_component(tmp_path, "net", net, {"width": 4})
    sums = read_checksums(tmp_path)
    assert set(sums) == {"net.safetensors", "net.json"}
    assert sums["net.safetensors"] == sha256_file(tmp_path / "net.safetensors")
    tensors, config = load_component(tmp_path, "net")
    assert config == {"width": 4}
    other = load_into(small_net(), tensors, tmp_path / "net.safetensors")
    x = torch.randn(5, 3)
    assert torch.equal(other(x), net(x))
    # no temporary files left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["SHA256SUMS", "net.json", "net.safetensors"]


def test_fp16_storage_loads_into_fp32(tmp_path):
    net = small_net()
    save_component(tmp_path, "net", net, {}, dtype=torch.float16)
    tensors, _ = load_component(tmp_path, "net")
    assert tensors["0.weight"].dtype == torch.float16
    other = load_into(small_net(), tensors, "net")
    assert other[0].weight.dtype == torch.float32
    torch.testing.assert_close(other[0].weight, net[0].weight, atol=1e-3, rtol=1e-3)


def test_missing_file(tmp_path):
    save_component(tmp_path, "net", small_net(), {})
    (tmp_path / "net.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"net\.safetensors is missing"):
        load_component(tmp_path, "net")


def test_truncated_file(tmp_path):
    save_component(tmp_path, "net", small_net(), {})
    path = tmp_path / "net.safetensors"
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(CheckpointError, match="truncated, corrupt or was changed"):
        load_component(tmp_path, "net")


def test_tampered_config(tmp_path):
    save_component(tmp_path, "net", small_net(), {"width": 4})
    (tmp_path / "net.json").write_text(json.dumps({"width": 5}))
    with pytest.raises(CheckpointError, match=r"net\.json does not match its SHA-256"):
        load_component(tmp_path, "net")


def test_unlisted_file(tmp_path):
    save_component(tmp_path, "net", small_net(), {})
    (tmp_path / "SHA256SUMS").write_text("")
    with pytest.raises(CheckpointError, match="not listed"):
        load_component(tmp_path, "net")


def test_unreadable_file_even_without_verification(tmp_path):
    save_component(tmp_path, "net", small_net(), {})
    (tmp_path / "net.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="cannot be read as safetensors"):
        load_component(tmp_path, "net", verify=False)


def test_architecture_mismatch_names_the_file(tmp_path):
    save_component(tmp_path, "net", small_net(4), {"width": 4})
    tensors, _ = load_component(tmp_path, "net")
    with pytest.raises(CheckpointError, match=r"net\.safetensors does not fit.*shape mismatch"):
        load_into(small_net(8), tensors, tmp_path / "net.safetensors")
    with pytest.raises(CheckpointError, match="missing"):
        load_into(nn.Sequential(small_net(4), nn.Linear(2, 2)), tensors, tmp_path / "net.safetensors")


def test_loading_never_unpickles(tmp_path):
    # a pickle disguised as weights is rejected as unreadable, not executed
    import pickle

    (tmp_path / "net.safetensors").write_bytes(pickle.dumps({"a": 1}))
    (tmp_path / "net.json").write_text("{}")
    with pytest.raises(CheckpointError):
        load_component(tmp_path, "net", verify=False)


def test_saving_is_reproducible_and_world_readable(tmp_path):
    net = small_net()
    save_component(tmp_path / "a", "net", net, {"width": 4})
    save_component(tmp_path / "b", "net", net, {"width": 4})
    assert (tmp_path / "a" / "net.safetensors").read_bytes() == (tmp_path / "b" / "net.safetensors").read_bytes()
    assert (tmp_path / "a" / "net.safetensors").stat().st_mode & 0o777 == 0o644
