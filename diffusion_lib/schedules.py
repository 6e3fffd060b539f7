r"""Noise schedules and the forward (noising) process q(x_t | x_0).

The forward process adds Gaussian noise in T small steps (Ho et al. 2020, eq. 2):

    q(x_t | x_{t-1}) = N(x_t; sqrt(1 - beta_t) x_{t-1}, beta_t I)

With $\alpha_t = 1 - \beta_t$ and $\bar\alpha_t = \prod_{s \le t} \alpha_s$, the
composition of t Gaussian steps is again Gaussian (eq. 4), so any x_t can be drawn
from x_0 in one shot:

    q(x_t | x_0) = N(x_t; sqrt(\bar\alpha_t) x_0, (1 - \bar\alpha_t) I)
    x_t = sqrt(\bar\alpha_t) x_0 + sqrt(1 - \bar\alpha_t) \epsilon,   \epsilon ~ N(0, I)

A *schedule* is the choice of the betas. The names follow diffusers, because that
is what users meet in the wild (and what the tests compare against):

========================  ==========================================================
``linear``                betas evenly spaced from beta_start to beta_end (DDPM)
``scaled_linear``         sqrt(betas) evenly spaced, then squared: Stable Diffusion's
                          schedule (the CompVis code calls this one "linear"!)
``squaredcos_cap_v2``     \bar\alpha(s) = cos^2((s + 0.008) / 1.008 * pi/2), betas capped
                          at 0.999 (Nichol & Dhariwal 2021); alias ``cosine``
``sigmoid``               betas follow a sigmoid over [-6, 6] (GeoDiff)
========================  ==========================================================

The signal-to-noise ratio of x_t is SNR(t) = \bar\alpha_t / (1 - \bar\alpha_t).
Lin et al. (2024) noticed that common schedules never reach SNR = 0 at t = T, so the
model never sees pure noise in training but starts from pure noise at inference;
``rescale_zero_terminal_snr=True`` applies their Algorithm 1 (shift and scale
sqrt(\bar\alpha_t) so that the last one is exactly 0 and the first is unchanged).
A zero-terminal-SNR schedule needs v-prediction: at \bar\alpha_T = 0 an epsilon
prediction carries no information about x_0.

Conventions: timesteps are 0-based integers 0..T-1, as in diffusers (the paper's
t = 1..T shifted by one). Schedule tensors are float64 for accuracy; they are cast
to the data's dtype when used.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from . import checks

SCHEDULE_NAMES = ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid")
ALIASES = {"cosine": "squaredcos_cap_v2"}
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")

# Default beta ranges when none are given: DDPM's for linear and sigmoid,
# Stable Diffusion's for scaled_linear (the cosine schedule has none).
DEFAULT_BETA_RANGE = {
    "linear": (1e-4, 0.02),
    "scaled_linear": (0.00085, 0.012),
    "sigmoid": (1e-4, 0.02),
    "squaredcos_cap_v2": (None, None),
}


def resolve_schedule_name(name: str) -> str:
    """Canonical name for ``name`` (aliases resolved); a clear error for unknown ones."""
    canonical = ALIASES.get(name, name)
    if canonical not in SCHEDULE_NAMES:
        valid = ", ".join(SCHEDULE_NAMES + tuple(ALIASES))
        raise ValueError(f"unknown noise schedule {name!r}; valid names: {valid}")
    return canonical


def check_prediction_type(prediction_type: str) -> str:
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"unknown prediction_type {prediction_type!r}; valid: {', '.join(PREDICTION_TYPES)}")
    return prediction_type


def cosine_betas(num_steps: int, max_beta: float = 0.999) -> torch.Tensor:
    r"""Betas of the cosine schedule (Nichol & Dhariwal 2021, eq. 17).

    \bar\alpha(s) = cos^2((s + 0.008) / 1.008 * pi / 2) for s in [0, 1], and
    beta_t = 1 - \bar\alpha((t+1)/T) / \bar\alpha(t/T), capped at ``max_beta`` so the
    last step does not destroy everything at once (beta = 1 would make x_T
    independent of x_{T-1} in one jump).
    """

    def alpha_bar(s: float) -> float:
        return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = [min(1 - alpha_bar((i + 1) / num_steps) / alpha_bar(i / num_steps), max_beta) for i in range(num_steps)]
    return torch.tensor(betas, dtype=torch.float64)


def rescale_to_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    r"""Lin et al. (2024), Algorithm 1: make \bar\alpha_T = 0 while keeping \bar\alpha_1.

    With s_t = sqrt(\bar\alpha_t):  s'_t = (s_t - s_T) * s_1 / (s_1 - s_T),
    then betas are recovered from the ratios of consecutive \bar\alpha'.
    """
    sqrt_abar = torch.cumprod(1.0 - betas, dim=0).sqrt()
    first, last = sqrt_abar[0].clone(), sqrt_abar[-1].clone()
    # s'_t = (s_t - s_T) * s_1 / (s_1 - s_T)
    sqrt_abar = (sqrt_abar - last) * first / (first - last)
    abar = sqrt_abar**2
    # alpha_t = \bar\alpha_t / \bar\alpha_{t-1}  (and alpha_1 = \bar\alpha_1)
    alphas = torch.cat([abar[:1], abar[1:] / abar[:-1]])
    return 1.0 - alphas


class NoiseSchedule:
    r"""A discrete noise schedule: betas, alphas, \bar\alpha and what follows from them.

    :param name: one of ``linear``, ``scaled_linear``, ``squaredcos_cap_v2`` (``cosine``), ``sigmoid``
    :param num_train_timesteps: T, the number of diffusion steps the model is trained with
    :param beta_start, beta_end: the beta range (ignored by the cosine schedule); ``None`` picks
        the customary range for the name (see ``DEFAULT_BETA_RANGE``)
    :param rescale_zero_terminal_snr: rescale so that SNR(T-1) = 0 exactly (use with v-prediction)
    """

    def __init__(
        self,
        name: str = "scaled_linear",
        num_train_timesteps: int = 1000,
        beta_start: float | None = None,
        beta_end: float | None = None,
        rescale_zero_terminal_snr: bool = False,
    ):
        self.name = resolve_schedule_name(name)
        if not isinstance(num_train_timesteps, int) or num_train_timesteps < 2:
            raise ValueError(f"num_train_timesteps must be an integer >= 2, got {num_train_timesteps!r}")
        default_start, default_end = DEFAULT_BETA_RANGE[self.name]
        # 0 < beta_start <= beta_end < 1: each step keeps some signal (alpha_t = 1 - beta_t > 0)
        self.beta_start = default_start if beta_start is None else checks.real("beta_start", beta_start, 0.0, 1.0)
        self.beta_end = default_end if beta_end is None else checks.real("beta_end", beta_end, 0.0, 1.0)
        if self.name != "squaredcos_cap_v2" and not 0 < self.beta_start <= self.beta_end < 1:
            raise ValueError(f"the betas must satisfy 0 < beta_start <= beta_end < 1, got beta_start="
                             f"{self.beta_start:g}, beta_end={self.beta_end:g}")
        self.num_train_timesteps = T = num_train_timesteps
        self.rescale_zero_terminal_snr = bool(rescale_zero_terminal_snr)

        if self.name == "linear":
            # beta_t evenly spaced in [beta_start, beta_end]
            betas = torch.linspace(self.beta_start, self.beta_end, T, dtype=torch.float64)
        elif self.name == "scaled_linear":
            # sqrt(beta_t) evenly spaced: gentler at the start than "linear"
            betas = torch.linspace(self.beta_start**0.5, self.beta_end**0.5, T, dtype=torch.float64) ** 2
        elif self.name == "squaredcos_cap_v2":
            betas = cosine_betas(T)
        else:  # sigmoid
            # beta_t = beta_start + (beta_end - beta_start) * sigmoid(u_t),  u_t evenly spaced in [-6, 6]
            u = torch.linspace(-6, 6, T, dtype=torch.float64)
            betas = torch.sigmoid(u) * (self.beta_end - self.beta_start) + self.beta_start
        if self.rescale_zero_terminal_snr:
            betas = rescale_to_zero_terminal_snr(betas)

        self.betas = betas
        # alpha_t = 1 - beta_t
        self.alphas = 1.0 - betas
        # \bar\alpha_t = prod_{s <= t} alpha_s
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)

    # ------------------------------------------------------------------ summaries
    def snr(self, t: torch.Tensor | None = None) -> torch.Tensor:
        r"""SNR(t) = \bar\alpha_t / (1 - \bar\alpha_t); all T values when ``t`` is None."""
        abar = self.alphas_cumprod if t is None else self.alphas_cumprod[torch.as_tensor(t).long().cpu()]
        return abar / (1.0 - abar)

    def log_snr(self, t: torch.Tensor | None = None) -> torch.Tensor:
        r"""log SNR(t) = log \bar\alpha_t - log(1 - \bar\alpha_t) (the lambda_t of DPM-Solver is half of it)."""
        abar = self.alphas_cumprod if t is None else self.alphas_cumprod[torch.as_tensor(t).long().cpu()]
        return torch.log(abar) - torch.log1p(-abar)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "num_train_timesteps": self.num_train_timesteps,
            "beta_start": self.beta_start,
            "beta_end": self.beta_end,
            "rescale_zero_terminal_snr": self.rescale_zero_terminal_snr,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "NoiseSchedule":
        return cls(**d)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.to_dict().items())
        return f"NoiseSchedule({args})"

    # ------------------------------------------------------------ per-sample coefficients
    def _coef(self, values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """``values[t]`` shaped (B, 1, 1, ...) to broadcast against ``like`` (B, ...)."""
        t = torch.as_tensor(t, device=values.device).long().reshape(-1)
        if t.numel() == 1 and like.shape[0] != 1:
            t = t.expand(like.shape[0])
        if (t < 0).any() or (t >= self.num_train_timesteps).any():
            raise ValueError(f"timesteps must lie in 0..{self.num_train_timesteps - 1}, got {t.tolist()[:8]}")
        out = values[t].to(device=like.device, dtype=like.dtype)
        return out.reshape(-1, *([1] * (like.dim() - 1)))

    def sqrt_alphas_cumprod(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return self._coef(self.alphas_cumprod.sqrt(), t, like)

    def sqrt_one_minus_alphas_cumprod(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return self._coef((1.0 - self.alphas_cumprod).sqrt(), t, like)

    # ---------------------------------------------------------------- forward process
    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        r"""Draw x_t ~ q(x_t | x_0) given the noise: the closed form of the forward process.

        :param x0: clean data (B, ...)
        :param noise: \epsilon ~ N(0, I), same shape as ``x0``
        :param t: timesteps (B,) or a scalar, in 0..T-1
        :returns: x_t (B, ...)
        """
        # x_t = sqrt(\bar\alpha_t) x_0 + sqrt(1 - \bar\alpha_t) \epsilon
        return self.sqrt_alphas_cumprod(t, x0) * x0 + self.sqrt_one_minus_alphas_cumprod(t, x0) * noise

    def velocity(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        r"""The v-prediction target (Salimans & Ho 2022): v = sqrt(\bar\alpha_t) \epsilon - sqrt(1 - \bar\alpha_t) x_0."""
        # v = sqrt(\bar\alpha_t) \epsilon - sqrt(1 - \bar\alpha_t) x_0
        return self.sqrt_alphas_cumprod(t, x0) * noise - self.sqrt_one_minus_alphas_cumprod(t, x0) * x0

    def training_target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, prediction_type: str) -> torch.Tensor:
        """What a model of ``prediction_type`` is trained to output for (x0, noise, t)."""
        check_prediction_type(prediction_type)
        if prediction_type == "epsilon":
            return noise
        if prediction_type == "v_prediction":
            return self.velocity(x0, noise, t)
        return x0

    # ------------------------------------------------ conversions between predictions
    def pred_x0(self, model_output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, prediction_type: str = "epsilon") -> torch.Tensor:
        r"""The model's estimate of x_0, whatever it predicts.

        epsilon:  x_0 = (x_t - sqrt(1 - \bar\alpha_t) \epsilon) / sqrt(\bar\alpha_t)   (invert add_noise)
        v:        x_0 = sqrt(\bar\alpha_t) x_t - sqrt(1 - \bar\alpha_t) v
        sample:   x_0 is the output itself
        """
        check_prediction_type(prediction_type)
        a, s = self.sqrt_alphas_cumprod(t, x_t), self.sqrt_one_minus_alphas_cumprod(t, x_t)
        if prediction_type == "epsilon":
            # x_0 = (x_t - sqrt(1 - \bar\alpha_t) \epsilon) / sqrt(\bar\alpha_t)
            return (x_t - s * model_output) / a
        if prediction_type == "v_prediction":
            # x_0 = sqrt(\bar\alpha_t) x_t - sqrt(1 - \bar\alpha_t) v
            return a * x_t - s * model_output
        return model_output

    def pred_eps(self, model_output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, prediction_type: str = "epsilon") -> torch.Tensor:
        r"""The model's estimate of \epsilon, whatever it predicts.

        v:       \epsilon = sqrt(1 - \bar\alpha_t) x_t + sqrt(\bar\alpha_t) v
        sample:  \epsilon = (x_t - sqrt(\bar\alpha_t) x_0) / sqrt(1 - \bar\alpha_t)
        """
        check_prediction_type(prediction_type)
        a, s = self.sqrt_alphas_cumprod(t, x_t), self.sqrt_one_minus_alphas_cumprod(t, x_t)
        if prediction_type == "epsilon":
            return model_output
        if prediction_type == "v_prediction":
            # \epsilon = sqrt(1 - \bar\alpha_t) x_t + sqrt(\bar\alpha_t) v
            return s * x_t + a * model_output
        # \epsilon = (x_t - sqrt(\bar\alpha_t) x_0) / sqrt(1 - \bar\alpha_t)
        return (x_t - a * model_output) / s

    def pred_v(self, model_output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, prediction_type: str = "epsilon") -> torch.Tensor:
        r"""The model's estimate of v = sqrt(\bar\alpha_t) \epsilon - sqrt(1 - \bar\alpha_t) x_0."""
        eps = self.pred_eps(model_output, x_t, t, prediction_type)
        x0 = self.pred_x0(model_output, x_t, t, prediction_type)
        return self.velocity(x0, eps, t)

    # --------------------------------------------------------------- the posterior
    def posterior_mean_variance(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, t_prev: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        r"""Mean and variance of q(x_{t'} | x_t, x_0) for t' = t_prev < t (default t - 1).

        Ho et al. eq. 6-7, written for a jump from t to t' (Bayes' rule on two Gaussians),
        with \alpha_{t|t'} = \bar\alpha_t / \bar\alpha_{t'} and \beta_{t|t'} = 1 - \alpha_{t|t'}:

            mean     = sqrt(\bar\alpha_{t'}) \beta_{t|t'} / (1 - \bar\alpha_t) x_0
                       + sqrt(\alpha_{t|t'}) (1 - \bar\alpha_{t'}) / (1 - \bar\alpha_t) x_t
            variance = (1 - \bar\alpha_{t'}) / (1 - \bar\alpha_t) \beta_{t|t'}

        For t' = -1 ("before step 0") \bar\alpha_{t'} = 1: the mean is x_0 and the variance 0.
        """
        t = torch.as_tensor(t).long().reshape(-1)
        t_prev = t - 1 if t_prev is None else torch.as_tensor(t_prev).long().reshape(-1)
        abar = self._coef(self.alphas_cumprod, t, x_t)
        # \bar\alpha_{t'} with \bar\alpha_{-1} = 1 prepended, so index t' + 1
        abar_prev_all = torch.cat([self.alphas_cumprod.new_ones(1), self.alphas_cumprod])
        abar_prev = self._coef(abar_prev_all, t_prev.clamp(min=-1) + 1, x_t)
        # \alpha_{t|t'} = \bar\alpha_t / \bar\alpha_{t'}, \beta_{t|t'} = 1 - \alpha_{t|t'}
        alpha_step = abar / abar_prev
        beta_step = 1.0 - alpha_step
        mean = (abar_prev.sqrt() * beta_step / (1.0 - abar)) * x0 + (alpha_step.sqrt() * (1.0 - abar_prev) / (1.0 - abar)) * x_t
        variance = (1.0 - abar_prev) / (1.0 - abar) * beta_step
        return mean, variance
