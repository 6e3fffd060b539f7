"""Samplers pinned to diffusers' schedulers and to an analytic model of Gaussian data."""

import pytest
import torch

from diffusion_lib.guidance import classifier_free_guidance
from diffusion_lib.samplers import (
    SAMPLERS,
    TIMESTEP_SPACINGS,
    DPMSolverPP2M,
    ddim_step,
    ddpm_step,
    inference_timesteps,
    sample,
)
from diffusion_lib.schedules import NoiseSchedule

diffusers = pytest.importorskip("diffusers")

SD = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)


def schedule():
    return NoiseSchedule("scaled_linear", 1000, beta_start=0.00085, beta_end=0.012)


def gaussian_eps_model(s: NoiseSchedule, mu: float, sd: float):
    r"""The exact noise predictor for data x_0 ~ N(mu, sd^2).

    x_t = a x_0 + b eps with a = sqrt(abar), b = sqrt(1 - abar) is Gaussian with mean a mu and
    variance a^2 sd^2 + b^2, and E[eps | x_t] = b (x_t - a mu) / (a^2 sd^2 + b^2).
    """

    def model_fn(x, t):
        abar = s.alphas_cumprod[t.cpu()].to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
        a, b = abar.sqrt(), (1 - abar).sqrt()
        return b * (x - a * mu) / (a**2 * sd**2 + b**2)

    return model_fn


# ----------------------------------------------------------------- timesteps & errors
@pytest.mark.parametrize("spacing", TIMESTEP_SPACINGS)
def test_timesteps_match_diffusers_ddim(spacing):
    ref = diffusers.DDIMScheduler(num_train_timesteps=1000, timestep_spacing=spacing, steps_offset=0, **SD)
    ref.set_timesteps(50)
    assert inference_timesteps(1000, 50, spacing).tolist() == ref.timesteps.tolist()


@pytest.mark.parametrize("bad", [0, -3, 1001])
def test_impossible_step_counts(bad):
    with pytest.raises(ValueError, match="num_inference_steps"):
        sample(lambda x, t: x, (2, 1), schedule(), num_inference_steps=bad, progress=False)


def test_bad_settings_say_what_is_valid():
    with pytest.raises(ValueError, match="ddpm, ddim, dpmsolver"):
        sample(lambda x, t: x, (2, 1), schedule(), sampler="euler", progress=False)
    with pytest.raises(ValueError, match=r"eta must be a finite number in \[0, 1\]"):
        sample(lambda x, t: x, (2, 1), schedule(), sampler="ddim", eta=-0.5, progress=False)
    with pytest.raises(ValueError, match="leading, trailing, linspace"):
        sample(lambda x, t: x, (2, 1), schedule(), timestep_spacing="sideways", progress=False)
    with pytest.raises(ValueError, match="v_prediction"):
        zsnr = NoiseSchedule("scaled_linear", rescale_zero_terminal_snr=True)
        sample(lambda x, t: x, (2, 1), zsnr, progress=False)


# ---------------------------------------------------------------- diffusers as oracle
@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_one_ddim_step_equals_diffusers(eta, prediction_type):
    ref = diffusers.DDIMScheduler(
        num_train_timesteps=1000, clip_sample=False, set_alpha_to_one=True, steps_offset=0,
        prediction_type=prediction_type, **SD,
    )
    ref.set_timesteps(50)
    gen = torch.Generator().manual_seed(0)
    x, out, noise = (torch.randn(2, 4, 8, 8, generator=gen) for _ in range(3))
    for t in (ref.timesteps[0].item(), ref.timesteps[25].item(), ref.timesteps[-1].item()):
        expected = ref.step(out, t, x, eta=eta, variance_noise=noise).prev_sample
        ours, _ = ddim_step(schedule(), out, t, t - 20, x, eta, noise, prediction_type)
        torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_one_ddpm_step_equals_diffusers(prediction_type):
    ref = diffusers.DDPMScheduler(num_train_timesteps=1000, clip_sample=False, prediction_type=prediction_type, **SD)
    ref.set_timesteps(50)
    gen = torch.Generator().manual_seed(1)
    x, out = torch.randn(2, 4, 8, 8, generator=gen), torch.randn(2, 4, 8, 8, generator=gen)
    t = ref.timesteps[10].item()
    expected = ref.step(out, t, x, generator=torch.Generator().manual_seed(7)).prev_sample
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(7))
    ours, _ = ddpm_step(schedule(), out, t, t - 20, x, noise, prediction_type)
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_dpmsolver_pp_2m_sequence_equals_diffusers(prediction_type):
    steps = 20
    ref = diffusers.DPMSolverMultistepScheduler(
        num_train_timesteps=1000, algorithm_type="dpmsolver++", solver_order=2, timestep_spacing="trailing",
        final_sigmas_type="zero", prediction_type=prediction_type, **SD,
    )
    ref.set_timesteps(steps)
    s = schedule()
    timesteps = inference_timesteps(1000, steps, "trailing")
    assert timesteps.tolist() == ref.timesteps.tolist()

    # a fixed, nonlinear "model" so that every step's output depends on its input
    w = torch.randn(4, 4, generator=torch.Generator().manual_seed(2)) * 0.3
    model = lambda x, t: torch.tanh(torch.einsum("ij,bjhw->bihw", w, x)) + 0.001 * t.float().reshape(-1, 1, 1, 1) / 1000

    x_ref = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    x_ours = x_ref.clone()
    solver = DPMSolverPP2M(s)
    seq = timesteps.tolist()
    for i, t in enumerate(seq):
        tb = torch.full((2,), t)
        x_ref = ref.step(model(x_ref, tb), t, x_ref).prev_sample
        x_ours, _ = solver.step(model(x_ours, tb), t, seq[i + 1] if i + 1 < len(seq) else -1, x_ours, prediction_type)
        torch.testing.assert_close(x_ours, x_ref, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------- analytic Gaussian data
@pytest.mark.parametrize(
    "sampler,steps,kwargs",
    [
        ("ddpm", 1000, {}),
        ("ddim", 50, {}),
        ("ddim", 250, {"eta": 1.0}),
        ("dpmsolver++", 20, {}),
    ],
)
def test_sampler_recovers_gaussian_data(sampler, steps, kwargs):
    """Driven by the exact eps-predictor of N(mu, sd^2), each sampler returns N(mu, sd^2).

    x_T is drawn from the exact marginal q(x_T) = N(a mu, a^2 sd^2 + b^2) of the first visited
    timestep: starting from N(0, I) instead biases the deterministic samplers' mean by
    ~a mu sd (the schedule's SNR at T is not zero), which is a separate lesson.
    Tolerance: mean within 0.02 and std within 5% (with n = 100,000 the Monte Carlo error is
    ~0.003 on the mean and ~0.2% on the std; the rest is discretisation error of N steps).
    """
    mu, sd, n = 0.5, 0.8, 100_000
    s = schedule()
    t0 = inference_timesteps(1000, steps, "trailing")[0].item()
    abar = s.alphas_cumprod[t0].item()
    gen = torch.Generator().manual_seed(0)
    x_T = abar**0.5 * mu + (abar * sd**2 + 1 - abar) ** 0.5 * torch.randn(n, 1, generator=gen, dtype=torch.float64)
    x = sample(gaussian_eps_model(s, mu, sd), (n, 1), s, sampler=sampler, num_inference_steps=steps, x_T=x_T,
               generator=gen, progress=False, dtype=torch.float64, **kwargs)
    assert x.mean().item() == pytest.approx(mu, abs=0.02)
    assert x.std().item() == pytest.approx(sd, rel=0.05)


def test_nonzero_terminal_snr_biases_deterministic_sampling():
    """Starting DDIM from N(0, I) although q(x_T) has mean a_T mu shifts the output mean by ~ -a_T mu sd / sigma_T."""
    mu, sd, n = 0.5, 0.8, 100_000
    s = schedule()
    gen = torch.Generator().manual_seed(0)
    x = sample(gaussian_eps_model(s, mu, sd), (n, 1), s, "ddim", 200, generator=gen, progress=False, dtype=torch.float64)
    a_T = s.alphas_cumprod[999].item() ** 0.5
    # the probability-flow ODE of a Gaussian is affine: x_0 = mu + sd (x_T - a_T mu) / sigma_T
    expected_shift = -a_T * mu * sd / (a_T**2 * sd**2 + 1 - a_T**2) ** 0.5
    assert x.mean().item() - mu == pytest.approx(expected_shift, abs=0.008)


def test_ddim_eta0_is_deterministic_and_eta1_is_not():
    s = schedule()
    model = gaussian_eps_model(s, 0.0, 0.5)
    x_T = torch.randn(64, 1, generator=torch.Generator().manual_seed(0))
    a = sample(model, (64, 1), s, "ddim", 20, x_T=x_T, generator=torch.Generator().manual_seed(1), progress=False)
    b = sample(model, (64, 1), s, "ddim", 20, x_T=x_T, generator=torch.Generator().manual_seed(2), progress=False)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    c = sample(model, (64, 1), s, "ddim", 20, eta=1.0, x_T=x_T, generator=torch.Generator().manual_seed(2), progress=False)
    assert not torch.allclose(a, c)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_seeded_runs_reproduce(sampler):
    s = schedule()
    model = gaussian_eps_model(s, 0.0, 0.5)
    run = lambda: sample(model, (8, 1), s, sampler, 10, generator=torch.Generator().manual_seed(5), progress=False)
    torch.testing.assert_close(run(), run(), rtol=0, atol=0)


def test_trajectory_has_every_step():
    s = schedule()
    x, traj = sample(gaussian_eps_model(s, 0.0, 0.5), (4, 1), s, "ddim", 10, return_trajectory=True,
                     generator=torch.Generator().manual_seed(0), progress=False)
    assert len(traj.timesteps) == 10 and len(traj.x) == 11 and len(traj.x0_pred) == 10
    assert traj.timesteps == inference_timesteps(1000, 10, "trailing").tolist()
    torch.testing.assert_close(traj.x[-1], x)


# ------------------------------------------------------------------------- guidance
def conditional_model(x, t, c):
    """A toy model whose output depends on the condition: eps = x * (1 + c)."""
    return x * (1 + c.float().reshape(-1, 1))


def test_guidance_scale_one_is_the_conditional_model():
    x, t = torch.randn(5, 3), torch.zeros(5, dtype=torch.long)
    cond, uncond = torch.arange(5), torch.zeros(1, dtype=torch.long)
    guided = classifier_free_guidance(conditional_model, cond, uncond, 1.0)
    torch.testing.assert_close(guided(x, t), conditional_model(x, t, cond))


def test_guidance_is_one_batched_call_with_the_right_sign():
    calls = []

    def model(x, t, c):
        calls.append(x.shape[0])
        return conditional_model(x, t, c)

    x, t = torch.randn(5, 3), torch.zeros(5, dtype=torch.long)
    cond, uncond = torch.arange(5) + 1, torch.zeros(1, dtype=torch.long)
    out = classifier_free_guidance(model, cond, uncond, 3.0)(x, t)
    assert calls == [10]
    e_c, e_u = conditional_model(x, t, cond), conditional_model(x, t, uncond.expand(5))
    # eps_u + w (eps_c - eps_u): moves AWAY from the unconditional prediction
    torch.testing.assert_close(out, e_u + 3.0 * (e_c - e_u))
    torch.testing.assert_close(classifier_free_guidance(model, cond, uncond, 0.0)(x, t), e_u)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("sampler", SAMPLERS)
def test_samplers_on_cuda_match_cpu(sampler):
    s = schedule()
    model = gaussian_eps_model(s, 0.2, 0.3)
    kw = dict(generator=torch.Generator().manual_seed(0), progress=False)
    cpu = sample(model, (256, 1), s, sampler, 20, **kw)
    kw = dict(generator=torch.Generator().manual_seed(0), progress=False)
    gpu = sample(model, (256, 1), s, sampler, 20, device="cuda", **kw)
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-3, atol=1e-4)
