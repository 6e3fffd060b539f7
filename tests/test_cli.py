"""A tiny end-to-end run through the command line: VAE, classifier, denoiser, sample, evaluate."""

import json
import subprocess
import sys

import numpy as np
import pytest

from diffusion_lib.pipeline import Pipeline

pytestmark = pytest.mark.slow


def cli(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", "diffusion_lib", *args], capture_output=True, text=True, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("run")
    cli("train-vae", "--out", str(d), "--epochs", "1", "--limit", "512", "--device", "cpu", "--no-progress")
    cli("train-classifier", "--out", str(d), "--epochs", "1", "--limit", "512", "--device", "cpu", "--no-progress")
    cli("train", "--out", str(d), "--epochs", "1", "--limit", "512", "--batch-size", "64", "--vae-dir", str(d),
        "--device", "cpu", "--no-progress", "--snapshot-epochs", "1")
    return d


def test_sample_npz_as_the_design_says(run_dir):
    out = run_dir / "s.npz"
    cli("sample", "--checkpoint", str(run_dir), "--all-classes", "--num-images", "2", "--steps", "3",
        "--sampler", "ddim", "--guidance", "2", "--seed", "0", "--out", str(out), "--no-progress", "--device", "cpu")
    data = np.load(out)
    assert data["images"].shape == (20, 28, 28) and data["images"].dtype == np.uint8
    assert data["labels"].dtype == np.int64
    assert data["labels"].tolist() == [c for c in range(10) for _ in range(2)]


def test_sample_png_and_seed_reproducibility(run_dir):
    a, b = run_dir / "a.npz", run_dir / "b.npz"
    for out in (a, b):
        cli("sample", "--checkpoint", str(run_dir), "--prompt", "a photo of a sneaker", "--num-images", "3",
            "--steps", "4", "--seed", "7", "--out", str(out), "--no-progress", "--device", "cpu")
    assert np.array_equal(np.load(a)["images"], np.load(b)["images"])
    png = run_dir / "grid.png"
    cli("sample", "--checkpoint", str(run_dir), "--prompt", "bag", "--prompt", "", "--num-images", "2", "--steps", "2",
        "--out", str(png), "--no-progress", "--device", "cpu")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_ladder_snapshot_loads(run_dir):
    pipe = Pipeline.from_pretrained(run_dir, "cpu", "denoiser_epoch001")
    out = pipe("coat", num_images=2, num_inference_steps=2, seed=0, progress=False)
    assert out.images.shape == (2, 28, 28) and out.labels.tolist() == [4, 4]


def test_evaluate_prints_the_real_floor(run_dir):
    report = run_dir / "eval.json"
    proc = cli("evaluate", "--checkpoint", str(run_dir), "--num-images", "40", "--steps", "3", "--guidance", "0", "3",
               "--json", str(report), "--no-progress", "--device", "cpu", "--autoencoder-floor")
    assert "real data" in proc.stdout and "autoencoder" in proc.stdout
    result = json.loads(report.read_text())
    assert result["real_floor"]["num_images"] == 40 and result["autoencoder_floor"]["num_images"] == 40
    assert [r["guidance"] for r in result["results"]] == [0.0, 3.0]
    for r in result["results"]:
        assert r["num_images"] == 40 and 0 <= r["accuracy"] <= 1 and r["fid"] > 0


def test_clear_errors(run_dir, tmp_path):
    proc = cli("sample", "--checkpoint", str(run_dir), "--prompt", "a photo of a giraffe", "--out",
               str(tmp_path / "x.png"), check=False)
    assert proc.returncode == 1 and "ankle boot" in proc.stderr
    proc = cli("sample", "--checkpoint", str(run_dir), "--prompt", "bag", "--sampler", "euler", "--out",
               str(tmp_path / "x.png"), check=False)
    assert proc.returncode == 1 and "dpmsolver++" in proc.stderr
    proc = cli("sample", "--checkpoint", str(tmp_path / "nowhere"), "--prompt", "bag", "--out", str(tmp_path / "x.png"),
               check=False)
    assert proc.returncode == 1 and "missing" in proc.stderr
    proc = cli("sample", "--checkpoint", str(run_dir), "--prompt", "bag", "--steps", "0", "--out",
               str(tmp_path / "x.png"), check=False)
    assert proc.returncode == 1 and "--steps must be an integer >= 1" in proc.stderr


def test_streamed_npz_equals_one_pipeline_call(run_dir):
    """sample writes an .npz batch by batch; the images are those of one Pipeline call with the same seed."""
    out = run_dir / "streamed.npz"
    cli("sample", "--checkpoint", str(run_dir), "--prompt", "bag", "--prompt", "coat", "--num-images", "5", "--steps",
        "3", "--seed", "11", "--batch-size", "4", "--out", str(out), "--no-progress", "--device", "cpu")
    pipe = Pipeline.from_pretrained(run_dir, "cpu")
    expected = pipe(["bag", "coat"], num_images=5, num_inference_steps=3, seed=11, batch_size=4, progress=False)
    data = np.load(out)
    assert np.array_equal(data["images"], expected.images.numpy())
    assert data["labels"].tolist() == [8] * 5 + [4] * 5
