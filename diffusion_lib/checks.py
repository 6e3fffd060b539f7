"""Argument checks shared by the Python API and the command line.

Each check returns the value (converted to ``int`` / ``float``) or raises a
``ValueError`` (``TypeError`` for a wrong type) whose message names the parameter,
shows what it got and gives the valid range, e.g.::

    guidance_scale must be a finite number in [0, 50], got nan

The command line passes its option names (``--guidance``) so that its messages
name what the user typed.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import types
import typing
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


def strength(name: str, value: Any) -> float:
    """SDEdit's strength: the share of the sampler's steps that an img2img run visits, in (0, 1]."""
    value = real(name, value, 0.0, 1.0)
    if value == 0:
        raise ValueError(f"{name} must be above 0 (0 would not change the image at all); got 0")
    return value


def _describe(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin in (tuple, list):
        return f"a list of {_describe(args[0])}" if args else "a list"
    if origin is dict or tp is dict:
        return "an object (a dict)"
    if tp is type(None):
        return "null"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(tp, str(tp))


def _fits(value: Any, tp: Any) -> bool:
    """Whether a JSON value fits a field annotation (int, float, bool, str, X | None, tuple/list of X, dict)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if tp is type(None):
        return value is None
    if origin in (tuple, list) or tp in (tuple, list):
        if not isinstance(value, (list, tuple)):
            return False
        element = args[0] if args else Any
        return all(_fits(v, element) for v in value)
    if origin is dict or tp is dict:
        return isinstance(value, dict)
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(tp, type):
        return isinstance(value, tp)
    return True


def config_from_dict(cls: type, d: Any, convert: dict[str, Any] | None = None) -> Any:
    """Build the dataclass ``cls`` from a JSON object, refusing unknown keys and values of the wrong type.

    :param convert: ``{field: function}`` applied to a field's value after its check (e.g. ``tuple``);
        a field whose type is itself a dataclass is built by that class's ``from_dict``
    :raises ValueError: naming the class, the field, the type expected and the value found
    """
    if not isinstance(d, dict):
        raise ValueError(f"a {cls.__name__} must be a JSON object, got {type(d).__name__}")
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(d) - set(known), key=str)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys {unknown}; known keys: {sorted(known)}")
    values = {}
    for name, value in d.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):  # a nested config: its own from_dict checks it
            values[name] = hint.from_dict(value)
            continue
        if not _fits(value, hint):
            raise ValueError(f"{cls.__name__}.{name} must be {_describe(hint)}, got {value!r:.60}")
        values[name] = (convert or {}).get(name, lambda v: v)(value)
    return cls(**values)
