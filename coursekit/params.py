"""Checking a notebook's parameters before anything runs.

Every notebook starts with a cell tagged ``parameters`` (papermill overrides it
with ``-p name value``) and, right after it, one cell such as::

    device = params.check(device=device, quick=quick, seed=seed)
    mc_samples = params.positive_int("mc_samples", mc_samples)

A wrong value stops the notebook at that cell with a ``ValueError`` that names
the parameter, shows the value it got, and says which values work, instead of
failing twenty cells later with a shape error.
"""

from __future__ import annotations

import ast
import numbers
from pathlib import Path
from typing import Any, NoReturn, Sequence

import torch

from diffusion_lib.device import DEVICE_CHOICES, resolve_device


class ParameterError(ValueError):
    """A notebook parameter has a value the notebook cannot use."""


def fail(name: str, value: Any, what: str) -> NoReturn:
    """Refuse the notebook parameter ``name``: ``what`` says what it must be, and so how to fix it."""
    raise ParameterError(f"bad notebook parameter {name}={value!r} ({type(value).__name__}): {what}")


def boolean(name: str, value: Any) -> bool:
    """``value`` if it is a real bool (papermill's ``-p quick True`` gives one; ``"yes"`` or 1 do not count)."""
    if not isinstance(value, bool):
        fail(name, value, f"must be True or False (with papermill: -p {name} True)")
    return value


def integer(name: str, value: Any, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` as an int within [minimum, maximum] (either bound may be None); bools are refused."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        fail(name, value, "must be an integer")
    value = int(value)
    if minimum is not None and value < minimum:
        fail(name, value, f"must be an integer >= {minimum}")
    if maximum is not None and value > maximum:
        fail(name, value, f"must be an integer <= {maximum}")
    return value


def positive_int(name: str, value: Any) -> int:
    """An integer >= 1 (a count of samples, steps, images, ...)."""
    return integer(name, value, minimum=1)


def real(name: str, value: Any, minimum: float | None = None, maximum: float | None = None) -> float:
    """``value`` as a float within [minimum, maximum]; ints are accepted, bools and strings are not."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or value != value:
        fail(name, value, "must be a number")
    value = float(value)
    if minimum is not None and value < minimum:
        fail(name, value, f"must be >= {minimum}")
    if maximum is not None and value > maximum:
        fail(name, value, f"must be <= {maximum}")
    return value


def one_of(name: str, value: Any, choices: Sequence[str]) -> str:
    """``value`` if it is one of ``choices``."""
    if not isinstance(value, str) or value not in choices:
        fail(name, value, f"valid values: {', '.join(map(repr, choices))}")
    return value


def directory(name: str, value: Any) -> Path:
    """``value`` as a folder to write into, created if missing."""
    if not isinstance(value, (str, Path)) or not str(value).strip():
        fail(name, value, "must be a folder path, e.g. '.'")
    path = Path(value).expanduser()
    if path.exists() and not path.is_dir():
        fail(name, value, "is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        problem = f"cannot create it: {err.strerror}"
    else:
        return path
    fail(name, value, problem)


def set_cpu_threads(quick: bool) -> int:
    """Quick runs use one CPU thread; full runs keep torch's default. Returns the thread count now in use.

    Quick runs (tests, grading) often run side by side on a few shared cores, where several
    intra-op threads per kernel fight for the same cores and small element-wise operations
    become many times slower; one thread each is fastest there.
    """
    if boolean("quick", quick):
        torch.set_num_threads(1)
    return torch.get_num_threads()


DECLARED_HEADER = "# Parameters ("  # the first line of every course notebook's parameters cell
INJECTED_HEADER = "# Parameters"  # the first line of the cell papermill injects for -p NAME VALUE


def _assigned_names(source: str) -> set[str]:
    """The names a cell assigns at top level (``x = 1``, ``x: int = 1``)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return set()
    names = set()
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        names |= {t.id for t in targets if isinstance(t, ast.Name)}
    return names


def unknown_parameters(history: Sequence[str]) -> tuple[list[str], list[str]]:
    """Names papermill was given (``-p NAME VALUE``) that the notebook's parameters cell does not declare.

    :param history: the sources of the cells run so far, in order (IPython's ``In``)
    :returns: ``(unknown, declared)``, both sorted; empty when no cell was injected
    """
    declared = [src for src in history if src.startswith(DECLARED_HEADER)]
    injected = [src for src in history if src.split("\n", 1)[0].strip() == INJECTED_HEADER]
    if not declared or not injected:
        return [], []
    known = _assigned_names(declared[-1])
    return sorted(_assigned_names(injected[-1]) - known), sorted(known)


def _check_no_unknown_parameters() -> None:
    """Stop at the check cell when papermill was given a parameter this notebook does not have
    (``-p qiuck True`` would otherwise be ignored, and the slow full mode would run)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is None:
        return
    unknown, declared = unknown_parameters(shell.user_ns.get("In", []))
    if unknown:
        raise ParameterError(
            f"unknown notebook parameter{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} (given with "
            f"papermill -p); this notebook's parameters are: {', '.join(declared)}. Check the spelling."
        )


def check(*, device: Any = "auto", quick: Any = False, seed: Any = 0) -> torch.device:
    """Check the three parameters every notebook has; return the torch device to use.

    :param device: ``"auto"`` (CUDA, else MPS, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"``
    :param quick: True for the fast run used in tests and grading (small sizes, static figures)
    :param seed: a non-negative integer that seeds every random draw of the notebook
    :raises ParameterError: (a ``ValueError``) naming the bad parameter and the valid values, or
        naming a parameter given to papermill that the notebook does not have
    """
    _check_no_unknown_parameters()
    if not isinstance(device, (str, torch.device)):
        fail("device", device, f"must be a string; valid: {', '.join(DEVICE_CHOICES)}")
    try:
        resolved, problem = resolve_device(device), None
    except ValueError as err:
        resolved, problem = None, str(err)
    if problem is not None:
        fail("device", device, problem)
    boolean("quick", quick)
    integer("seed", seed, minimum=0)
    return resolved
