"""Argument checks shared by the Python API and the command line.

Each check returns the value (converted to ``int`` / ``float``) or raises a
``ValueError`` (``TypeError`` for a wrong type) whose message names the parameter,
shows what it got and gives the valid range, e.g.::

    guidance_scale must be a finite number in [0, 50], got nan

The command line passes its option names (``--guidance``) so that its messages
name what the user typed.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

MAX_SEED = 2**64 - 1  # torch.manual_seed takes an unsigned 64-bit seed
MAX_GUIDANCE = 50.0  # far beyond any useful scale (images saturate past ~15); larger values are typos


def _range(low: float | None, high: float | None) -> str:
    if low is not None and high is not None:
        return f" in [{low:g}, {high:g}]" if isinstance(low, float) else f" in [{low}, {high}]"
    if low is not None:
        return f" >= {low}"
    return f" <= {high}" if high is not None else ""


def integer(name: str, value: Any, low: int | None = None, high: int | None = None) -> int:
    """``value`` as an int within [low, high]; bools, floats and strings are refused."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer{_range(low, high)}, got {value!r} ({type(value).__name__})")
    value = int(value)
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"{name} must be an integer{_range(low, high)}, got {value}")
    return value


def real(name: str, value: Any, low: float | None = None, high: float | None = None) -> float:
    """``value`` as a finite float within [low, high]; NaN and infinities are refused, as are bools and strings."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number{_range(low, high)}, got {value!r} ({type(value).__name__})")
    value = float(value)
    if not math.isfinite(value) or (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"{name} must be a finite number{_range(low, high)}, got {value}")
    return value


def seed(name: str, value: Any) -> int:
    """A seed for ``torch.manual_seed``: an integer in [0, 2**64 - 1]."""
    return integer(name, value, 0, MAX_SEED)


def guidance_scale(name: str, value: Any) -> float:
    """Classifier-free guidance w: 0 = unconditional, 1 = conditional, > 1 = guided."""
    return real(name, value, 0.0, MAX_GUIDANCE)


def eta(name: str, value: Any) -> float:
    """DDIM's eta: 0 = deterministic, 1 = the DDPM posterior's variance; more would need sigma_t above
    sqrt(1 - \\bar\\alpha_{t-1}), which has no real square root."""
    return real(name, value, 0.0, 1.0)
