"""SDEdit (img2img), inpainting and negative prompts: closed forms of Gaussian data, and the real pipeline."""

import math
from pathlib import Path

import pytest
import torch

from diffusion_lib.editing import img2img_timesteps, inpaint_blend, latent_mask
from diffusion_lib.samplers import inference_timesteps, sample
from diffusion_lib.schedules import NoiseSchedule

MU, SD = 0.5, 0.8
SHIPPED = Path(__file__).resolve().parents[1] / "checkpoints"


def gaussian_eps_model(s: NoiseSchedule, mu: float = MU, sd: float = SD):
    """The exact noise predictor of x_0 ~ N(mu, sd^2), every coordinate independent:
    E[eps | x_t] = b (x_t - a mu) / (a^2 sd^2 + b^2) with a = sqrt(abar_t), b = sqrt(1 - abar_t)."""

    def model_fn(x, t):
        abar = s.alphas_cumprod[t.cpu()].to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
        a, b = abar.sqrt(), (1 - abar).sqrt()
        return b * (x - a * mu) / (a**2 * sd**2 + b**2)

    return model_fn


@pytest.mark.parametrize("strength, kept", [(1.0, 20), (0.5, 10), (0.26, 6), (0.01, 1)])
def test_strength_keeps_the_last_ceil_s_n_timesteps(strength, kept):
    timesteps = inference_timesteps(1000, 20, "trailing")
    visited = img2img_timesteps(timesteps, strength)
    assert len(visited) == kept
    assert torch.equal(visited, timesteps[20 - kept:])
    assert visited[0] == timesteps[20 - math.ceil(strength * 20)]


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.5, float("nan")])
def test_a_strength_outside_zero_one_is_refused(bad):
    with pytest.raises(ValueError, match="strength"):
        img2img_timesteps(inference_timesteps(1000, 20), bad)


def test_sdedit_follows_the_probability_flow_of_gaussian_data():
    """DDIM (eta = 0) from x_init noised to t_start. For N(mu, sd^2) data the probability-flow ODE is affine:
    x_0 = mu + sd (x_t - a mu) / sigma_t, sigma_t^2 = a^2 sd^2 + b^2; with x_t = a x_init + b eps

        E[x_0] = mu + sd a (x_init - mu) / sigma_t,   Std[x_0] = sd b / sigma_t.

    Tolerances: n = 50,000 gives a Monte Carlo error of ~0.002 on the mean and ~0.3% on the std; the rest is
    the discretisation error of 100 DDIM steps."""
    s = NoiseSchedule("scaled_linear", 1000, beta_start=0.00085, beta_end=0.012)
    n, x_init_value, strength, steps = 50_000, 1.7, 0.5, 200
    t_start = img2img_timesteps(inference_timesteps(1000, steps, "trailing"), strength)[0].item()
    a = s.alphas_cumprod[t_start].item() ** 0.5
    b = (1 - a**2) ** 0.5
    sigma = (a**2 * SD**2 + b**2) ** 0.5
    x_init = torch.full((n, 1), x_init_value, dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    x = sample(gaussian_eps_model(s), (n, 1), s, "ddim", steps, x_init=x_init, strength=strength, generator=gen,
               progress=False, dtype=torch.float64)
    assert x.mean().item() == pytest.approx(MU + SD * a * (x_init_value - MU) / sigma, abs=0.01)
    assert x.std().item() == pytest.approx(SD * b / sigma, rel=0.03)


def test_sdedit_of_a_data_sample_returns_the_data_distribution():
    """If x_init is itself drawn from the data, x_{t_start} has exactly the marginal q(x_t): any sampler must
    return N(mu, sd^2) whatever the strength (a wrong start timestep or noise level would not)."""
    s = NoiseSchedule("linear", 1000)
    n = 50_000
    gen = torch.Generator().manual_seed(1)
    x_init = MU + SD * torch.randn(n, 1, generator=gen, dtype=torch.float64)
    # samplers accurate enough for a 4% test of the std (DDPM needs its full 1000 steps, here 300 of them)
    for sampler, strength, steps in (("ddpm", 0.3, 1000), ("dpmsolver++", 0.7, 50)):
        x = sample(gaussian_eps_model(s), (n, 1), s, sampler, steps, x_init=x_init, strength=strength, generator=gen,
                   progress=False, dtype=torch.float64)
        assert x.mean().item() == pytest.approx(MU, abs=0.02), sampler
        assert x.std().item() == pytest.approx(SD, rel=0.04), sampler


def test_inpainting_keeps_the_known_part_and_samples_the_rest():
    """Independent coordinates: the kept one ends exactly at x_init, the redrawn one is N(mu, sd^2) (cosine
    schedule, so that almost nothing of x_init leaks into the redrawn coordinate's start)."""
    s = NoiseSchedule("squaredcos_cap_v2", 1000)
    n = 40_000
    x_init = torch.tensor([[3.0, -2.0]], dtype=torch.float64).expand(n, 2).reshape(n, 1, 1, 2)
    mask = torch.tensor([1.0, 0.0], dtype=torch.float64).reshape(1, 1, 1, 2)
    gen = torch.Generator().manual_seed(2)
    x = sample(gaussian_eps_model(s), (n, 1, 1, 2), s, "ddpm", 100, x_init=x_init, mask=mask, generator=gen,
               progress=False, dtype=torch.float64)
    assert torch.equal(x[..., 1], x_init[..., 1])
    assert x[..., 0].mean().item() == pytest.approx(MU, abs=0.02)
    assert x[..., 0].std().item() == pytest.approx(SD, rel=0.04)


def test_blend_and_latent_mask():
    x, known = torch.ones(1, 1, 2, 2), torch.zeros(1, 1, 2, 2)
    m = torch.tensor([[[[1.0, 0.0], [0.25, 0.0]]]])
    assert torch.equal(inpaint_blend(x, known, m), m)
    pixels = torch.zeros(1, 1, 32, 32)
    pixels[..., 5, 30] = 1  # one pixel in the latent patch (1, 7)
    lm = latent_mask(pixels, 4)
    assert lm.shape == (1, 1, 8, 8) and lm.sum() == 1 and lm[0, 0, 1, 7] == 1


@pytest.mark.parametrize("kwargs, message", [
    ({"strength": 0.5}, "x_init"),
    ({"mask": torch.ones(1, 1, 1, 2)}, "x_init"),
    ({"x_init": torch.zeros(3, 1, 1, 2)}, "shape"),
    ({"x_init": torch.zeros(2, 1, 1, 2), "mask": torch.ones(1, 1, 2, 2)}, "mask has shape"),
    ({"x_init": torch.zeros(2, 1, 1, 2), "mask": torch.full((1, 1, 1, 2), 2.0)}, r"\[0, 1\]"),
    ({"x_init": torch.zeros(2, 1, 1, 2), "x_T": torch.zeros(2, 1, 1, 2)}, "not both"),
])
def test_inconsistent_edit_requests_are_refused(kwargs, message):
    s = NoiseSchedule("linear", 1000)
    with pytest.raises(ValueError, match=message):
        sample(gaussian_eps_model(s), (2, 1, 1, 2), s, "ddim", 10, progress=False, **kwargs)


# ------------------------------------------------------------------ the shipped pipeline


@pytest.fixture(scope="module")
def pipe():
    from diffusion_lib.pipeline import Pipeline

    return Pipeline.from_pretrained(SHIPPED, "cpu")


@pytest.fixture(scope="module")
def boot():
    from diffusion_lib.data import load_split

    test = load_split("test")
    return test.images[(test.labels == 9).nonzero()[0]]  # (1, 28, 28): the first ankle boot


def test_negative_prompt_replaces_the_empty_prompt(pipe):
    common = dict(num_images=3, num_inference_steps=5, seed=0, progress=False)
    plain = pipe(["a photo of a sneaker", "a photo of a bag"], **common)
    empty = pipe(["a photo of a sneaker", "a photo of a bag"], negative_prompt="", **common)
    assert torch.equal(plain.latents, empty.latents)
    steered = pipe(["a photo of a sneaker", "a photo of a bag"], negative_prompt=["a photo of a sandal", ""], **common)
    assert not torch.equal(steered.latents[:3], plain.latents[:3])
    assert torch.equal(steered.latents[3:], plain.latents[3:])  # the bag's negative prompt is still ""
    with pytest.raises(ValueError, match="2 prompts for 1"):
        pipe("a photo of a bag", negative_prompt=["", ""], **common)
    with pytest.raises(ValueError, match="class"):
        pipe("a photo of a bag", negative_prompt="a photo of a cat", **common)


def test_img2img_strength_moves_the_image_further(pipe, boot):
    """SDEdit of a real boot prompted as a boot: the result drifts from the original as the strength grows."""
    original = pipe.decode(pipe.encode(boot)).cpu()
    distances = []
    for strength in (0.1, 0.5, 1.0):
        out = pipe("a photo of an ankle boot", num_images=4, num_inference_steps=20, seed=0, progress=False,
                   image=boot, strength=strength)
        distances.append((out.model_space - original).pow(2).mean().sqrt().item())
    assert distances[0] < distances[1] < distances[2]
    assert distances[0] < 0.2


def test_inpainting_keeps_the_unmasked_latents(pipe, boot):
    mask = torch.zeros(1, 28, 28)
    mask[:, :, 14:] = 1  # redraw the right half: latent columns 4..7
    out = pipe("a photo of a sneaker", num_images=2, num_inference_steps=10, seed=0, progress=False, image=boot,
               mask=mask)
    z = pipe.encode(boot).cpu()
    assert torch.allclose(out.latents[..., :4], z[..., :4].expand(2, -1, -1, -1), atol=1e-5)
    assert (out.latents[..., 4:] - z[..., 4:]).abs().mean() > 0.1


@pytest.mark.parametrize("kwargs, error, message", [
    ({"strength": 0.5}, ValueError, "image="),
    ({"mask": torch.ones(1, 28, 28)}, ValueError, "image="),
    ({"image": torch.zeros(2, 28, 28, dtype=torch.uint8)}, ValueError, "2 images for 3"),
    ({"image": torch.zeros(1, 28, 28)}, ValueError, "uint8"),
    ({"image": [[0]]}, TypeError, "tensor"),
    ({"image": torch.zeros(1, 28, 28, dtype=torch.uint8), "mask": torch.ones(1, 27, 27)}, ValueError, "mask"),
    ({"image": torch.zeros(1, 28, 28, dtype=torch.uint8), "strength": 0}, ValueError, "strength"),
])
def test_bad_edit_arguments_name_the_argument(pipe, kwargs, error, message):
    with pytest.raises(error, match=message):
        pipe("a photo of a bag", num_images=3, num_inference_steps=2, seed=0, progress=False, **kwargs)


def gaussian_v_model(s: NoiseSchedule, mu: float = MU, sd: float = SD):
    """The exact v-predictor of x_0 ~ N(mu, sd^2): v = a E[eps | x_t] - b E[x_0 | x_t]."""

    def model_fn(x, t):
        abar = s.alphas_cumprod[t.cpu()].to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
        a, b = abar.sqrt(), (1 - abar).sqrt()
        var = a**2 * sd**2 + b**2
        return a * b * (x - a * mu) / var - b * (mu + a * sd**2 * (x - a * mu) / var)

    return model_fn


@pytest.mark.parametrize("sampler, steps", [("dpmsolver++", 20), ("ddim", 50), ("ddpm", 100)])
def test_zero_terminal_snr_with_v_prediction_samples_the_data_without_warnings(sampler, steps):
    """At zero terminal SNR, N(0, I) is exactly q(x_{T-1}): no brightness bias (notebook 02), no log(0) warning."""
    import warnings

    s = NoiseSchedule("scaled_linear", 1000, beta_start=0.00085, beta_end=0.012, rescale_zero_terminal_snr=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        x = sample(gaussian_v_model(s), (50_000, 1), s, sampler, steps, prediction_type="v_prediction",
                   generator=torch.Generator().manual_seed(3), progress=False, dtype=torch.float64)
    assert x.mean().item() == pytest.approx(MU, abs=0.02)
    assert x.std().item() == pytest.approx(SD, rel=0.05)
