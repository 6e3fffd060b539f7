"""The numbers a grader needs, written beside the executed notebook.

Each notebook ends with one call::

    results.save("01", {"sqrt_abar_T": 0.0064, ...}, parameters=dict(quick=quick, seed=seed), directory=results_dir)

which writes ``results_01.json`` into ``directory`` (default: the kernel's working
directory, which papermill's ``cwd`` sets to where the executed notebook goes)::

    {"notebook": "01", "parameters": {...}, "values": {...}}

Tensors and numpy numbers become plain JSON numbers and lists; non-finite floats
become the strings "inf", "-inf" and "nan" (JSON has no literal for them).
"""

from __future__ import annotations

import json
import math
import numbers
from pathlib import Path
from typing import Any, Mapping

from diffusion_lib.atomic import atomic_write_text


def results_path(notebook: str, directory: str | Path = ".") -> Path:
    """Where the results of notebook ``notebook`` ("01", "02", ...) go."""
    return Path(directory) / f"results_{notebook}.json"


def to_json(value: Any) -> Any:
    """``value`` with tensors, numpy arrays and numpy scalars turned into JSON types."""
    if hasattr(value, "detach"):  # torch.Tensor
        value = value.detach().cpu().numpy()
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):  # numpy array or scalar
        value = value.tolist()
    if isinstance(value, Mapping):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        value = float(value)
        if math.isfinite(value):
            return value
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    raise TypeError(f"cannot write {type(value).__name__} to the results file; give numbers, strings, lists or dicts")


def save(notebook: str, values: Mapping[str, Any], parameters: Mapping[str, Any] | None = None,
         directory: str | Path = ".") -> Path:
    """Write ``results_<notebook>.json`` atomically and return its path."""
    path = results_path(notebook, directory)
    document = {"notebook": notebook, "parameters": to_json(dict(parameters or {})), "values": to_json(dict(values))}
    atomic_write_text(path, json.dumps(document, indent=2, allow_nan=False) + "\n")
    return path


def load(notebook: str, directory: str | Path = ".") -> dict[str, Any]:
    """Read back what :func:`save` wrote (``{"notebook", "parameters", "values"}``)."""
    path = results_path(notebook, directory)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run notebook {notebook} first (it writes this file in its last cell)")
    return json.loads(path.read_text())
