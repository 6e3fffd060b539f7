"""Score the code exercises of a student's notebooks: visible and hidden cases, points per exercise.

::

    python -m coursekit.autograde NOTEBOOK [NOTEBOOK ...] --hidden grading/hidden_tests.py --out exercises.json

The grader runs this inside the sandbox, once per student, in a temporary folder holding copies
of their notebooks. For every exercise cell (tag ``coursekit_exercise``, nbgrader ``grade_id``
``exN_M``) it runs the cell's source alone in a fresh namespace (``torch``, ``math`` and ``numpy``
imported, as the notebook has them), takes the function the exercise names, and calls it on the
visible cases of :mod:`coursekit.exercises` and on the hidden cases of the instructors' file.
Half the points are for the visible cases, half for the hidden ones.

Every exercise is scored in a child process of its own (forked once torch is imported, so the
import is paid once per student): the student's code of one exercise cannot change the checks
or the scores of another, a crash or ``os._exit`` in it costs that exercise only, and each has
its own time limit. What remains: within its own child, a cell could with intent interfere with
its own checks; the sandbox keeps such code away from everything else, and the instructor's
review page shows every exercise's source beside its score.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import select
import signal
import sys
import time
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


def _score_here(grade_id: str, source: str, hidden_cases) -> dict[str, Any]:
    """Score one exercise in this process (the child of :func:`score`)."""
    exercise = E.EXERCISES[grade_id]
    result = {"exercise": exercise.function, "possible": exercise.points, "points": 0.0, "visible": [], "hidden": []}
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


def _in_child(work, *args) -> tuple[Any, str]:
    """``work(*args)`` in a forked child; returns (its JSON-able result, '') or (None, what went wrong).

    The child writes its result to a pipe and leaves with ``os._exit``; it is killed if it runs past
    the exercise's time limit (plus a margin for the limit inside it to act first)."""
    read_end, write_end = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child: whatever happens, it leaves through os._exit and never returns
        try:
            os.close(read_end)
            import torch

            # one thread: an OpenMP pool the parent used does not survive a fork (its threads are gone)
            torch.set_num_threads(1)
            try:
                payload = json.dumps({"result": work(*args)}).encode()
            except BaseException as err:  # noqa: BLE001 - whatever the student's code raised is the result
                payload = json.dumps({"error": f"{type(err).__name__}: {err}"[:300]}).encode()
            with os.fdopen(write_end, "wb") as pipe:
                pipe.write(payload)
        finally:
            os._exit(0)
    os.close(write_end)
    chunks, deadline = [], time.monotonic() + SECONDS_PER_EXERCISE + min(15, SECONDS_PER_EXERCISE)
    with os.fdopen(read_end, "rb") as pipe:
        while True:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([pipe], [], [], max(left, 0))
            if not ready:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return None, f"took longer than {SECONDS_PER_EXERCISE} s and was stopped"
            chunk = os.read(pipe.fileno(), 1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
    _, status = os.waitpid(pid, 0)
    try:
        message = json.loads(b"".join(chunks).decode())
    except (UnicodeDecodeError, json.JSONDecodeError):
        how = f"was killed by signal {-os.waitstatus_to_exitcode(status)}" if os.WIFSIGNALED(status) \
            else f"ended the checks early (exit code {os.waitstatus_to_exitcode(status)})"
        return None, f"the exercise's code {how}"
    if not isinstance(message, dict) or "result" not in message:
        return None, f"the checks failed: {message.get('error', 'no result') if isinstance(message, dict) else ''}"
    return message["result"], ""


def score(grade_id: str, source: str | None, hidden_cases) -> dict[str, Any]:
    """The result of one exercise: points, possible points, and the problems found (visible, hidden).

    Scored in a forked child process (see the module's text)."""
    exercise = E.EXERCISES[grade_id]
    result = {"exercise": exercise.function, "possible": exercise.points, "points": 0.0, "visible": [], "hidden": []}
    if source is None:
        result["visible"] = ["the exercise cell is missing from the notebook"]
        return result
    scored, problem = _in_child(_score_here, grade_id, source, hidden_cases)
    if scored is None:
        result["visible"] = [problem]
        return result
    # the child's numbers are checked like the rest of its output: points within 0..possible
    points = scored.get("points", 0.0) if isinstance(scored, dict) else 0.0
    result["points"] = min(max(float(points), 0.0), float(exercise.points)) if isinstance(points, (int, float)) \
        else 0.0
    for key in ("visible", "hidden"):
        found = scored.get(key, []) if isinstance(scored, dict) else []
        result[key] = [str(x)[:500] for x in found] if isinstance(found, list) else [str(found)[:500]]
    return result


def load_hidden(path: Path | None):
    """The ``cases(grade_id)`` function of the instructors' hidden-tests file (None without one)."""
    if path is None:
        return None
    spec = importlib.util.spec_from_file_location("coursekit_hidden_tests", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.cases


def grade_notebooks(notebooks: list[Path], hidden: Path | None) -> dict[str, Any]:
    """grade_id -> result for every exercise of the course notebooks ``notebooks`` (by their file names)."""
    hidden_cases = load_hidden(hidden)
    results = {}
    for notebook in notebooks:
        nb = json.loads(Path(notebook).read_text(encoding="utf-8"))
        cells = exercise_cells(nb)
        for gid in E.of_notebook(Path(notebook).name):
            results[gid] = score(gid, cells.get(gid), hidden_cases)
    return results


def grade_notebook(notebook: Path, hidden: Path | None) -> dict[str, Any]:
    return grade_notebooks([notebook], hidden)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m coursekit.autograde", description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", type=Path, nargs="+")
    parser.add_argument("--hidden", type=Path, default=None, help="the instructors' hidden-tests file")
    parser.add_argument("--out", type=Path, required=True, help="where to write the scores (JSON)")
    args = parser.parse_args(argv)
    results = grade_notebooks(args.notebooks, args.hidden)
    args.out.write_text(json.dumps(results, indent=1))
    for gid, r in results.items():
        print(f"{gid} {r['exercise']}: {r['points']:g}/{r['possible']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
