"""The noise schedules and the forward process, pinned to closed forms and to diffusers."""

import math

import pytest
import torch

from diffusion_lib.schedules import SCHEDULE_NAMES, NoiseSchedule

diffusers = pytest.importorskip("diffusers")


@pytest.mark.parametrize("name", SCHEDULE_NAMES)
@pytest.mark.parametrize("rescale", [False, True])
def test_alphas_cumprod_equal_diffusers(name, rescale):
    kwargs = {} if name == "squaredcos_cap_v2" else {"beta_start": 0.00085, "beta_end": 0.012}
    ours = NoiseSchedule(name, 1000, rescale_zero_terminal_snr=rescale, **kwargs)
    ref = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule=name, rescale_betas_zero_snr=rescale, **kwargs)
    # diffusers computes in float32: agree to float32 precision
    torch.testing.assert_close(ours.alphas_cumprod.float(), ref.alphas_cumprod, rtol=1e-5, atol=2e-6)
    torch.testing.assert_close(ours.betas.float(), ref.betas, rtol=1e-4, atol=1e-6)


def test_default_ranges_match_their_sources():
    # DDPM (Ho et al.): linear 1e-4 .. 0.02; Stable Diffusion: scaled_linear 0.00085 .. 0.012
    lin = NoiseSchedule("linear")
    assert lin.betas[0].item() == pytest.approx(1e-4) and lin.betas[-1].item() == pytest.approx(0.02)
    sd = NoiseSchedule("scaled_linear")
    assert sd.betas[0].item() == pytest.approx(0.00085) and sd.betas[-1].item() == pytest.approx(0.012)


def test_cosine_alias_and_closed_form():
    s = NoiseSchedule("cosine", 1000)
    assert s.name == "squaredcos_cap_v2"
    # away from the cap, \bar\alpha_t = f(t+1)/f(0) with f(u) = cos^2((u/T + 0.008)/1.008 pi/2)
    f = lambda u: math.cos((u / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2
    for t in (0, 100, 500, 900):
        assert s.alphas_cumprod[t].item() == pytest.approx(f(t + 1) / f(0), rel=1e-9)


def test_unknown_name_lists_valid_ones():
    with pytest.raises(ValueError) as err:
        NoiseSchedule("quadratic")
    for name in SCHEDULE_NAMES + ("cosine",):
        assert name in str(err.value)


def test_zero_terminal_snr():
    s = NoiseSchedule("scaled_linear", rescale_zero_terminal_snr=True)
    plain = NoiseSchedule("scaled_linear")
    assert s.alphas_cumprod[-1].item() == pytest.approx(0.0, abs=1e-12)
    assert s.snr()[-1].item() == pytest.approx(0.0, abs=1e-12)
    # the first step is unchanged
    assert s.alphas_cumprod[0].item() == pytest.approx(plain.alphas_cumprod[0].item(), rel=1e-9)
    # without rescaling, SD's schedule ends at a small but non-zero SNR (~0.0047)
    assert 1e-3 < plain.snr()[-1].item() < 1e-2


def test_snr_and_log_snr_consistent():
    s = NoiseSchedule("linear")
    t = torch.tensor([0, 10, 999])
    abar = s.alphas_cumprod[t]
    torch.testing.assert_close(s.snr(t), abar / (1 - abar))
    torch.testing.assert_close(s.log_snr(t), torch.log(s.snr(t)))
    # SNR decreases monotonically with t
    assert (s.snr().diff() < 0).all()


@pytest.mark.parametrize("t", [0, 50, 400, 999])
def test_add_noise_moments_monte_carlo(t):
    """E[x_t] = sqrt(abar_t) x0 and Var[x_t] = 1 - abar_t, within 5 standard errors."""
    s = NoiseSchedule("linear")
    n = 200_000
    x0 = torch.full((n,), 0.7, dtype=torch.float64)
    gen = torch.Generator().manual_seed(t)
    noise = torch.randn(n, generator=gen, dtype=torch.float64)
    xt = s.add_noise(x0, noise, torch.full((n,), t))
    abar = s.alphas_cumprod[t].item()
    var = 1 - abar
    assert abs(xt.mean().item() - math.sqrt(abar) * 0.7) < 5 * math.sqrt(var / n)
    # Var of the sample variance of a Gaussian: 2 var^2 / (n - 1)
    assert abs(xt.var().item() - var) < 5 * math.sqrt(2 * var**2 / (n - 1))


def test_add_noise_equals_iterated_process():
    """Composing q(x_t | x_{t-1}) t times gives the closed form's moments."""
    s = NoiseSchedule("linear", 1000)
    n, t = 100_000, 300
    gen = torch.Generator().manual_seed(0)
    x = torch.full((n,), -0.5, dtype=torch.float64)
    for k in range(t + 1):
        beta = s.betas[k].item()
        # x_k = sqrt(1 - beta_k) x_{k-1} + sqrt(beta_k) z
        x = math.sqrt(1 - beta) * x + math.sqrt(beta) * torch.randn(n, generator=gen, dtype=torch.float64)
    abar = s.alphas_cumprod[t].item()
    assert abs(x.mean().item() - math.sqrt(abar) * -0.5) < 5 * math.sqrt((1 - abar) / n)
    assert abs(x.var().item() - (1 - abar)) < 5 * math.sqrt(2 * (1 - abar) ** 2 / n)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_prediction_conversions_round_trip(prediction_type):
    s = NoiseSchedule("scaled_linear")
    gen = torch.Generator().manual_seed(1)
    x0 = torch.randn(8, 4, 8, 8, generator=gen, dtype=torch.float64)
    eps = torch.randn(8, 4, 8, 8, generator=gen, dtype=torch.float64)
    t = torch.tensor([0, 1, 10, 100, 300, 600, 900, 999])
    xt = s.add_noise(x0, eps, t)
    out = s.training_target(x0, eps, t, prediction_type)
    torch.testing.assert_close(s.pred_x0(out, xt, t, prediction_type), x0)
    torch.testing.assert_close(s.pred_eps(out, xt, t, prediction_type), eps)
    torch.testing.assert_close(s.pred_v(out, xt, t, prediction_type), s.velocity(x0, eps, t))


def test_velocity_definition():
    # v = sqrt(abar) eps - sqrt(1 - abar) x0, so |v|^2 = abar |eps|^2 + (1 - abar) |x0|^2 - 2 sqrt(abar (1 - abar))
    # <eps, x0>: for unit x0 and eps orthogonal to it, |v| = 1
    s = NoiseSchedule("linear")
    t = torch.tensor([500])
    abar = s.alphas_cumprod[500].item()
    v = s.velocity(torch.tensor([[1.0, 0.0]], dtype=torch.float64), torch.tensor([[0.0, 1.0]], dtype=torch.float64), t)
    torch.testing.assert_close(v, torch.tensor([[-math.sqrt(1 - abar), math.sqrt(abar)]], dtype=torch.float64))


def test_posterior_matches_bayes_monte_carlo():
    """q(x_{t-1} | x_t, x_0) from the formula vs regression of samples of the joint."""
    s = NoiseSchedule("linear", 1000)
    t = 200
    n = 400_000
    gen = torch.Generator().manual_seed(3)
    x0 = torch.zeros(n, dtype=torch.float64) + 0.3
    x_prev = s.add_noise(x0, torch.randn(n, generator=gen, dtype=torch.float64), torch.tensor([t - 1]))
    beta = s.betas[t].item()
    x_t = math.sqrt(1 - beta) * x_prev + math.sqrt(beta) * torch.randn(n, generator=gen, dtype=torch.float64)
    # with x0 fixed, (x_{t-1}, x_t) is jointly Gaussian: E[x_{t-1} | x_t] is linear in x_t
    cov = torch.cov(torch.stack([x_prev, x_t]))
    slope = (cov[0, 1] / cov[1, 1]).item()
    cond_var = (cov[0, 0] - cov[0, 1] ** 2 / cov[1, 1]).item()
    probe = torch.tensor([0.0, 1.0], dtype=torch.float64)
    mean, var = s.posterior_mean_variance(torch.full((2,), 0.3, dtype=torch.float64), probe, torch.tensor([t, t]))
    assert (mean[1] - mean[0]).item() == pytest.approx(slope, rel=0.02)
    assert var[0].item() == pytest.approx(cond_var, rel=0.02)
    # the textbook form: variance = (1 - abar_{t-1}) / (1 - abar_t) beta_t
    abar, abar_prev = s.alphas_cumprod[t].item(), s.alphas_cumprod[t - 1].item()
    assert var[0].item() == pytest.approx((1 - abar_prev) / (1 - abar) * beta, rel=1e-9)


def test_timestep_out_of_range_is_an_error():
    s = NoiseSchedule("linear", 100)
    with pytest.raises(ValueError, match="0..99"):
        s.add_noise(torch.zeros(1, 2), torch.zeros(1, 2), torch.tensor([100]))
