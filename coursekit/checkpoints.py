"""The checkpoint folder a notebook reads, checked in the validation cell before anything loads.

Notebooks take ``checkpoint_dir: str = "../checkpoints"``, a path relative to the
notebook. A notebook's kernel does not always run beside the notebook (papermill
and the graders set its working directory to where the *executed* copy goes), so
a relative path that does not exist from the working directory is also looked up
from the kit's ``notebooks/`` folder, where it means what the notebook's author
meant. Absolute paths are used as they are.

A missing folder or file stops the notebook at the validation cell with a
``ParameterError`` that names the parameter, the files, and how to fix it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import diffusion_lib

from .params import fail

NOTEBOOK_FOLDER = Path(diffusion_lib.__file__).resolve().parents[1] / "notebooks"


def resolve(value: str | Path) -> Path:
    """Where ``value`` points: itself if absolute or present from here, else relative to ``notebooks/``."""
    path = Path(value).expanduser()
    if path.is_absolute() or path.exists():
        return path
    beside_notebooks = (NOTEBOOK_FOLDER / path).resolve()
    return beside_notebooks if beside_notebooks.exists() else path


def directory(name: str, value: Any, components: Sequence[str] = ("vae", "denoiser")) -> Path:
    """``value`` as a folder that holds ``NAME.json`` and ``NAME.safetensors`` for every component.

    :param name: the parameter's name (for the message)
    :param components: e.g. ``("vae",)`` or ``("vae", "denoiser")``
    :raises ParameterError: the folder or one of the files is missing
    """
    if not isinstance(value, (str, Path)) or not str(value).strip():
        fail(name, value, "must be a folder path, e.g. '../checkpoints'")
    path = resolve(value)
    if not path.is_dir():
        where = "" if Path(value).expanduser().is_absolute() else f" (looked in {Path.cwd()} and {NOTEBOOK_FOLDER})"
        fail(name, value, f"no such folder{where}; pass the folder that holds the checkpoints, "
                           "e.g. -p checkpoint_dir /path/to/kit/checkpoints")
    missing = [f"{c}{ext}" for c in components for ext in (".json", ".safetensors") if not (path / f"{c}{ext}").is_file()]
    if missing:
        fail(name, value, f"{path} lacks {', '.join(missing)}; restore the shipped checkpoints or point "
                           "checkpoint_dir at a training run's output folder (python -m diffusion_lib train --out DIR)")
    return path
