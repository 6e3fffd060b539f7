"""Facts about the KL autoencoder: shapes, the Gaussian posterior, training, saving and quality."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from diffusion_lib.autoencoder import (
    AutoencoderConfig,
    AutoencoderKL,
    DiagonalGaussian,
    load_autoencoder,
    measure_scale_factor,
    reconstruction_psnr,
    vae_loss,
)
from diffusion_lib.atomic import CheckpointError
from diffusion_lib.data import load_split
from diffusion_lib.train_vae import train_vae

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "checkpoints"


def small_vae(seed: int = 0) -> AutoencoderKL:
    torch.manual_seed(seed)
    return AutoencoderKL(AutoencoderConfig(channels=(8, 16, 16), norm_groups=4))


@pytest.mark.parametrize("height, width", [(32, 32), (16, 16), (64, 48)])
def test_shapes_at_several_sizes(height, width):
    vae = small_vae()
    x = torch.rand(2, 1, height, width) * 2 - 1
    posterior = vae.encode(x)
    assert posterior.mean.shape == (2, 4, height // 4, width // 4)
    assert posterior.logvar.shape == posterior.mean.shape
    assert vae.decode(posterior.sample()).shape == x.shape
    reconstruction, post = vae(x, sample_posterior=False)
    assert reconstruction.shape == x.shape
    assert torch.equal(post.mode(), post.mean)


def test_shipped_default_maps_32_to_4x8x8():
    vae = AutoencoderKL(AutoencoderConfig())
    assert vae.encode(torch.zeros(1, 1, 32, 32)).mean.shape == (1, 4, 8, 8)
    assert vae.config.downsample_factor == 4
    # "a few hundred k parameters": small enough to train on a laptop CPU
    assert 100_000 < sum(p.numel() for p in vae.parameters()) < 1_000_000


@pytest.mark.parametrize("height, width", [(30, 32), (32, 18), (28, 26)])
def test_wrong_size_is_a_clear_assertion(height, width):
    vae = small_vae()
    with pytest.raises(AssertionError, match="divisible by 4"):
        vae.encode(torch.zeros(1, 1, height, width))


def test_wrong_channel_count_is_a_clear_assertion():
    vae = small_vae()
    with pytest.raises(AssertionError, match=r"\(B, 1, H, W\)"):
        vae.encode(torch.zeros(1, 3, 32, 32))
    with pytest.raises(AssertionError, match=r"\(B, 4, h, w\)"):
        vae.decode(torch.zeros(1, 3, 8, 8))


def test_kl_matches_closed_form():
    torch.manual_seed(0)
    mean, logvar = torch.randn(3, 4, 5, 6), torch.randn(3, 4, 5, 6)
    posterior = DiagonalGaussian(torch.cat([mean, logvar], dim=1))
    var = logvar.exp()
    expected = 0.5 * (mean**2 + var - 1 - logvar).sum(dim=(1, 2, 3))
    assert posterior.kl().shape == (3,)
    torch.testing.assert_close(posterior.kl(), expected)
    assert (posterior.kl() > 0).all()


def test_kl_of_standard_normal_is_zero():
    posterior = DiagonalGaussian(torch.zeros(2, 8, 4, 4))
    torch.testing.assert_close(posterior.kl(), torch.zeros(2))


def test_logvar_is_clamped():
    params = torch.cat([torch.zeros(1, 4, 2, 2), torch.full((1, 4, 2, 2), -100.0)], dim=1)
    posterior = DiagonalGaussian(params)
    assert posterior.logvar.min().item() == -30.0
    assert torch.isfinite(posterior.kl()).all()
    params = torch.cat([torch.zeros(1, 4, 2, 2), torch.full((1, 4, 2, 2), 100.0)], dim=1)
    assert DiagonalGaussian(params).logvar.max().item() == 20.0


def test_sample_moments_match_mean_and_std():
    mean = torch.tensor([-1.0, 0.5, 3.0, 0.0]).view(1, 4, 1, 1).expand(20_000, 4, 1, 1)
    std = torch.tensor([0.1, 1.0, 2.0, 0.5]).view(1, 4, 1, 1).expand(20_000, 4, 1, 1)
    posterior = DiagonalGaussian(torch.cat([mean, (std**2).log()], dim=1))
    z = posterior.sample(torch.Generator().manual_seed(0))
    # Monte Carlo: standard error of the mean is std / sqrt(20000) < 0.015
    torch.testing.assert_close(z.mean(dim=0).flatten(), mean[0].flatten(), atol=0.05, rtol=0)
    torch.testing.assert_close(z.std(dim=0).flatten(), std[0].flatten(), atol=0, rtol=0.03)


def test_sample_is_reproducible_with_a_generator():
    posterior = DiagonalGaussian(torch.randn(2, 8, 4, 4))
    a = posterior.sample(torch.Generator().manual_seed(3))
    b = posterior.sample(torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_config_round_trip_and_unknown_keys():
    cfg = AutoencoderConfig(channels=(8, 16, 32), scale_factor=0.7)
    d = json.loads(json.dumps(cfg.to_dict()))
    assert AutoencoderConfig.from_dict(d) == cfg
    with pytest.raises(ValueError, match="unknown AutoencoderConfig keys"):
        AutoencoderConfig.from_dict({**d, "chanels": [8]})
    with pytest.raises(ValueError, match="divisible by norm_groups"):
        AutoencoderConfig(channels=(12, 16, 16), norm_groups=8)


def test_vae_loss_terms():
    x = torch.zeros(2, 1, 4, 4)
    x_hat = torch.full_like(x, 0.5)
    posterior = DiagonalGaussian(torch.zeros(2, 8, 1, 1))
    loss, rec, kl = vae_loss(x, x_hat, posterior, kl_weight=1.0, kind="l1")
    assert rec.item() == pytest.approx(0.5)
    assert kl.item() == pytest.approx(0.0)
    _, rec2, _ = vae_loss(x, x_hat, posterior, kl_weight=1.0, kind="l2")
    assert rec2.item() == pytest.approx(0.25)
    shifted = DiagonalGaussian(torch.cat([torch.ones(2, 4, 1, 1), torch.zeros(2, 4, 1, 1)], dim=1))
    # KL = 1/2 * 4 * 1^2 = 2 per image, spread over 16 pixels
    loss, _, kl = vae_loss(x, x_hat, shifted, kl_weight=1.0, kind="l1")
    assert kl.item() == pytest.approx(2.0)
    assert loss.item() == pytest.approx(0.5 + 2.0 / 16)


def test_overfits_a_batch_of_16(one_thread):
    images = load_split("test").subset(16).model_space()
    vae = small_vae()
    optimiser = torch.optim.AdamW(vae.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    first = None
    for _ in range(200):
        reconstruction, posterior = vae(images, generator=generator)
        loss, rec, _ = vae_loss(images, reconstruction, posterior, kl_weight=1e-4)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        first = rec.item() if first is None else first
    # mean (x - x_hat)^2 in [-1, 1] units: ~1.4 at the start, ~0.02 after 200 steps
    assert rec.item() < 0.05 < first, (first, rec.item())
    assert reconstruction_psnr(vae, images) > 18.0


def test_psnr_and_scale_factor_helpers():
    images = load_split("test").subset(8)
    vae = small_vae()
    # an untrained autoencoder reconstructs badly but finitely; batching must not change the answer
    psnr = reconstruction_psnr(vae, images, batch_size=3)
    assert 0.0 < psnr < 20.0
    assert psnr == pytest.approx(reconstruction_psnr(vae, images.images, batch_size=8), abs=1e-9)
    scale = measure_scale_factor(vae, images.model_space(), batch_size=3)
    with torch.no_grad():
        mu = vae.encode(images.model_space()).mean
    assert scale == pytest.approx(1.0 / mu.double().std(unbiased=False).item(), rel=1e-6)


def test_train_vae_writes_files_that_load_back(tmp_path):
    tiny = AutoencoderConfig(channels=(8, 16, 16), norm_groups=4)
    metrics = train_vae(tmp_path, epochs=1, batch_size=64, limit=256, progress=False, config=tiny, test_images=500)
    for name in ("vae.safetensors", "vae.json", "SHA256SUMS", "vae_log.jsonl"):
        assert (tmp_path / name).is_file(), name
    log = [json.loads(line) for line in (tmp_path / "vae_log.jsonl").read_text().splitlines()]
    assert len(log) == 1
    assert {"epoch", "loss", "rec_loss", "kl", "lr", "images_per_s", "wall_s"} <= set(log[0])
    assert math.isfinite(metrics["loss"]) and metrics["scale_factor"] > 0
    config = json.loads((tmp_path / "vae.json").read_text())
    assert config["scale_factor"] == pytest.approx(metrics["scale_factor"])

    vae = load_autoencoder(tmp_path)
    assert not vae.training
    assert vae.config.scale_factor == pytest.approx(metrics["scale_factor"])
    x = load_split("test").subset(4).model_space()
    again = load_autoencoder(tmp_path)
    with torch.no_grad():
        assert torch.equal(vae(x, sample_posterior=False)[0], again(x, sample_posterior=False)[0])
    # the returned metrics were measured on the very weights that were saved
    assert reconstruction_psnr(vae, load_split("test").subset(500)) == pytest.approx(metrics["test_psnr"], abs=1e-9)


def test_train_vae_is_deterministic_on_cpu(tmp_path):
    tiny = AutoencoderConfig(channels=(8, 8, 8), norm_groups=4)
    kwargs = dict(epochs=1, batch_size=64, limit=128, progress=False, config=tiny, test_images=100)
    a = train_vae(tmp_path / "a", **kwargs)
    b = train_vae(tmp_path / "b", **kwargs)
    assert a["loss"] == b["loss"]
    assert (tmp_path / "a" / "vae.safetensors").read_bytes() == (tmp_path / "b" / "vae.safetensors").read_bytes()


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="vae.safetensors is missing"):
        load_autoencoder(tmp_path)


@pytest.mark.slow
def test_shipped_vae_reaches_26_db():
    if not (SHIPPED / "vae.safetensors").is_file():
        pytest.skip("no shipped autoencoder in checkpoints/ (train it with python -m diffusion_lib train-vae)")
    vae = load_autoencoder(SHIPPED)
    test = load_split("test").subset(1000)
    assert reconstruction_psnr(vae, test) >= 26.0
    # the stored scale factor brings the training latents to unit spread
    train = load_split("train").subset(2000)
    with torch.no_grad():
        z0 = vae.config.scale_factor * vae.encode(train.model_space()).mode()
    assert 0.9 < z0.std().item() < 1.1
