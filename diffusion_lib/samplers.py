r"""Samplers: from pure noise x_T back to data x_0 with a trained noise predictor.

Every sampler here takes any callable ``model_fn(x_t, t) -> model_output`` (the
U-Net, a guided U-Net, or an analytic formula in the tests) and a
:class:`~diffusion_lib.schedules.NoiseSchedule`. The model output is an epsilon,
v or x_0 prediction (``prediction_type``); each step first turns it into
\hat x_0 and \hat\epsilon with the schedule's conversions.

Notation (variable name -> paper symbol):

    abar_t, abar_prev -> \bar\alpha_t, \bar\alpha_{t-1} (DDPM) = \alpha_t, \alpha_{t-1} (DDIM paper)
    x0_hat            -> \hat x_0 = f_\theta(x_t), "predicted x_0" (DDIM eq. 12)
    eps_hat           -> \epsilon_\theta(x_t, t)
    sigma_t           -> \sigma_t(\eta) (DDIM eq. 16)
    t, t_prev         -> the timestep of x_t and the one a step goes to (t_prev < t; -1: the end)
DPM-Solver++ (Lu et al. 2022) writes its step from t_{i-1} to t_i; here that is t -> t_prev, and

    alpha_t, sigma_t  -> \alpha_t = sqrt(\bar\alpha_t), \sigma_t = sqrt(1 - \bar\alpha_t) (DPM-Solver's, not DDIM's)
    lam_t             -> \lambda_t = log(\alpha_t / \sigma_t) (half the log-SNR)
    h                 -> h_i = \lambda_{t_prev} - \lambda_t;  r -> r_i = h_{i-1} / h_i

Samplers
--------
``ddpm``         ancestral sampling (Ho et al. 2020, Algorithm 2), generalised to skip
                 steps: draw x_{t'} from the posterior q(x_{t'} | x_t, \hat x_0).
``ddim``         Song et al. 2021, eq. 12; ``eta=0`` is deterministic (an ODE solver),
                 ``eta=1`` has DDPM's variance.
``dpmsolver++``  DPM-Solver++(2M), Lu et al. 2022, Algorithm 2: a second-order
                 multistep solver of the probability-flow ODE in \lambda, which needs
                 ~20 model calls where DDPM needs 1000.

Timestep spacing (Lin et al. 2024, Table 2) picks which N of the T training
timesteps are visited: ``leading`` (0, k, 2k, ... with k = T // N; diffusers' DDIM
default), ``trailing`` (T-1, T-1-T/N, ...; starts from the noisiest step, the
default here) and ``linspace`` (N values evenly spread over [0, T-1]).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from . import checks, editing
from .schedules import NoiseSchedule, check_prediction_type

SAMPLERS = ("ddpm", "ddim", "dpmsolver++")
SAMPLER_ALIASES = {"dpm++": "dpmsolver++", "dpmsolver": "dpmsolver++", "dpm-solver++": "dpmsolver++"}
TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def resolve_sampler_name(name: str) -> str:
    canonical = SAMPLER_ALIASES.get(name.lower(), name.lower()) if isinstance(name, str) else name
    if canonical not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; valid samplers: {', '.join(SAMPLERS)}")
    return canonical


def inference_timesteps(num_train_timesteps: int, num_inference_steps: int, spacing: str = "trailing") -> torch.Tensor:
    """The N timesteps a sampler visits, noisiest first: a (N,) int64 tensor.

    :raises ValueError: for N < 1, N > T, or an unknown spacing
    """
    T, N = num_train_timesteps, num_inference_steps
    if not isinstance(N, (int, np.integer)) or isinstance(N, bool) or N < 1:
        raise ValueError(f"num_inference_steps must be a positive integer, got {N!r}")
    if N > T:
        raise ValueError(
            f"num_inference_steps={N} exceeds the {T} timesteps the model was trained with; use at most {T}"
        )
    if spacing == "leading":
        # 0, k, 2k, ..., (N-1)k with k = T // N
        steps = np.arange(0, N) * (T // N)
    elif spacing == "trailing":
        # T-1, T-1 - T/N, ..., rounded: always starts at the pure-noise end
        steps = np.round(np.arange(T, 0, -T / N)).astype(np.int64) - 1
    elif spacing == "linspace":
        steps = np.linspace(0, T - 1, N).round()
    else:
        raise ValueError(f"unknown timestep spacing {spacing!r}; valid: {', '.join(TIMESTEP_SPACINGS)}")
    steps = np.sort(steps.astype(np.int64))[::-1].copy()
    return torch.from_numpy(steps)


def randn(shape, generator: torch.Generator | None, device, dtype=torch.float32) -> torch.Tensor:
    """Standard normal noise drawn on the generator's device, then moved.

    Drawing on the generator's own device makes a CPU-seeded run give the same
    noise whether the model runs on the CPU or a GPU.
    """
    gen_device = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=gen_device, dtype=dtype).to(device)


# --------------------------------------------------------------------------- steps
def ddpm_step(
    schedule: NoiseSchedule,
    model_output: torch.Tensor,
    t: int,
    t_prev: int,
    x_t: torch.Tensor,
    noise: torch.Tensor | None,
    prediction_type: str = "epsilon",
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""One ancestral step x_t -> x_{t'} (t' = t_prev < t; -1 means "done").

    1. \hat x_0 from the model output
    2. posterior q(x_{t'} | x_t, \hat x_0): mean \tilde\mu and variance \tilde\beta (Ho et al. eq. 7)
    3. x_{t'} = \tilde\mu + sqrt(\tilde\beta) z,  z ~ N(0, I)   (no noise on the last step)

    :returns: (x_{t'}, \hat x_0), both shaped like ``x_t``
    """
    tt = torch.full((x_t.shape[0],), t, dtype=torch.long)
    # 1. \hat x_0
    x0_hat = schedule.pred_x0(model_output, x_t, tt, prediction_type)
    # 2. posterior mean and variance for the jump t -> t'
    mean, var = schedule.posterior_mean_variance(x0_hat, x_t, tt, torch.full_like(tt, t_prev))
    # 3. x_{t'} = \tilde\mu + sqrt(\tilde\beta) z
    if t_prev >= 0 and noise is not None:
        return mean + var.clamp(min=1e-20).sqrt() * noise, x0_hat
    return mean, x0_hat


def ddim_step(
    schedule: NoiseSchedule,
    model_output: torch.Tensor,
    t: int,
    t_prev: int,
    x_t: torch.Tensor,
    eta: float = 0.0,
    noise: torch.Tensor | None = None,
    prediction_type: str = "epsilon",
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""One DDIM step x_t -> x_{t'} (Song et al. 2021, eq. 12 and 16).

    :returns: (x_{t'}, \hat x_0)
    """
    tt = torch.full((x_t.shape[0],), t, dtype=torch.long)
    # 1. \bar\alpha_t and \bar\alpha_{t'} (\bar\alpha_{-1} = 1: the last step lands on x_0)
    abar_t = schedule.alphas_cumprod[t].item()
    abar_prev = schedule.alphas_cumprod[t_prev].item() if t_prev >= 0 else 1.0
    # 2. "predicted x_0" and the noise direction
    x0_hat = schedule.pred_x0(model_output, x_t, tt, prediction_type)
    eps_hat = schedule.pred_eps(model_output, x_t, tt, prediction_type)
    # 3. sigma_t(eta)^2 = eta^2 (1 - \bar\alpha_{t'}) / (1 - \bar\alpha_t) (1 - \bar\alpha_t / \bar\alpha_{t'})   (eq. 16)
    variance = (1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev)
    sigma = eta * variance**0.5
    # 4. "direction pointing to x_t": sqrt(1 - \bar\alpha_{t'} - sigma_t^2) \hat\epsilon
    direction = max(1 - abar_prev - sigma**2, 0.0) ** 0.5 * eps_hat
    # 5. x_{t'} = sqrt(\bar\alpha_{t'}) \hat x_0 + direction + sigma_t z   (eq. 12)
    x_prev = abar_prev**0.5 * x0_hat + direction
    if sigma > 0 and noise is not None:
        x_prev = x_prev + sigma * noise
    return x_prev, x0_hat


class DPMSolverPP2M:
    r"""DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2) for the data-prediction ODE.

    With \alpha_t = sqrt(\bar\alpha_t), \sigma_t = sqrt(1 - \bar\alpha_t), \lambda_t = log(\alpha_t / \sigma_t)
    and h = \lambda_{t'} - \lambda_t, the exact solution of the diffusion ODE from t to t' < t is

        x_{t'} = (\sigma_{t'} / \sigma_t) x_t + \sigma_{t'} \int_{\lambda_t}^{\lambda_{t'}} e^\lambda \hat x_0(\lambda) d\lambda.

    Holding \hat x_0 constant gives the first-order step (= DDIM with eta 0); a linear
    extrapolation from the last step's \hat x_0 gives the second-order "2M" step.
    The state (the last step's \hat x_0 and \lambda) lives in the instance: one instance per
    sampling run.
    """

    def __init__(self, schedule: NoiseSchedule):
        self.schedule = schedule
        self.last_x0: torch.Tensor | None = None
        self.last_lambda: float | None = None

    def _alpha_sigma_lambda(self, t: int) -> tuple[float, float, float]:
        abar = self.schedule.alphas_cumprod[t].item()
        alpha, sigma = abar**0.5, (1 - abar) ** 0.5
        if alpha == 0:
            # zero terminal SNR: lambda = -inf, so h = inf and the first step is x = sigma_t' x_T + alpha_t' x0_hat
            return alpha, sigma, -math.inf
        return alpha, sigma, float(np.log(alpha) - np.log(sigma))

    def step(self, model_output: torch.Tensor, t: int, t_prev: int, x: torch.Tensor, prediction_type: str = "epsilon") -> tuple[torch.Tensor, torch.Tensor]:
        """Advance ``x`` from timestep ``t`` to ``t_prev`` (-1: the end, sigma = 0): the paper's t_{i-1} -> t_i.

        :returns: (x_{t_prev}, \\hat x_0 at t)
        """
        tt = torch.full((x.shape[0],), t, dtype=torch.long)
        x0_hat = self.schedule.pred_x0(model_output, x, tt, prediction_type)
        alpha_t, sigma_t, lam_t = self._alpha_sigma_lambda(t)
        if t_prev < 0:
            # sigma = 0 at the end: lambda = +inf and the step returns \hat x_0 itself (first order)
            x_prev = x0_hat
        else:
            alpha_prev, sigma_prev, lam_prev = self._alpha_sigma_lambda(t_prev)
            # h_i = \lambda_{t_i} - \lambda_{t_{i-1}}
            h = lam_prev - lam_t
            # first order: x_{t_i} = (\sigma_{t_i} / \sigma_{t_{i-1}}) x_{t_{i-1}} - \alpha_{t_i} (e^{-h_i} - 1) D_i, D_i = \hat x_0
            D = x0_hat
            if self.last_x0 is not None:
                # r_i = h_{i-1} / h_i with h_{i-1} = \lambda_{t_{i-1}} - \lambda_{t_{i-2}}
                r = (lam_t - self.last_lambda) / h
                # second order: D_i = (1 + 1 / (2 r_i)) \hat x_0 - 1 / (2 r_i) \hat x_0^{last} = \hat x_0 + (\hat x_0 - \hat x_0^{last}) / (2 r_i)
                D = x0_hat + 0.5 * (x0_hat - self.last_x0) / r
            x_prev = (sigma_prev / sigma_t) * x - alpha_prev * np.expm1(-h) * D
        self.last_x0, self.last_lambda = x0_hat, lam_t
        return x_prev, x0_hat


# ------------------------------------------------------------------------- the loop
@dataclass
class Trajectory:
    """What a sampling run went through, for plots and animations.

    ``timesteps[i]`` is the timestep of step i; ``x[i]`` the input x_t of that step
    (``x[-1]`` the final sample, so ``len(x) == len(timesteps) + 1``); ``x0_pred[i]`` the
    model's \\hat x_0 at that step. Tensors are on the CPU.
    """

    timesteps: list[int] = field(default_factory=list)
    x: list[torch.Tensor] = field(default_factory=list)
    x0_pred: list[torch.Tensor] = field(default_factory=list)


class SamplingError(RuntimeError):
    """The model handed to a sampler returned something a sampler cannot use."""


def _check_model_output(out, x: torch.Tensor, i: int, n: int, t: int) -> None:
    """Stop at the first step whose model output is not a finite tensor shaped like x_t.

    A NaN or infinity would otherwise flow through every later step and decode to
    black images; a wrong shape would be broadcast silently or fail deep in a step.
    """
    where = f"at step {i + 1} of {n} (t={t})"
    if not isinstance(out, torch.Tensor):
        raise SamplingError(f"model_fn returned {type(out).__name__} {where}; it must return a tensor shaped like x_t")
    if out.shape != x.shape:
        raise SamplingError(f"model_fn returned shape {tuple(out.shape)} {where}, but x_t has shape "
                            f"{tuple(x.shape)}; the output must have the shape of its input")
    if not torch.isfinite(out).all():
        raise SamplingError(f"model_fn returned NaN or infinite values {where}; the sample would be garbage. Check "
                            "the model's weights (a diverged training run?) and the guidance scale.")


def sample(
    model_fn: ModelFn,
    shape: tuple[int, ...],
    schedule: NoiseSchedule,
    sampler: str = "dpmsolver++",
    num_inference_steps: int = 20,
    prediction_type: str = "epsilon",
    eta: float = 0.0,
    timestep_spacing: str = "trailing",
    generator: torch.Generator | None = None,
    x_T: torch.Tensor | None = None,
    return_trajectory: bool = False,
    progress: bool = True,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    x_init: torch.Tensor | None = None,
    strength: float = 1.0,
    mask: torch.Tensor | None = None,
) -> torch.Tensor | tuple[torch.Tensor, Trajectory]:
    r"""Generate samples by integrating the reverse process from x_T ~ N(0, I), or edit ``x_init``.

    :param model_fn: ``model_fn(x_t (B, ...), t (B,) int64) -> output (B, ...)``
    :param shape: the shape of the batch, e.g. (B, 4, 8, 8)
    :param sampler: ``ddpm``, ``ddim`` or ``dpmsolver++``
    :param num_inference_steps: N, 1..T
    :param eta: DDIM's stochasticity (0 = deterministic ODE, 1 = DDPM-like); DDIM only
    :param generator: makes the initial and per-step noise reproducible
    :param x_T: start from this noise instead of drawing it
    :param return_trajectory: also return a :class:`Trajectory`
    :param x_init: clean data to edit (``shape``): SDEdit starts from it noised to the first visited step
        (:mod:`diffusion_lib.editing`)
    :param strength: SDEdit's s in (0, 1]: visit only the last ceil(s N) of the N timesteps (needs ``x_init``)
    :param mask: inpainting, (B or 1, 1, h, w) in [0, 1], 1 = redraw: after every step the rest is replaced by
        ``x_init`` noised to the new level (needs ``x_init``)
    :returns: x_0 (``shape``) or ``(x_0, trajectory)``
    """
    sampler, eta = _check_sampling(schedule, sampler, prediction_type, eta)
    timesteps = inference_timesteps(schedule.num_train_timesteps, num_inference_steps, timestep_spacing)
    editing.check_edit_inputs(shape, x_init, strength, mask)
    if x_init is not None and x_T is not None:
        raise ValueError("pass either x_T (start from that noise) or x_init (edit that image), not both")
    if device is None:
        device = next((v.device for v in (x_T, x_init) if v is not None), "cpu")

    def draw() -> torch.Tensor:  # fresh Gaussian noise of the batch's shape, from ``generator``
        return randn(shape, generator, device, dtype)

    if x_init is None:
        # x_T ~ N(0, I)
        x = draw() if x_T is None else x_T.to(device=device, dtype=dtype)
    else:
        # SDEdit: start from x_init noised to the first visited timestep
        timesteps = editing.img2img_timesteps(timesteps, strength)
        x_init = x_init.to(device=device, dtype=dtype)
        mask = mask.to(device=device, dtype=dtype) if mask is not None else None
        x = editing.noised_start(schedule, x_init, int(timesteps[0]), draw())
    timesteps = timesteps.tolist()
    trajectory = Trajectory() if return_trajectory else None
    step = _stepper(sampler, schedule, prediction_type, eta, draw)

    for i, t in enumerate(tqdm(timesteps, desc=sampler, disable=not progress, leave=False)):
        t_prev = timesteps[i + 1] if i + 1 < len(timesteps) else -1
        t_batch = torch.full((shape[0],), t, dtype=torch.long, device=device)
        with torch.no_grad():
            out = model_fn(x, t_batch)
        _check_model_output(out, x, i, len(timesteps), t)
        if trajectory is not None:
            trajectory.timesteps.append(t)
            trajectory.x.append(x.detach().cpu())
        x, x0_hat = step(out, t, t_prev, x)
        if mask is not None:
            # the kept region: the original at the new noise level (exactly x_init after the last step)
            known = x_init if t_prev < 0 else editing.noised_start(schedule, x_init, t_prev, draw())
            x = editing.inpaint_blend(x, known, mask)
        if trajectory is not None:
            trajectory.x0_pred.append(x0_hat.detach().cpu())
    if trajectory is not None:
        trajectory.x.append(x.detach().cpu())
        return x, trajectory
    return x


def _check_sampling(schedule: NoiseSchedule, sampler: str, prediction_type: str, eta: float) -> tuple[str, float]:
    """The sampler's canonical name and ``eta``, checked to fit each other, the prediction type and the schedule."""
    sampler = resolve_sampler_name(sampler)
    check_prediction_type(prediction_type)
    eta = checks.eta("eta", eta)
    if eta != 0 and sampler != "ddim":
        raise ValueError(f"eta={eta} only applies to the ddim sampler, not {sampler!r}")
    if schedule.alphas_cumprod[-1] == 0 and prediction_type == "epsilon":
        raise ValueError(
            "this schedule has zero terminal SNR: at t = T-1 an epsilon prediction says nothing about x_0. "
            "Train and sample with prediction_type='v_prediction'."
        )
    return sampler, eta


def _stepper(sampler: str, schedule: NoiseSchedule, prediction_type: str, eta: float,
             draw: Callable[[], torch.Tensor]) -> Callable:
    """The chosen sampler's update as ``step(model_output, t, t_prev, x_t) -> (x_{t_prev}, x0_hat)``;
    ``draw()`` gives the fresh noise DDPM (and DDIM with eta > 0) adds, none after the last step."""
    if sampler == "ddpm":
        return lambda out, t, t_prev, x: ddpm_step(schedule, out, t, t_prev, x, draw() if t_prev >= 0 else None,
                                                   prediction_type)
    if sampler == "ddim":
        return lambda out, t, t_prev, x: ddim_step(schedule, out, t, t_prev, x, eta,
                                                   draw() if eta > 0 and t_prev >= 0 else None, prediction_type)
    solver = DPMSolverPP2M(schedule)  # keeps the previous step's x0_hat: one solver per sampling run
    return lambda out, t, t_prev, x: solver.step(out, t, t_prev, x, prediction_type)
