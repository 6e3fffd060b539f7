"""The course's code exercises: what each asks for, the library function it must match, and its check.

A student writes one function per exercise inside the ``### BEGIN SOLUTION`` region of a code
cell (nbgrader's convention; the student edition replaces the region by
``raise NotImplementedError``). The cell after it calls :func:`check`, which runs the function
on a few random inputs and compares it with the ``diffusion_lib`` function that the kit itself
uses. It prints what went wrong in words a student can act on and never raises, so a batch run
goes on to the end with a wrong or missing exercise. The grader runs the same visible cases
plus hidden ones that only instructors have, and scores the exercise by them.

Every exercise works on plain tensors and schedule values (``abar_t``: the
:math:`\\bar\\alpha_t` of each example, shape (B,)), so that it reads as the formula.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from diffusion_lib import editing, metrics, samplers
from diffusion_lib.attention import attention
from diffusion_lib.autoencoder import DiagonalGaussian
from diffusion_lib.guidance import classifier_free_guidance
from diffusion_lib.schedules import NoiseSchedule, rescale_to_zero_terminal_snr
from diffusion_lib.unet import timestep_embedding

T = 1000
EXERCISE_TAG = "coursekit_exercise"


def is_exercise_cell(cell) -> bool:
    """An exercise's solution cell (a notebook cell as nbformat node or plain dict)."""
    return cell.get("cell_type") == "code" and EXERCISE_TAG in ((cell.get("metadata") or {}).get("tags") or [])


def label(grade_id: str) -> str:
    """``ex6_1`` -> ``Exercise 6.1``."""
    return "Exercise " + grade_id[2:].replace("_", ".")


@dataclass(frozen=True)
class Exercise:
    """One exercise: the function the student writes and how it is checked.

    :param grade_id: nbgrader id of the solution cell (``ex1_1``); its check cell is ``ex1_1_check``
    :param function: the name the student's function must have
    :param signature: how it is called, as the notebook states it
    :param points: what passing every case (visible and hidden) earns
    :param cases: ``cases(generator) -> [kwargs, ...]``: inputs to call it with
    :param reference: ``reference(**kwargs)``: what it must return (computed with ``diffusion_lib``)
    :param atol: the tolerance of the comparison (relative as well, for large values)
    """

    grade_id: str
    function: str
    signature: str
    points: int
    cases: Callable[[torch.Generator], list[dict[str, Any]]]
    reference: Callable[..., Any]
    atol: float = 1e-5


# ----------------------------------------------------------------------- random inputs
def _schedule(g: torch.Generator) -> NoiseSchedule:
    names = ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid")
    return NoiseSchedule(names[int(torch.randint(len(names), (1,), generator=g))], T)


def _abar(g: torch.Generator, batch: int, schedule: NoiseSchedule | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Timesteps t (B,) and their abar_t (B,) of a random schedule."""
    schedule = schedule or _schedule(g)
    t = torch.randint(0, T, (batch,), generator=g)
    return t, schedule.alphas_cumprod[t].float()


def _images(g: torch.Generator, batch: int, shape=(1, 8, 8)) -> torch.Tensor:
    return torch.randn((batch, *shape), generator=g)


# ------------------------------------------------------------------ the references
def _schedule_with(values: torch.Tensor) -> NoiseSchedule:
    """A schedule whose first ``len(values)`` entries of abar are ``values``: the library's formulas, evaluated
    at exactly the abar a case gives (entry i is "timestep" i)."""
    s = NoiseSchedule("linear", T)
    s.alphas_cumprod = torch.cat([values.double().reshape(-1), s.alphas_cumprod[values.numel():]])
    return s


def _q_sample(x0, eps, abar_t):
    return _schedule_with(abar_t).add_noise(x0, eps, torch.arange(len(abar_t)))


def _posterior(x0, x_t, abar_t, abar_prev):
    # entry 2i holds abar_prev and entry 2i + 1 abar_t of example i: a jump from 2i + 1 to 2i
    s = _schedule_with(torch.stack([abar_prev, abar_t], dim=1))
    steps = torch.arange(len(abar_t)) * 2
    return s.posterior_mean_variance(x0, x_t, steps + 1, steps)


def _training_target(x0, eps, abar_t, prediction_type):
    return _schedule_with(abar_t).training_target(x0, eps, torch.arange(len(abar_t)), prediction_type)


def _kl(mean, logvar):
    return DiagonalGaussian(torch.cat([mean, logvar], dim=1)).kl()


def _guided(eps_uncond, eps_cond, w):
    b = eps_cond.shape[0]

    def model(x, t, c):  # a "network" that predicts eps_cond for the prompt (c = 1) and eps_uncond for ""
        rows = torch.arange(len(c)) % b  # the guided call stacks [uncond; cond]: row i is example i mod B
        chosen = (c == 1).reshape(-1, *([1] * (x.dim() - 1)))
        return torch.where(chosen, eps_cond[rows], eps_uncond[rows])

    guided = classifier_free_guidance(model, torch.ones(b, dtype=torch.long), torch.zeros(b, dtype=torch.long), w)
    return guided(torch.zeros_like(eps_cond), torch.zeros(b, dtype=torch.long))


def _ddim(x_t, eps_hat, abar_t, abar_prev, eta, noise):
    s = _schedule_with(torch.tensor([abar_prev, abar_t]))
    return samplers.ddim_step(s, eps_hat, 1, 0, x_t, eta, noise, "epsilon")[0]


def _sdedit(z0, noise, alphas_cumprod, timesteps, strength):
    s = _schedule_with(alphas_cumprod)
    visited = editing.img2img_timesteps(timesteps, strength)
    return visited, editing.noised_start(s, z0, int(visited[0]), noise)


def _inpaint(x, z0, noise, abar_prev, mask):
    known = abar_prev ** 0.5 * z0 + (1 - abar_prev) ** 0.5 * noise
    return editing.inpaint_blend(x, known, mask)


def _frechet(mu1, sigma1, mu2, sigma2):
    return metrics.frechet_distance(mu1.numpy(), sigma1.numpy(), mu2.numpy(), sigma2.numpy())


# ---------------------------------------------------------------------- the cases
def _q_sample_cases(g):
    out = []
    for batch in (4, 1, 3):
        x0, eps = _images(g, batch), _images(g, batch)
        out.append({"x0": x0, "eps": eps, "abar_t": _abar(g, batch)[1]})
    return out


def _posterior_cases(g):
    out = []
    for batch in (4, 2, 1):
        s = _schedule(g)
        t = torch.randint(1, T, (batch,), generator=g)
        out.append({"x0": _images(g, batch), "x_t": _images(g, batch), "abar_t": s.alphas_cumprod[t].float(),
                    "abar_prev": s.alphas_cumprod[t - 1].float()})
    return out


def _rescale_cases(g):
    return [{"betas": NoiseSchedule(name, T).betas.clone()} for name in ("scaled_linear", "linear")]


def _embedding_cases(g):
    return [{"t": torch.randint(0, T, (5,), generator=g), "dim": 32}, {"t": torch.tensor([0, 999]), "dim": 8}]


def _target_cases(g):
    out = []
    for prediction_type in ("epsilon", "v_prediction", "v_prediction"):
        x0, eps = _images(g, 3), _images(g, 3)
        out.append({"x0": x0, "eps": eps, "abar_t": _abar(g, 3)[1], "prediction_type": prediction_type})
    return out


def _kl_cases(g):
    return [{"mean": torch.randn(3, 4, 8, 8, generator=g), "logvar": torch.randn(3, 4, 8, 8, generator=g) - 3}
            for _ in range(2)]


def _guided_cases(g):
    return [{"eps_uncond": _images(g, 2), "eps_cond": _images(g, 2), "w": w} for w in (3.0, 0.0, 1.0, 7.5)]


def _attention_cases(g):
    return [{"q": torch.randn(2, 4, 16, 8, generator=g), "k": torch.randn(2, 4, 6, 8, generator=g),
             "v": torch.randn(2, 4, 6, 5, generator=g)},
            {"q": torch.randn(1, 3, 2, generator=g) * 4, "k": torch.randn(1, 7, 2, generator=g) * 4,
             "v": torch.randn(1, 7, 3, generator=g)}]


def _ddim_cases(g):
    out = []
    for eta in (0.0, 1.0, 0.5):
        s = _schedule(g)
        t = int(torch.randint(1, T, (1,), generator=g))
        t_prev = int(torch.randint(0, t, (1,), generator=g))
        out.append({"x_t": _images(g, 2), "eps_hat": _images(g, 2), "abar_t": s.alphas_cumprod[t].item(),
                    "abar_prev": s.alphas_cumprod[t_prev].item(), "eta": eta, "noise": _images(g, 2)})
    return out


def _sdedit_cases(g):
    out = []
    for strength, steps in ((0.5, 20), (0.3, 10), (1.0, 7)):
        s = _schedule(g)
        out.append({"z0": _images(g, 2, (4, 8, 8)), "noise": _images(g, 2, (4, 8, 8)),
                    "alphas_cumprod": s.alphas_cumprod.float(),
                    "timesteps": samplers.inference_timesteps(T, steps, "trailing"), "strength": strength})
    return out


def _inpaint_cases(g):
    out = []
    for _ in range(2):
        mask = (torch.rand(1, 1, 8, 8, generator=g) > 0.5).float()
        out.append({"x": _images(g, 2, (4, 8, 8)), "z0": _images(g, 2, (4, 8, 8)), "noise": _images(g, 2, (4, 8, 8)),
                    "abar_prev": float(torch.rand(1, generator=g)), "mask": mask})
    return out


def _frechet_cases(g):
    out = []
    for dim in (5, 1, 3):
        a, b = torch.randn(dim, dim, generator=g, dtype=torch.float64), torch.randn(dim, dim, generator=g,
                                                                                      dtype=torch.float64)
        out.append({"mu1": torch.randn(dim, generator=g, dtype=torch.float64), "sigma1": a @ a.T,
                    "mu2": torch.randn(dim, generator=g, dtype=torch.float64), "sigma2": b @ b.T + 0.1 * torch.eye(dim,
                                                                                             dtype=torch.float64)})
    return out


EXERCISES: dict[str, Exercise] = {e.grade_id: e for e in [
    Exercise("ex1_1", "q_sample", "q_sample(x0, eps, abar_t) -> x_t", 2, _q_sample_cases, _q_sample),
    Exercise("ex1_2", "posterior_mean_variance",
             "posterior_mean_variance(x0, x_t, abar_t, abar_prev) -> (mean, variance)", 3, _posterior_cases,
             _posterior),
    Exercise("ex2_1", "rescale_zero_terminal_snr", "rescale_zero_terminal_snr(betas) -> betas", 3, _rescale_cases,
             rescale_to_zero_terminal_snr),
    Exercise("ex3_1", "timestep_embedding", "timestep_embedding(t, dim) -> (B, dim)", 2, _embedding_cases,
             timestep_embedding),
    Exercise("ex3_2", "training_target", "training_target(x0, eps, abar_t, prediction_type) -> target", 2,
             _target_cases, _training_target),
    Exercise("ex4_1", "kl_to_standard_normal", "kl_to_standard_normal(mean, logvar) -> (B,)", 2, _kl_cases, _kl,
             atol=1e-3),
    Exercise("ex5_1", "guided_prediction", "guided_prediction(eps_uncond, eps_cond, w) -> eps_tilde", 2,
             _guided_cases, _guided),
    Exercise("ex5_2", "scaled_dot_product_attention", "scaled_dot_product_attention(q, k, v) -> (out, weights)", 3,
             _attention_cases, lambda q, k, v: attention(q, k, v)),
    Exercise("ex6_1", "ddim_step", "ddim_step(x_t, eps_hat, abar_t, abar_prev, eta, noise) -> x_prev", 3,
             _ddim_cases, _ddim),
    Exercise("ex6_2", "sdedit_start", "sdedit_start(z0, noise, alphas_cumprod, timesteps, strength) -> (visited, "
             "x_start)", 2, _sdedit_cases, _sdedit),
    Exercise("ex6_3", "inpaint_update", "inpaint_update(x, z0, noise, abar_prev, mask) -> x", 2, _inpaint_cases,
             _inpaint),
    Exercise("ex7_1", "frechet_distance", "frechet_distance(mu1, sigma1, mu2, sigma2) -> float", 3, _frechet_cases,
             _frechet, atol=1e-6),
]}


# ------------------------------------------------------------------------ comparing
def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {len(value)}"
    return f"{type(value).__name__} {value!r:.40}"


def difference(got: Any, expected: Any, atol: float, where: str = "the result") -> str | None:
    """Why ``got`` is not ``expected`` (in words), or None when they agree within ``atol`` (and 1e-4 relative)."""
    if isinstance(expected, (tuple, list)):
        if not isinstance(got, (tuple, list)) or len(got) != len(expected):
            return f"{where} should be a tuple of {len(expected)} values, got {_describe(got)}"
        for i, (a, b) in enumerate(zip(got, expected)):
            problem = difference(a, b, atol, f"value {i + 1} of {where}")
            if problem:
                return problem
        return None
    if isinstance(expected, torch.Tensor):
        if not isinstance(got, torch.Tensor):
            return f"{where} should be a tensor of shape {tuple(expected.shape)}, got {_describe(got)}"
        if tuple(got.shape) != tuple(expected.shape):
            try:
                torch.broadcast_shapes(got.shape, expected.shape)
                if got.numel() == expected.numel():
                    raise RuntimeError
            except RuntimeError:
                return f"{where} has shape {tuple(got.shape)}, expected {tuple(expected.shape)}"
        got_values, expected_values = got.detach().double().cpu(), expected.detach().double().cpu()
    else:
        try:
            got_values = torch.as_tensor(np.asarray(got, dtype=np.float64))
        except (TypeError, ValueError):
            return f"{where} should be a number, got {_describe(got)}"
        expected_values = torch.as_tensor(np.asarray(expected, dtype=np.float64))
    if not torch.isfinite(got_values).all():
        return f"{where} holds NaN or infinite values"
    gap = (got_values - expected_values).abs()
    allowed = atol + 1e-4 * expected_values.abs()
    if (gap > allowed).any():
        return f"{where} differs from diffusion_lib's by up to {gap.max().item():.3g} (allowed {atol:g})"
    return None


def _inputs(kwargs: dict[str, Any]) -> str:
    parts = []
    for name, value in kwargs.items():
        if isinstance(value, torch.Tensor) and value.numel() > 4:
            parts.append(f"{name}: shape {tuple(value.shape)}")
        elif isinstance(value, torch.Tensor):
            parts.append(f"{name} = {[round(v, 4) for v in value.flatten().tolist()]}")
        else:
            parts.append(f"{name} = {value!r}")
    return ", ".join(parts)


def _clone(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}


def _error_line(err: BaseException) -> str:
    # the student's own frames: a notebook cell (ipykernel names it /tmp/ipykernel_*/*.py) or "<string>"
    frames = [f for f in traceback.extract_tb(err.__traceback__)
              if f.filename.startswith("<") or "ipykernel_" in f.filename]
    where = f" (line {frames[-1].lineno} of your cell)" if frames else ""
    return f"{type(err).__name__}: {err}{where}"


def run_case(exercise: Exercise, fn: Callable, kwargs: dict[str, Any]) -> str | None:
    """One case: None when ``fn`` matches the reference (and leaves its inputs alone), else what is wrong."""
    expected = exercise.reference(**_clone(kwargs))
    given = _clone(kwargs)
    try:
        got = fn(**given)
    except NotImplementedError:
        return "not written yet: replace the `raise NotImplementedError` line by your code"
    except Exception as err:  # noqa: BLE001 - every error of student code is a message, not a crash
        return f"raised {_error_line(err)} for {_inputs(kwargs)}"
    problem = difference(got, expected, exercise.atol)
    if problem:
        return f"{problem}, for {_inputs(kwargs)}"
    for name, value in given.items():
        if isinstance(value, torch.Tensor) and not torch.equal(value, kwargs[name]):
            return f"it changed its input {name} in place; compute a new tensor instead"
    return None


def failures(grade_id: str, fn: Callable, cases: list[dict[str, Any]] | None = None, seed: int = 0) -> list[str]:
    """The problems of ``fn`` on ``cases`` (default: the visible cases of ``seed``); [] when it passes."""
    exercise = EXERCISES[grade_id]
    if not callable(fn):
        return [f"{exercise.function} is not a function: define it with def {exercise.signature.split(' ->')[0]}"]
    if cases is None:
        cases = exercise.cases(torch.Generator().manual_seed(seed))
    problems = []
    for kwargs in cases:
        problem = run_case(exercise, fn, kwargs)
        if problem:
            problems.append(problem)
            if problem.startswith("not written yet"):
                break
    return problems


def check(grade_id: str, fn: Callable) -> None:
    """The visible check of an exercise: print whether ``fn`` matches diffusion_lib; never raises. (It returns
    nothing, so the notebook cell shows only the message; :func:`failures` gives the problems as a list.)"""
    exercise = EXERCISES[grade_id]
    problems = failures(grade_id, fn)
    if not problems:
        print(f"OK: {exercise.function} matches diffusion_lib on {len(exercise.cases(torch.Generator()))} random "
              f"inputs ({exercise.points} points if the grader's hidden cases agree).")
        return
    print(f"Not yet: {exercise.function} ({exercise.signature})")
    for problem in problems[:3]:
        print(f"  - {problem}")


def of_notebook(notebook_name: str) -> list[str]:
    """The grade ids of a notebook's exercises, in order (``06_sampling.ipynb`` -> ex6_1, ex6_2, ex6_3)."""
    return [gid for gid in EXERCISES if gid.startswith(f"ex{int(notebook_name[:2])}_")]


def total_points() -> int:
    return sum(e.points for e in EXERCISES.values())


def function_source_problem(source: str) -> str | None:
    """Whether an exercise cell's source can be loaded at all (a syntax error is reported, not raised)."""
    try:
        compile(source, "<exercise>", "exec")
    except SyntaxError as err:
        return f"the cell does not compile: {err.msg} (line {err.lineno})"
    return None

