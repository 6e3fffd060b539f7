"""coursekit.runs: finding the epoch ladder, reading logs, reusing or resuming a notebook's training run.

The runs are tiny (a U-Net of a few thousand parameters, 128 images, an untrained autoencoder): the
bookkeeping is under test, not the model.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from coursekit import runs
from diffusion_lib.denoiser import load_denoiser
from helpers import tiny_run

tiny = tiny_run  # a one-epoch run of the tiny denoiser


def weights(directory: Path, name: str = "denoiser") -> dict[str, torch.Tensor]:
    return load_file(directory / f"{name}.safetensors")


def test_ladder_lists_complete_snapshots_by_epoch(tmp_path):
    for name in ("denoiser_epoch010", "denoiser_epoch002", "denoiser_epoch001", "denoiser"):
        (tmp_path / f"{name}.safetensors").write_bytes(b"")
        (tmp_path / f"{name}.json").write_text("{}")
    (tmp_path / "denoiser_epoch005.safetensors").write_bytes(b"")  # no .json beside it: not a rung
    (tmp_path / "denoiser_epochXYZ.safetensors").write_bytes(b"")
    assert runs.ladder(tmp_path) == [runs.Rung(1, "denoiser_epoch001"), runs.Rung(2, "denoiser_epoch002"),
                                     runs.Rung(10, "denoiser_epoch010")]
    assert runs.ladder(tmp_path / "missing") == []


def test_read_log(tmp_path):
    lines = [{"epoch": 1, "loss": 0.5}, {"epoch": 2, "loss": 0.2}]
    (tmp_path / "train_log.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines) + "\n")
    assert runs.read_log(tmp_path / "train_log.jsonl") == lines
    with pytest.raises(FileNotFoundError, match="writes it after its first epoch"):
        runs.read_log(tmp_path / "nope.jsonl")
    (tmp_path / "bad.jsonl").write_text("{epoch: 1\n")
    with pytest.raises(ValueError, match="not a JSON-lines training log"):
        runs.read_log(tmp_path / "bad.jsonl")


def test_train_then_reuse_then_resume_then_retrain(vae_dir, tmp_path):
    out = tmp_path / "run"
    history, how = runs.train_or_reuse(tiny(out, vae_dir))
    assert how == "trained" and [h["epoch"] for h in history] == [1]
    first = weights(out)

    # the same settings (progress bars, threads and device do not count): nothing is trained again
    again, how = runs.train_or_reuse(tiny(out, vae_dir, progress=True, num_threads=2))
    assert how == "reused" and again == history
    assert all(torch.equal(first[k], v) for k, v in weights(out).items())

    # more epochs: the run continues, and equals an uninterrupted 2-epoch run
    resumed, how = runs.train_or_reuse(tiny(out, vae_dir, epochs=2))
    assert how == "resumed" and [h["epoch"] for h in resumed] == [1, 2]
    direct, _ = runs.train_or_reuse(tiny(tmp_path / "direct", vae_dir, epochs=2))
    assert all(torch.equal(weights(tmp_path / "direct")[k], v) for k, v in weights(out).items())
    assert [h["loss"] for h in direct] == [h["loss"] for h in resumed]

    # another batch size: a fresh run replaces the folder's run
    changed, how = runs.train_or_reuse(tiny(out, vae_dir, batch_size=64))
    assert how == "trained" and changed[-1]["step"] == 2
    # fewer epochs than saved: also fresh
    _, how = runs.train_or_reuse(tiny(tmp_path / "direct", vae_dir, epochs=1))
    assert how == "trained"


def test_matching_rung_and_raw_weights(vae_dir, tmp_path):
    out = tmp_path / "run"
    runs.train_or_reuse(tiny(out, vae_dir, epochs=2))
    assert runs.matching_rung(out) == runs.Rung(2, "denoiser_epoch002")
    runs.train_or_reuse(tiny(out, vae_dir, epochs=3))  # no snapshot at epoch 3
    assert runs.matching_rung(out) is None

    raw, ema = runs.load_raw_denoiser(out), load_denoiser(out)
    state = load_file(out / "train_state.safetensors")
    for key, value in raw.state_dict().items():
        assert torch.equal(value, state[f"model.{key}"])
    assert any(not torch.equal(value, ema.state_dict()[key]) for key, value in raw.state_dict().items())
    assert not raw.training
