"""U-Net, attention and Denoiser: shapes, time embedding, prompt use, skips, overfitting, checkpoints."""

import json
import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from diffusion_lib.attention import SpatialTransformer, attention_map_images, record_attention
from diffusion_lib.atomic import CheckpointError, update_checksums
from diffusion_lib.denoiser import (
    Denoiser,
    DenoiserConfig,
    default_denoiser_config,
    load_denoiser,
    save_denoiser,
)
from diffusion_lib.layers import reference_kernels
from diffusion_lib.unet import UNet, UNetConfig, timestep_embedding
from helpers import randomize_zero_inits


# these batches are tiny: one thread each (conftest.one_thread)
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def denoiser():
    torch.manual_seed(0)
    return randomize_zero_inits(Denoiser(default_denoiser_config())).eval()


@pytest.mark.parametrize("size", [(8, 8), (16, 16), (8, 16), (32, 24)])
def test_output_shape_equals_input_shape(denoiser, size):
    x = torch.randn(2, 4, *size)
    tokens = denoiser.encode_prompts(["a photo of a bag", ""])
    with torch.no_grad():
        out = denoiser(x, torch.tensor([3, 999]), tokens)
    assert out.shape == x.shape
    assert torch.isfinite(out).all()


def test_two_level_unet_shapes():
    unet = UNet(UNetConfig(channel_mult=(1, 2), attention_levels=(1,), context_dim=16))
    for size in [(8, 8), (6, 10)]:
        x = torch.randn(1, 4, *size)
        assert unet(x, torch.tensor([10]), torch.randn(1, 5, 16)).shape == x.shape


def test_wrong_size_says_which_sizes_work(denoiser):
    # the default U-Net halves the resolution twice
    tokens = denoiser.encode_prompts(["bag"])
    with pytest.raises(AssertionError, match="multiples of 4"):
        denoiser(torch.randn(1, 4, 8, 6), torch.tensor([0]), tokens)
    unet = UNet(UNetConfig(channel_mult=(1, 2), attention_levels=(1,), context_dim=8))
    with pytest.raises(AssertionError, match="multiples of 2"):
        unet(torch.randn(1, 4, 7, 8), torch.tensor([0]), torch.randn(1, 3, 8))


def test_a_context_per_example_is_checked():
    unet = UNet(UNetConfig(channel_mult=(1, 2), attention_levels=(1,), context_dim=8))
    x, t = torch.randn(3, 4, 8, 8), torch.tensor([0, 1, 2])
    with pytest.raises(AssertionError, match=r"context must be \(B=3, L, 8\)"):
        unet(x, t, torch.randn(2, 5, 8))
    with pytest.raises(AssertionError, match=r"context_index \(B=3,\)"):
        unet(x, t, torch.randn(2, 5, 8), context_index=torch.tensor([0, 1]))
    # two distinct contexts, looked up by index: the same as each example's own
    contexts, index = torch.randn(2, 5, 8), torch.tensor([1, 0, 1])
    torch.testing.assert_close(unet(x, t, contexts, context_index=index), unet(x, t, contexts[index]))


def test_bad_config_is_a_clear_error():
    with pytest.raises(ValueError, match="attention_levels"):
        UNetConfig(channel_mult=(1, 2), attention_levels=(2,))
    with pytest.raises(ValueError, match="norm_groups"):
        UNetConfig(base_channels=20, norm_groups=8)


def test_timestep_embedding_matches_hand_computation():
    # dim 4: half = 2, frequencies w = (1, 10000**(-1/2)) = (1, 0.01)
    emb = timestep_embedding(torch.tensor([0, 1, 100]), 4)
    expected = torch.tensor(
        [
            [1.0, 1.0, 0.0, 0.0],
            [math.cos(1), math.cos(0.01), math.sin(1), math.sin(0.01)],
            [math.cos(100), math.cos(1), math.sin(100), math.sin(1)],
        ]
    )
    torch.testing.assert_close(emb, expected, rtol=1e-5, atol=1e-5)
    # float timesteps work too and give distinct vectors
    emb = timestep_embedding(torch.tensor([0.5, 0.25]), 32)
    assert emb.shape == (2, 32) and not torch.allclose(emb[0], emb[1])


def test_prompt_changes_the_output(denoiser):
    x = torch.randn(1, 4, 8, 8).repeat(3, 1, 1, 1)
    tokens = denoiser.encode_prompts(["a photo of a bag", "a photo of a coat", ""])
    with torch.no_grad():
        out = denoiser(x, torch.tensor([500] * 3), tokens)
    assert not torch.allclose(out[0], out[1], atol=1e-4)
    assert not torch.allclose(out[0], out[2], atol=1e-4)


def test_cross_attention_maps_are_distributions_over_tokens(denoiser):
    x = torch.randn(2, 4, 8, 16)
    tokens = denoiser.encode_prompts(["a photo of a ankle boot", "sneaker"])
    with torch.no_grad():
        with reference_kernels():  # fused attention everywhere
            plain = denoiser(x, torch.tensor([10, 20]), tokens)
        with record_attention(denoiser.unet) as maps:
            recorded = denoiser(x, torch.tensor([10, 20]), tokens)
    # the explicit softmax path computes the same as scaled_dot_product_attention
    torch.testing.assert_close(recorded, plain, rtol=1e-4, atol=1e-5)
    transformers = [m for m in denoiser.unet.modules() if isinstance(m, SpatialTransformer)]
    assert len(maps) == len(transformers) and all(name.endswith("attn2") for name in maps)
    heads, length = denoiser.config.unet.num_heads, tokens.shape[1]
    for calls in maps.values():
        (weights,) = calls
        assert weights.shape[:2] == (2, heads) and weights.shape[-1] == length
        torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:-1]))
        images = attention_map_images(weights, 8, 16)
        assert images.shape[:2] == (2, length)
        assert images.shape[2] * 2 == images.shape[3]  # the 1:2 aspect ratio survives
    # recording stops with the block
    assert all(m.recorder is None for m in denoiser.modules() if hasattr(m, "recorder"))


def test_cutting_skip_connections_changes_the_output(denoiser):
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([100, 900])
    tokens = denoiser.encode_prompts(["bag", "coat"])
    unet = denoiser.unet
    with torch.no_grad():
        with_skips = denoiser(x, t, tokens)
        unet.skip_scale = 0.0  # every skip tensor replaced by zeros
        without = denoiser(x, t, tokens)
        unet.skip_scale = 0.5
        halved = denoiser(x, t, tokens)
        unet.skip_scale = 1.0
        again = denoiser(x, t, tokens)
    assert without.shape == x.shape
    assert not torch.allclose(with_skips, without, atol=1e-4)
    assert not torch.allclose(halved, without, atol=1e-4) and not torch.allclose(halved, with_skips, atol=1e-4)
    torch.testing.assert_close(again, with_skips)


def test_default_denoiser_meets_the_compute_budget():
    model = Denoiser(default_denoiser_config())
    x = torch.randn(4, 4, 8, 8)
    tokens = model.encode_prompts(["a photo of a bag"] * 4)
    with reference_kernels(), FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x, torch.tensor([1, 2, 3, 4]), tokens)
    assert counter.get_total_flops() / 4 <= 0.05e9


def scaled_linear_alphas_cumprod(num_steps: int = 1000) -> torch.Tensor:
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, num_steps, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, dim=0).float()


def test_denoiser_overfits_one_batch():
    torch.manual_seed(0)
    model = Denoiser(default_denoiser_config())
    x0 = torch.randn(8, 4, 8, 8)
    noise = torch.randn_like(x0)
    t = torch.randint(0, 1000, (8,))
    abar = scaled_linear_alphas_cumprod()[t][:, None, None, None]
    # x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps
    x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * noise
    tokens = model.encode_prompts(["a photo of a bag", "coat", "", "a sneaker"] * 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(100):
        loss = torch.nn.functional.mse_loss(model(x_t, t, tokens), noise)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    # the first loss is about E[eps^2] = 1 (a fresh U-Net outputs 0)
    assert losses[-1] < losses[0] / 100, (losses[0], losses[-1])


def test_config_round_trip_and_consistency_checks():
    config = default_denoiser_config(prediction_type="v_prediction")
    d = json.loads(json.dumps(config.to_dict()))
    assert DenoiserConfig.from_dict(d).to_dict() == config.to_dict()
    with pytest.raises(ValueError, match="context_dim"):
        DenoiserConfig.from_dict({**d, "unet": {**d["unet"], "context_dim": 16}})
    with pytest.raises(ValueError, match="prediction_type"):
        DenoiserConfig.from_dict({**d, "prediction_type": "x0"})


def test_save_load_round_trip_gives_identical_outputs(tmp_path, denoiser):
    save_denoiser(tmp_path, denoiser)
    loaded = load_denoiser(tmp_path)
    assert loaded.config.to_dict() == denoiser.config.to_dict()
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([5, 600])
    tokens = denoiser.encode_prompts(["a photo of a dress", ""])
    with torch.no_grad():
        assert torch.equal(loaded(x, t, tokens), denoiser(x, t, tokens))
    # an EMA copy is saved in place of the live weights
    ema = Denoiser(denoiser.config)
    save_denoiser(tmp_path, denoiser, ema=ema, name="ema")
    loaded_ema = load_denoiser(tmp_path, name="ema")
    assert all(torch.equal(a, b) for a, b in zip(loaded_ema.state_dict().values(), ema.state_dict().values()))


def test_mismatched_config_raises_checkpoint_error(tmp_path, denoiser):
    save_denoiser(tmp_path, denoiser)
    config_file = tmp_path / "denoiser.json"
    config = json.loads(config_file.read_text())
    config["unet"]["base_channels"] = 48
    config_file.write_text(json.dumps(config))
    update_checksums(tmp_path, ["denoiser.json"])
    with pytest.raises(CheckpointError, match="denoiser.safetensors"):
        load_denoiser(tmp_path)
    config["unet"]["base_channels"] = 32
    config["unet"]["no_such_field"] = 1
    config_file.write_text(json.dumps(config))
    update_checksums(tmp_path, ["denoiser.json"])
    with pytest.raises(CheckpointError, match="no_such_field"):
        load_denoiser(tmp_path)
