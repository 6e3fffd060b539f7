"""Hidden cases of the code exercises: the edge cases a grader checks and students do not see.

This file is for instructors. It is not part of the student kit (``release`` leaves it out
and its leak check looks for it), and the sandbox hides it from the notebooks a student runs.
``python -m coursekit.autograde`` loads it by path and calls :func:`cases` for each exercise.
"""

from __future__ import annotations

import torch

from diffusion_lib.samplers import inference_timesteps
from diffusion_lib.schedules import NoiseSchedule

T = 1000


def _img(g, *shape, dtype=torch.float32):
    return torch.randn(shape, generator=g, dtype=dtype)


def _ex1_1(g):
    # the two ends of the schedule, a 4-channel latent batch of one, float64
    return [{"x0": _img(g, 2, 1, 4, 4), "eps": _img(g, 2, 1, 4, 4), "abar_t": torch.tensor([1.0, 0.0])},
            {"x0": _img(g, 1, 4, 8, 8), "eps": _img(g, 1, 4, 8, 8), "abar_t": torch.tensor([0.3])},
            {"x0": _img(g, 3, 5, dtype=torch.float64), "eps": _img(g, 3, 5, dtype=torch.float64),
             "abar_t": torch.tensor([0.9, 0.5, 1e-4], dtype=torch.float64)}]


def _ex1_2(g):
    s = NoiseSchedule("squaredcos_cap_v2", T)
    t = torch.tensor([999, 500, 1])
    return [{"x0": _img(g, 3, 4, 8, 8), "x_t": _img(g, 3, 4, 8, 8), "abar_t": s.alphas_cumprod[t].float(),
             "abar_prev": s.alphas_cumprod[t - 1].float()},
            # a jump of many steps at once, as a sampler with few steps makes
            {"x0": _img(g, 2, 1, 8, 8), "x_t": _img(g, 2, 1, 8, 8), "abar_t": torch.tensor([0.05, 0.2]),
             "abar_prev": torch.tensor([0.6, 0.9])}]


def _ex2_1(g):
    return [{"betas": NoiseSchedule(name, n).betas.clone()} for name, n in
            (("squaredcos_cap_v2", 1000), ("sigmoid", 1000), ("linear", 50), ("scaled_linear", 2))]


def _ex3_1(g):
    return [{"t": torch.tensor([0]), "dim": 2}, {"t": torch.arange(0, 1000, 37), "dim": 128},
            {"t": torch.tensor([0.5, 17.25]), "dim": 16}]


def _ex3_2(g):
    # v at zero terminal SNR is -x0; at abar = 1 it is eps
    return [{"x0": _img(g, 2, 4, 8, 8), "eps": _img(g, 2, 4, 8, 8), "abar_t": torch.tensor([0.0, 1.0]),
             "prediction_type": "v_prediction"},
            {"x0": _img(g, 1, 1, 2, 2), "eps": _img(g, 1, 1, 2, 2), "abar_t": torch.tensor([0.4]),
             "prediction_type": "epsilon"}]


def _ex4_1(g):
    zeros = torch.zeros(2, 4, 8, 8)
    return [{"mean": zeros, "logvar": zeros},  # q = N(0, I): KL 0
            {"mean": _img(g, 1, 4, 2, 2) * 3, "logvar": _img(g, 1, 4, 2, 2) - 9}]


def _ex5_1(g):
    same = _img(g, 3, 4, 8, 8)
    return [{"eps_uncond": same, "eps_cond": same, "w": 5.0},
            {"eps_uncond": _img(g, 1, 4, 8, 8), "eps_cond": _img(g, 1, 4, 8, 8), "w": 12.0},
            {"eps_uncond": _img(g, 2, 1, 3, 3, dtype=torch.float64), "eps_cond": _img(g, 2, 1, 3, 3, dtype=torch.float64),
             "w": 0.5}]


def _ex5_2(g):
    # large logits: a softmax without the max subtracted overflows to NaN here
    return [{"q": _img(g, 1, 2, 4, 4) * 60, "k": _img(g, 1, 2, 3, 4) * 60, "v": _img(g, 1, 2, 3, 2)},
            {"q": _img(g, 5, 1, 1), "k": _img(g, 5, 1, 1), "v": _img(g, 5, 1, 1)}]


def _ex6_1(g):
    return [  # the last step lands on x_0 (abar_prev = 1); a big jump with eta = 1; float64
        {"x_t": _img(g, 2, 4, 8, 8), "eps_hat": _img(g, 2, 4, 8, 8), "abar_t": 0.9, "abar_prev": 1.0, "eta": 0.0,
         "noise": _img(g, 2, 4, 8, 8)},
        {"x_t": _img(g, 1, 4, 8, 8), "eps_hat": _img(g, 1, 4, 8, 8), "abar_t": 0.01, "abar_prev": 0.95, "eta": 1.0,
         "noise": _img(g, 1, 4, 8, 8)},
        {"x_t": _img(g, 2, 3, dtype=torch.float64), "eps_hat": _img(g, 2, 3, dtype=torch.float64), "abar_t": 0.3,
         "abar_prev": 0.4, "eta": 0.25, "noise": _img(g, 2, 3, dtype=torch.float64)}]


def _ex6_2(g):
    s = NoiseSchedule("linear", T)
    return [{"z0": _img(g, 1, 4, 8, 8), "noise": _img(g, 1, 4, 8, 8), "alphas_cumprod": s.alphas_cumprod.float(),
             "timesteps": inference_timesteps(T, steps, spacing), "strength": strength}
            for steps, spacing, strength in ((20, "trailing", 0.01), (1, "trailing", 0.5), (50, "leading", 0.62),
                                             (10, "linspace", 0.95))]


def _ex6_3(g):
    soft = torch.rand(2, 1, 8, 8, generator=g)
    return [{"x": _img(g, 2, 4, 8, 8), "z0": _img(g, 2, 4, 8, 8), "noise": _img(g, 2, 4, 8, 8), "abar_prev": 0.7,
             "mask": soft},  # soft masks blend
            {"x": _img(g, 1, 4, 8, 8), "z0": _img(g, 1, 4, 8, 8), "noise": _img(g, 1, 4, 8, 8), "abar_prev": 1.0,
             "mask": torch.zeros(1, 1, 8, 8)}]  # the last step keeps z0 exactly


def _ex7_1(g):
    a = _img(g, 6, 6, dtype=torch.float64)
    sigma = a @ a.T
    low_rank = _img(g, 6, 2, dtype=torch.float64)
    return [{"mu1": torch.zeros(6, dtype=torch.float64), "sigma1": sigma, "mu2": torch.zeros(6, dtype=torch.float64),
             "sigma2": sigma},  # identical: 0
            {"mu1": _img(g, 6, dtype=torch.float64), "sigma1": low_rank @ low_rank.T,  # singular covariance
             "mu2": _img(g, 6, dtype=torch.float64), "sigma2": sigma}]


_CASES = {"ex1_1": _ex1_1, "ex1_2": _ex1_2, "ex2_1": _ex2_1, "ex3_1": _ex3_1, "ex3_2": _ex3_2, "ex4_1": _ex4_1,
          "ex5_1": _ex5_1, "ex5_2": _ex5_2, "ex6_1": _ex6_1, "ex6_2": _ex6_2, "ex6_3": _ex6_3, "ex7_1": _ex7_1}


def cases(grade_id: str) -> list[dict]:
    """The hidden cases of one exercise (fixed seed: every student gets the same)."""
    return _CASES[grade_id](torch.Generator().manual_seed(2024))
