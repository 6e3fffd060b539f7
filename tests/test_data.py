"""Fashion-MNIST loading: the real files, the model-space mapping, and the missing-data message."""

import gzip

import numpy as np
import pytest
import torch

from diffusion_lib import data


def test_real_fashion_mnist_splits():
    train, test = data.load_split("train"), data.load_split("test")
    assert train.images.shape == (60_000, 28, 28) and train.images.dtype == torch.uint8
    assert test.images.shape == (10_000, 28, 28)
    # balanced classes: 6,000 / 1,000 of each
    assert torch.bincount(train.labels).tolist() == [6000] * 10
    assert torch.bincount(test.labels).tolist() == [1000] * 10
    assert train.class_names[9] == "ankle boot" and len(train.class_names) == 10


def test_model_space_round_trip():
    s = data.load_split("test").subset(64)
    x = s.model_space()
    assert x.shape == (64, 1, 32, 32) and x.dtype == torch.float32
    assert x.min() == -1 and x.max() <= 1
    # the 2-pixel border is background (-1)
    assert (x[..., :2, :] == -1).all() and (x[..., :, -2:] == -1).all()
    assert torch.equal(data.to_pixels(x), s.images)


def write_idx(path, array):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_diffusion_data_variable_takes_priority(tmp_path, monkeypatch):
    images = np.arange(3 * 28 * 28).reshape(3, 28, 28) % 256
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.array([1, 2, 3]))
    monkeypatch.setenv("DIFFUSION_DATA", str(tmp_path))
    s = data.load_split("test")
    assert s.images.shape == (3, 28, 28) and s.labels.tolist() == [1, 2, 3]


def test_truncated_file_is_reported(tmp_path, monkeypatch):
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", np.zeros((3, 28, 28)))
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.array([1, 2, 3]))
    raw = gzip.open(tmp_path / "t10k-images-idx3-ubyte.gz").read()
    with gzip.open(tmp_path / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(raw[:-100])
    monkeypatch.setenv("DIFFUSION_DATA", str(tmp_path))
    with pytest.raises(ValueError, match="truncated"):
        data.load_split("test")


def test_missing_data_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFUSION_DATA", str(tmp_path / "empty"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setitem(data.DEBIAN_PATHS, "fashion-mnist", tmp_path / "no-debian")
    with pytest.raises(data.DataNotFoundError) as err:
        data.load_split("train")
    msg = str(err.value)
    assert "apt-get install dataset-fashion-mnist" in msg
    assert "DIFFUSION_DATA" in msg
    assert "download=True" in msg


def test_unknown_split_and_dataset():
    with pytest.raises(ValueError, match="train, test"):
        data.load_split("validation")
    with pytest.raises(ValueError, match="fashion-mnist, mnist"):
        data.load_split("train", dataset="cifar10")
