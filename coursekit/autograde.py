"""Score the code exercises of one student notebook: visible and hidden cases, points per exercise.

::

    python -m coursekit.autograde NOTEBOOK --hidden grading/hidden_tests.py --out exercises.json

The grader runs this inside the sandbox, in the student's temporary folder. For every exercise
cell of the notebook (tag ``coursekit_exercise``, nbgrader ``grade_id`` ``exN_M``) it runs the
cell's source alone in a fresh namespace (``torch``, ``math`` and ``numpy`` imported, as the
notebook has them), takes the function the exercise names, and calls it on the visible cases
of :mod:`coursekit.exercises` and on the hidden cases of the instructors' file. Half the
points are for the visible cases, half for the hidden ones. Every exercise has its own time
limit, and a failure of one never stops the others.

What it cannot stop: code in a student's cell runs in this process and could, with intent,
interfere with the checks. The sandbox keeps such code away from everything else; the
instructor's review page shows every exercise's source beside its score.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import signal
import sys
from pathlib import Path
from typing import Any

from . import exercises as E

SECONDS_PER_EXERCISE = 60


class _Timeout(Exception):
    pass


def _alarm(signum, frame):  # noqa: ARG001 - the signal handler's signature
    raise _Timeout()


def exercise_cells(nb: dict) -> dict[str, str]:
    """grade_id -> source of every exercise cell of a notebook (as a plain dict)."""
    found = {}
    for cell in nb.get("cells", []):
        meta = cell.get("metadata", {}) or {}
        gid = (meta.get("nbgrader") or {}).get("grade_id")
        if E.is_exercise_cell(cell) and gid in E.EXERCISES:
            source = cell.get("source", "")
            found[gid] = "".join(source) if isinstance(source, list) else source
    return found


def load_function(source: str, name: str) -> tuple[Any, str]:
    """Run an exercise cell's source alone; returns (the function named ``name`` or None, problem)."""
    problem = E.function_source_problem(source)
    if problem:
        return None, problem
    import numpy as np
    import torch

    namespace: dict[str, Any] = {"__name__": "__student__", "torch": torch, "math": math, "np": np}
    try:
        exec(compile(source, "<exercise cell>", "exec"), namespace)  # noqa: S102 - grading student code, sandboxed
    except _Timeout:
        raise
    except Exception as err:  # noqa: BLE001 - any failure of the cell is the student's result
        return None, f"the cell raised {type(err).__name__}: {err}"
    fn = namespace.get(name)
    if not callable(fn):
        return None, f"the cell does not define a function {name}"
    return fn, ""


def score(grade_id: str, source: str | None, hidden_cases) -> dict[str, Any]:
    """The result of one exercise: points, possible points, and the problems found (visible, hidden)."""
    exercise = E.EXERCISES[grade_id]
    result = {"exercise": exercise.function, "possible": exercise.points, "points": 0.0, "visible": [], "hidden": []}
    if source is None:
        result["visible"] = ["the exercise cell is missing from the notebook"]
        return result
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(SECONDS_PER_EXERCISE)
    try:
        fn, problem = load_function(source, exercise.function)
        if fn is None:
            result["visible"] = [problem]
            return result
        result["visible"] = E.failures(grade_id, fn)
        if hidden_cases is not None:
            result["hidden"] = E.failures(grade_id, fn, hidden_cases(grade_id))
    except _Timeout:
        result["visible" if not result["visible"] else "hidden"].append(
            f"took longer than {SECONDS_PER_EXERCISE} s and was stopped")
    finally:
        signal.alarm(0)
    half = exercise.points / 2
    result["points"] = (0.0 if result["visible"] else half) + (0.0 if result["hidden"] or hidden_cases is None
                                                               else half)
    return result


def load_hidden(path: Path | None):
    """The ``cases(grade_id)`` function of the instructors' hidden-tests file (None without one)."""
    if path is None:
        return None
    spec = importlib.util.spec_from_file_location("coursekit_hidden_tests", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.cases


def grade_notebook(notebook: Path, hidden: Path | None) -> dict[str, Any]:
    nb = json.loads(Path(notebook).read_text(encoding="utf-8"))
    cells = exercise_cells(nb)
    wanted = E.of_notebook(Path(notebook).name)
    hidden_cases = load_hidden(hidden)
    return {gid: score(gid, cells.get(gid), hidden_cases) for gid in wanted}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m coursekit.autograde", description=__doc__.splitlines()[0])
    parser.add_argument("notebook", type=Path)
    parser.add_argument("--hidden", type=Path, default=None, help="the instructors' hidden-tests file")
    parser.add_argument("--out", type=Path, required=True, help="where to write the scores (JSON)")
    args = parser.parse_args(argv)
    results = grade_notebook(args.notebook, args.hidden)
    args.out.write_text(json.dumps(results, indent=1))
    for gid, r in results.items():
        print(f"{gid} {r['exercise']}: {r['points']:g}/{r['possible']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
