"""Grade a folder of submissions: run every student's notebooks, check their answers, write the report.

::

    python -m coursekit grade SUBMISSIONS --out grading/ --jobs 2 --timeout 600

``SUBMISSIONS`` holds what students handed in, in any shape :mod:`coursekit.submissions`
recognises (a folder or a ZIP per student, a platform's bulk download, renamed downloads); it is
only read, and normalised into ``OUT/.submissions/STUDENT/NN_*.ipynb``. For every student and
course notebook the grader

1. copies the student's folder to a fresh temporary folder and executes the notebook there
   with papermill in quick mode (``quick=True, device=cpu``, the shipped checkpoints), inside
   the sandbox of :mod:`coursekit.sandbox`, with a per-notebook time and memory limit;
2. records whether it ran (or the cell and error where it failed, or the time-out), the
   questions answered (answer cells with something other than the placeholder), questions
   whose cells were renamed or deleted, the numbers it wrote (``results_NN.json``) and the
   wall time;
3. writes ``grades.csv`` (one row per student and notebook), ``summary.html``, and for each
   student ``STUDENT/answers.pdf`` (their questions, answers and figures, exported inside the
   sandbox as well) beside their executed notebooks.

A notebook that trains (it declares an ``output_dir`` parameter: notebook 07) is first run once
as the reference, in the same sandbox with the same parameters, and its runs folder is copied
into every student's temporary folder. The notebook decides itself whether to reuse a run
(:func:`coursekit.runs.train_or_reuse`: same settings, same autoencoder, all epochs done), as it
does when a student runs it twice; a student who kept the default settings then reuses the
reference's run, which the same code, seed, device and thread count would train to the same
weights, and a student who changed a setting trains their own. ``--no-shared-runs`` trains
every student's runs.

Nothing a notebook does can stop the batch: every run is a separate process tree with its
own limits, and every failure becomes a row of the report.
"""

from __future__ import annotations

import csv
import dataclasses
import html
import json
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import nbformat

from . import gradebook
from .submissions import collect as collect_submissions
from . import questions as Q
from . import sandbox as sb
from . import REPO, numbered_notebooks

QUICK = {"quick": True, "device": "cpu"}
MAX_NOTEBOOK_BYTES = 100 * 2**20  # an executed notebook larger than this is not kept in the grading output
MAX_ERROR_CHARS = 500  # an error message in the gradebook (a student's traceback can be megabytes)
MAX_RESULTS_CHARS = 1_000_000  # a student's results_NN.json read and kept (written by their kernel: untrusted)


class GradeError(ValueError):
    """Grading cannot start as asked (a missing folder or file, an unknown notebook); the message says why."""


@dataclass
class QuestionCheck:
    """How a student's notebook holds the reference questions."""

    total: int
    answered: list[str] = field(default_factory=list)
    unanswered: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)   # neither question nor answer cell found
    altered: list[str] = field(default_factory=list)   # found, but the question or answer cell was renamed/changed
    texts: dict[str, str] = field(default_factory=dict)  # label -> what the student wrote


@dataclass
class NotebookResult:
    student: str
    notebook: str
    status: str                      # ok, failed, timeout, missing, unreadable, refused
    error_cell: int | None = None    # index of the failing cell in the student's notebook (0 = first cell)
    error: str = ""
    answered: int = 0
    questions: int = 0
    missing_questions: list[str] = field(default_factory=list)
    altered_questions: list[str] = field(default_factory=list)
    values: dict[str, Any] = field(default_factory=dict)
    wall_s: float = 0.0
    exercise_points: float = 0.0
    exercise_possible: float = 0.0


# ------------------------------------------------------------------------ the questions
def check_questions(student_nb: Any, reference_nb: Any) -> QuestionCheck:
    """Compare a student's notebook with the reference: which questions are there and answered.

    Answers are found by their nbgrader ``grade_id`` (which the student edition keeps), so
    moved cells are fine; a question whose label changed or whose cells were deleted is
    reported instead of crashing the grader.
    """
    reference = Q.find_questions(reference_nb)
    check = QuestionCheck(total=len(reference))
    cells = student_nb.get("cells", [])
    by_grade_id = {}
    for i, cell in enumerate(cells):
        gid = (cell.get("metadata", {}).get("nbgrader") or {}).get("grade_id")
        if cell.get("cell_type") == "code" and gid:
            by_grade_id.setdefault(gid, i)
    student_questions = {q.label: q for q in Q.find_questions(student_nb)}
    for ref in reference:
        index = by_grade_id.get(ref.grade_id)
        if index is None:
            asked = student_questions.get(ref.label)
            if asked is None or asked.answer_index is None:
                check.missing.append(ref.label)
                continue
            index = asked.answer_index
            check.altered.append(ref.label)  # the answer cell lost its metadata
        elif ref.label not in student_questions:
            check.altered.append(ref.label)  # the question cell was renamed or deleted
        source = cells[index].get("source", "")
        source = "".join(source) if isinstance(source, list) else source
        written = Q.written_answer(source)
        check.texts[ref.label] = written
        (check.answered if written else check.unanswered).append(ref.label)
    return check


# ---------------------------------------------------------------------- one notebook run
def _first_error(executed: Path) -> tuple[int | None, str]:
    """The first cell of an executed notebook whose output is an error, and its message."""
    try:
        nb = nbformat.read(executed, as_version=4)
    except Exception:  # noqa: BLE001 - a half-written notebook is reported, not fatal
        return None, ""
    # papermill adds cells (the injected parameters, an error banner): count the student's cells only
    added = {"injected-parameters", "papermill-error-cell-tag"}
    students_cells = [c for c in nb.cells if not added & set(c.get("metadata", {}).get("tags", []))]
    for i, cell in enumerate(students_cells):
        for output in cell.get("outputs", []) if cell.cell_type == "code" else []:
            if output.get("output_type") == "error":
                return i, f"{output.get('ename', 'Error')}: {output.get('evalue', '')}"[:MAX_ERROR_CHARS]
    return None, ""


def _tail(text: str, lines: int = 3) -> str:
    kept = [line for line in text.strip().splitlines() if line.strip()]
    return " | ".join(kept[-lines:])[:MAX_ERROR_CHARS]


def _scalars(values: Any) -> dict[str, Any]:
    if not isinstance(values, dict):
        return {}
    return {str(k): v for k, v in values.items() if isinstance(v, (int, float, str, bool)) or v is None}


def papermill_parameters(reference: Path, extra: dict[str, Any]) -> list[str]:
    """``-p name value`` for the quick-mode parameters the reference notebook declares."""
    import papermill

    declared = papermill.inspect_notebook(str(reference))
    wanted = {**QUICK, "checkpoint_dir": str(REPO / "checkpoints"), "evaluator_dir": str(REPO / "checkpoints"),
              "results_dir": ".", **extra}
    args = []
    for name, value in wanted.items():
        if name in declared:
            args += ["-p", name, str(value)]
    return args


def papermill_command(notebook: str, executed: str, work: Path, reference: Path, timeout_s: float,
                      extra: dict[str, Any]) -> list[str]:
    """The command that runs ``notebook`` (in ``work``) in quick mode and writes ``executed``; papermill
    interrupts any cell that runs longer than ``timeout_s``."""
    return [sys.executable, "-m", "papermill", notebook, executed, "--cwd", str(work), "--kernel", "python3",
            "--no-progress-bar", "--execution-timeout", str(max(1, int(timeout_s))),
            *papermill_parameters(reference, extra)]


def symlinks_in(folder: Path) -> list[str]:
    """Symbolic links anywhere in ``folder`` (relative paths), without following any."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        for entry in dirnames + filenames:
            if os.path.islink(os.path.join(dirpath, entry)):
                found.append(os.path.relpath(os.path.join(dirpath, entry), folder))
    return sorted(found)


def read_student_notebook(source: Path) -> tuple[Any, str]:
    """The student's notebook as a dict, or None and why it cannot be graded."""
    try:
        text = source.read_text(encoding="utf-8")
        nb = json.loads(text)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        return None, f"not a notebook (not JSON: {err})"[:MAX_ERROR_CHARS]
    if not isinstance(nb, dict):
        return None, "not a notebook (the JSON is not an object)"
    version = nb.get("nbformat")
    if version != 4:
        return None, (f"an nbformat {version} notebook, which the grader cannot run; open it in JupyterLab and save "
                      "it (that writes nbformat 4), then submit it again")
    try:
        nbformat.validate(nbformat.from_dict(nb))
    except Exception as err:  # noqa: BLE001 - every way a notebook can be invalid is one report row
        return None, f"not a valid notebook ({str(err).splitlines()[0][:200]})"
    return nb, ""


# lines of a run's stderr that are noise, not the cause of a failure
_NOISE = ("warn", "Warning", "DeprecationWarning", "platformdirs", "frozen modules", "PYDEVD", "-Xfrozen_modules",
          "debugger", "Input Notebook:", "Output Notebook:", "Executing", "Black is not installed")


def failure_reason(stderr: str, returncode: int | None) -> str:
    """The cause of a failed run in plain words (a dead kernel, a signal), without start-up warnings."""
    if "DeadKernelError" in stderr or "Kernel died" in stderr or "kernel died" in stderr:
        return "the kernel died (the code killed it, e.g. with os._exit or a signal, or it crashed)"
    kept = _tail("\n".join(line for line in stderr.splitlines() if not any(n in line for n in _NOISE)))
    if kept:
        return kept
    if returncode is not None and returncode < 0:
        return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


def run_one(student_dir: Path, reference: Path, out_dir: Path, sandbox: sb.Sandbox, limits: sb.Limits,
            hide: list[Path], extra_parameters: dict[str, Any], shared: Path | None = None) -> NotebookResult:
    """Execute one student's copy of ``reference.name`` in a temporary copy of their folder.

    :param shared: the reference's runs folder (:func:`shared_runs`), copied into the student's folder
        wherever their submission holds no run of that name
    """
    student, name = student_dir.name, reference.name
    result = NotebookResult(student, name, "missing")
    reference_nb = nbformat.read(reference, as_version=4)
    result.questions = len(Q.find_questions(reference_nb))
    links = symlinks_in(student_dir)
    if links:
        result.status = "refused"
        result.error = (f"the submission holds symbolic links ({', '.join(links[:3])}{' ...' if len(links) > 3 else ''}),"
                        " which are not accepted: submit the files themselves")
        return result
    source = student_dir / name
    if not source.is_file():
        result.error = f"{name} not found in the submission"
        result.missing_questions = [q.label for q in Q.find_questions(reference_nb)]
        return result
    student_nb, problem = read_student_notebook(source)
    if student_nb is None:
        result.status, result.error = "unreadable", problem
        return result
    check = check_questions(student_nb, reference_nb)
    result.answered = len(check.answered)
    result.missing_questions, result.altered_questions = check.missing, check.altered
    target = out_dir / student
    target.mkdir(parents=True, exist_ok=True)
    (target / f"answers_{name[:2]}.json").write_text(json.dumps(check.texts, indent=1, ensure_ascii=False))

    timeout_s = limits.timeout_s
    with tempfile.TemporaryDirectory(prefix="coursekit-grade-") as tmp:
        work = Path(tmp) / "work"
        shutil.copytree(student_dir, work, symlinks=True)
        if shared is not None:
            seed_runs(shared, work)
        executed = work / f".executed-{name}"
        command = papermill_command(name, executed.name, work, reference, timeout_s, extra_parameters)
        done = sb.run(command, work, sandbox, dataclasses.replace(limits, timeout_s=timeout_s + 30), hide=hide)
        result.wall_s = round(done.seconds, 1)
        cell, error = _first_error(executed) if executed.is_file() else (None, "")
        if done.timed_out:
            result.status, result.error_cell = "timeout", cell
            result.error = f"killed after {timeout_s:.0f} s"
        elif done.limit:
            result.status, result.error_cell = "failed", cell
            result.error = f"stopped: it {done.limit}"
        elif done.returncode == 0:
            result.status = "ok"
        else:
            result.status, result.error_cell = "failed", cell
            result.error = error or failure_reason(done.stderr, done.returncode)
        # papermill's per-cell limit interrupts the kernel: the cell shows a KeyboardInterrupt
        if result.status == "failed" and ("CellTimeoutError" in done.stderr or "timed out" in done.stderr):
            result.status = "timeout"
            result.error = f"a cell ran longer than {timeout_s:.0f} s and was interrupted ({result.error})"
        results_file = work / f"results_{name[:2]}.json"
        if results_file.is_file() and not results_file.is_symlink():
            try:
                payload = json.loads(results_file.read_text()[:MAX_RESULTS_CHARS])
                result.values = _scalars(payload.get("values") if isinstance(payload, dict) else None)
                (target / results_file.name).write_text(json.dumps(payload, indent=2)[:MAX_RESULTS_CHARS])
            except (json.JSONDecodeError, UnicodeDecodeError):
                result.values = {"error": "results file is not valid JSON"}
        if executed.is_file() and not executed.is_symlink():
            size = executed.stat().st_size
            if size <= MAX_NOTEBOOK_BYTES:
                shutil.copyfile(executed, target / name)
            else:
                result.error = (result.error + "; " if result.error else "") + \
                    f"the executed notebook ({size / 2**20:.0f} MB of output) was too large to keep"
    return result


def score_exercises(student_dir: Path, graded: list[NotebookResult], out_dir: Path, sandbox: sb.Sandbox,
                    limits: sb.Limits, hide: list[Path], hidden_tests: Path | None) -> None:
    """Run :mod:`coursekit.autograde` once for a student's notebooks (those ``graded`` that could be read), in a
    fresh sandboxed folder; keep the scores per notebook (``exercises_NN.json``: results and the cells' sources)
    and add the points to each result."""
    from .autograde import SECONDS_PER_EXERCISE, exercise_cells
    from .exercises import EXERCISES, of_notebook

    wanted = {r.notebook: of_notebook(r.notebook) for r in graded
              if r.status not in ("missing", "unreadable", "refused") and of_notebook(r.notebook)}
    if not wanted:
        return
    every = [gid for gids in wanted.values() for gid in gids]
    with tempfile.TemporaryDirectory(prefix="coursekit-exercises-") as tmp:
        work = Path(tmp)
        for name in wanted:
            shutil.copyfile(student_dir / name, work / name)
        command = [sys.executable, "-m", "coursekit.autograde", *wanted, "--out", "scores.json"]
        if hidden_tests is not None:
            shutil.copyfile(hidden_tests, work / "hidden_tests.py")
            command += ["--hidden", "hidden_tests.py"]
        budget = (SECONDS_PER_EXERCISE + 15) * len(every) + 60
        done = sb.run(command, work, sandbox, dataclasses.replace(limits, timeout_s=budget), hide=hide)
        scores_file = work / "scores.json"
        try:
            scores = json.loads(scores_file.read_text()) if scores_file.is_file() else {}
        except (json.JSONDecodeError, UnicodeDecodeError):
            scores = {}
    if not isinstance(scores, dict):
        scores = {}
    why = "timed out" if done.timed_out else failure_reason(done.stderr, done.returncode)
    for result in graded:
        gids = wanted.get(result.notebook)
        if not gids:
            continue
        mine = {gid: scores.get(gid) for gid in gids}
        for gid, r in mine.items():
            if not isinstance(r, dict):  # the checks did not finish: nothing for this exercise
                mine[gid] = r = {"exercise": EXERCISES[gid].function, "possible": EXERCISES[gid].points,
                                 "visible": [f"the exercise checks did not finish ({why})"], "hidden": []}
            points = r.get("points", 0.0)  # what the student's code wrote is not trusted: points within 0..possible
            r["points"] = min(max(float(points), 0.0), float(EXERCISES[gid].points)) \
                if isinstance(points, (int, float)) and not isinstance(points, bool) else 0.0
        result.exercise_possible = float(sum(EXERCISES[g].points for g in gids))
        result.exercise_points = sum(r["points"] for r in mine.values())
        sources = exercise_cells(json.loads((student_dir / result.notebook).read_text(encoding="utf-8")))
        (out_dir / result.student / f"exercises_{result.notebook[:2]}.json").write_text(
            json.dumps({"results": mine, "sources": {g: sources.get(g, "") for g in gids}}, indent=1))


# --------------------------------------------------------------- runs shared by every student
def runs_folder(reference: Path) -> str | None:
    """The folder (relative to the working directory) where a training notebook keeps its runs: the first part
    of its ``output_dir`` parameter's default (``runs`` for ``runs/student``); None for a notebook that does not
    train."""
    import papermill

    declared = papermill.inspect_notebook(str(reference)).get("output_dir")
    if declared is None:
        return None
    default = str(declared.get("default", "")).strip().strip("'\"")
    parts = Path(default).parts
    if len(parts) < 2 or Path(default).is_absolute() or ".." in parts:
        return None  # a run folder of its own at the top, or outside: nothing safe to seed
    return parts[0]


def shared_runs(reference: Path, folder: str, out_dir: Path, sandbox: sb.Sandbox, limits: sb.Limits,
                hide: list[Path], extra_parameters: dict[str, Any]) -> tuple[Path | None, str]:
    """Run the reference notebook once as the students' copies are run; returns its runs folder ``folder``
    (:func:`runs_folder`), kept in ``out_dir/.shared-runs/NN/`` (None and why when the run failed)."""
    keep = out_dir / ".shared-runs" / reference.name[:2]
    if keep.exists():
        shutil.rmtree(keep)  # the grader's own folder, from an earlier grading
    with tempfile.TemporaryDirectory(prefix="coursekit-reference-") as tmp:
        work = Path(tmp) / "work"
        work.mkdir()
        shutil.copyfile(reference, work / reference.name)
        command = papermill_command(reference.name, ".executed.ipynb", work, reference, limits.timeout_s,
                                    extra_parameters)
        start = time.perf_counter()
        done = sb.run(command, work, sandbox, dataclasses.replace(limits, timeout_s=limits.timeout_s + 30), hide=hide)
        runs = work / folder
        if done.returncode != 0 or done.timed_out or done.limit or not runs.is_dir() or symlinks_in(runs):
            why = "timed out" if done.timed_out else done.limit or failure_reason(done.stderr, done.returncode)
            return None, f"the reference run failed ({why}); every student's run trains on its own"
        keep.mkdir(parents=True)
        shutil.copytree(runs, keep / folder)
    return keep, f"reference run in {time.perf_counter() - start:.0f} s; its runs are reused by default settings"


def seed_runs(shared: Path, work: Path) -> None:
    """Copy the shared runs into a student's temporary folder, never over a run folder the student submitted."""
    for top in shared.iterdir():
        for run in top.iterdir():
            target = work / top.name / run.name
            if run.is_dir() and not target.exists() and not target.is_symlink():
                shutil.copytree(run, target)


# ------------------------------------------------------------------------ the whole batch
def export_student_pdf(student: str, out_dir: Path, sandbox: sb.Sandbox, limits: sb.Limits,
                       hide: list[Path]) -> str:
    """Export ``out_dir/student``'s executed notebooks to ``answers.pdf`` inside the sandbox; '' or an error."""
    folder = out_dir / student
    notebooks = numbered_notebooks(folder) if folder.is_dir() else []
    if not notebooks:
        return "no executed notebook to export"
    with tempfile.TemporaryDirectory(prefix="coursekit-pdf-") as tmp:
        work = Path(tmp)
        for nb in notebooks:
            shutil.copyfile(nb, work / nb.name)
        for res in folder.glob("results_*.json"):
            shutil.copyfile(res, work / res.name)
        command = [sys.executable, "-m", "coursekit", "export", "--notebooks", str(work), "--out",
                   str(work / "answers.pdf"), "--no-derivations", "--title", f"Answers of {student}"]
        done = sb.run(command, work, sandbox, dataclasses.replace(limits, timeout_s=max(600, limits.timeout_s)),
                      hide=hide)
        for name in ("answers.pdf", "answers.html"):  # the HTML page where the machine has no xelatex
            if done.returncode == 0 and (work / name).is_file() and not (work / name).is_symlink():
                shutil.copyfile(work / name, folder / name)
                return ""
        return "PDF export failed: " + (_tail(done.stderr) or ("timed out" if done.timed_out else "no output"))


def grade(submissions: str | Path, out: str | Path, reference_dir: str | Path = REPO / "notebooks",
          notebooks: list[str] | None = None, jobs: int = 2, timeout_s: float = 600, memory_gb: float = 8,
          pdf: bool = True, extra_parameters: dict[str, Any] | None = None,
          progress: bool = True, disk_gb: float = 2.0,
          max_processes: int = 64, hidden_tests: str | Path | None = REPO / "grading" / "hidden_tests.py",
          scores: str | Path | None = None, share_runs: bool = True) -> tuple[list[NotebookResult], sb.Sandbox]:
    """Grade every student folder of ``submissions`` against the notebooks of ``reference_dir``.

    :param jobs: notebooks run at the same time
    :param timeout_s, memory_gb, disk_gb, max_processes: the :class:`~coursekit.sandbox.Limits` of each run
    :param hidden_tests: the instructors' hidden exercise cases (None: visible checks only, half the points)
    :param scores: the instructor's scores of the written answers (default ``out/scores.csv``, created as a
        template to fill in when missing; never replaced)
    :param share_runs: run each training notebook once as the reference and let students with its default
        settings reuse its runs (see the module's text); False: every student trains their own
    :raises ValueError: a limit of 0 or less (it would fail every student or switch the limit off)
    """
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"--jobs must be an integer >= 1, got {jobs!r}")
    limits = sb.Limits(timeout_s, memory_gb, disk_gb, max_processes).checked()
    submissions, out, reference_dir = Path(submissions).resolve(), Path(out).resolve(), Path(reference_dir).resolve()
    if not submissions.is_dir():
        raise GradeError(f"{submissions} is not a folder of submissions")
    references = course = numbered_notebooks(reference_dir)
    if notebooks:
        unknown = sorted(set(notebooks) - {p.name for p in references})
        if unknown:
            raise GradeError(f"unknown notebook(s) {', '.join(unknown)}; the course has: "
                             f"{', '.join(p.name for p in references)}")
        references = [p for p in references if p.name in notebooks]
    if not references:
        raise GradeError(f"no reference notebooks (NN_*.ipynb) in {reference_dir}")
    hidden_tests = Path(hidden_tests).resolve() if hidden_tests is not None else None
    if hidden_tests is not None and not hidden_tests.is_file():
        raise GradeError(f"the hidden exercise tests {hidden_tests} do not exist; pass --hidden-tests FILE, or "
                         "--no-hidden-tests to score the visible checks only")
    scores_path = Path(scores).resolve() if scores is not None else None
    if scores_path is not None and not scores_path.is_file():
        raise GradeError(f"--scores {scores_path} does not exist; leave it out to get a template in the output folder")
    if scores_path is not None:  # a mistake in the instructor's file is reported before an hour of runs
        gradebook.read_scores(scores_path, gradebook.course_items(course))
    out.mkdir(parents=True, exist_ok=True)
    sandbox = sb.probe()
    print(sandbox.description, flush=True)
    hide = [REPO, reference_dir, submissions, out]
    collected = collect_submissions(submissions, [p.name for p in course], out / ".submissions")
    if not collected.students:
        raise GradeError(f"no submissions recognised in {submissions}: " + ("; ".join(collected.problems[:5]) or
                         "expected a folder or a ZIP per student, or a platform's bulk download"))
    for line in collected.problems:
        print(f"shape problem: {line}", flush=True)
    start = time.perf_counter()
    # the notebooks that train, and the folder each keeps its runs in
    training = {r: folder for r in references if share_runs and (folder := runs_folder(r)) is not None}

    def reference_run(reference: Path) -> Path | None:
        folder, note = shared_runs(reference, training[reference], out, sandbox, limits, hide, extra_parameters or {})
        print(f"{reference.name}: {note}", flush=True)
        return folder

    def one(task):
        student_dir, reference = task
        try:
            # a training notebook waits for its reference run (started first, beside other students' runs)
            shared = pending[reference.name].result() if reference.name in pending else None
            res = run_one(student_dir, reference, out, sandbox, limits, hide, extra_parameters or {}, shared)
        except Exception as err:  # noqa: BLE001 - the grader's own failure on one run must not stop the batch
            res = NotebookResult(student_dir.name, reference.name, "failed", error=f"grader error: {err!r}"[:MAX_ERROR_CHARS])
        if progress:
            print(f"{res.student:<20} {res.notebook:<40} {res.status:<8} {res.answered}/{res.questions} answered, "
                  f"{res.wall_s} s" + (f"  {res.error[:100]}" if res.error else ""), flush=True)
        return res

    # the longest notebooks first (the course's later ones), so that the runs at the end are short ones; a
    # training notebook second, so that its reference run is done by the time its students' turn comes
    order = [r for r in reversed(references) if r not in training]
    order[1:1] = list(reversed(training))
    tasks = [(folder, r) for r in order for folder in collected.students.values()]
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        pending = {r.name: pool.submit(reference_run, r) for r in training}
        futures = [pool.submit(one, task) for task in tasks]
        results = [f.result() for f in futures]
    # the exercises: one sandboxed scoring process per student, all their notebooks
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        list(pool.map(lambda folder: score_exercises(folder, [r for r in results if r.student == folder.name], out,
                                                     sandbox, limits, hide, hidden_tests),
                      collected.students.values()))
    # reported student by student, each in course order
    results = [r for student in collected.students.values() for ref in references
               for r in results if r.student == student.name and r.notebook == ref.name]
    pdf_errors: dict[str, str] = {}
    if pdf:
        names = sorted({r.student for r in results})
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            for name, err in zip(names, pool.map(
                    lambda n: export_student_pdf(n, out, sandbox, limits, hide), names)):
                pdf_errors[name] = err
    gradebook.write_all(out, sorted({r.student for r in results}), references, scores_path, course)
    write_csv(results, out / "grades.csv")
    write_html(results, sandbox, out / "summary.html", pdf_errors, time.perf_counter() - start,
               collected.problems + collected.kept)
    shapes = "".join(f"shape problem: {line}\n" for line in collected.problems) + \
        "".join(f"{line}\n" for line in collected.kept)
    (out / "report.txt").write_text(sandbox.description + "\n" + summary_lines(results, pdf_errors) + shapes)
    return results, sandbox


# ------------------------------------------------------------------------------- reports
CSV_FIELDS = ["student", "notebook", "status", "error_cell", "error", "answered", "questions", "missing_questions",
              "altered_questions", "wall_s", "values", "exercise_points", "exercise_possible"]


def write_csv(results: list[NotebookResult], path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for r in results:
            row = asdict(r)
            row["missing_questions"] = " ".join(r.missing_questions)
            row["altered_questions"] = " ".join(r.altered_questions)
            row["values"] = json.dumps(r.values, sort_keys=True)
            writer.writerow(row)


def summary_lines(results: list[NotebookResult], pdf_errors: dict[str, str]) -> str:
    lines = []
    for name in sorted({r.student for r in results}):
        mine = [r for r in results if r.student == name]
        ran = sum(r.status == "ok" for r in mine)
        answered = sum(r.answered for r in mine)
        total = sum(r.questions for r in mine)
        points, possible = sum(r.exercise_points for r in mine), sum(r.exercise_possible for r in mine)
        note = f"; {pdf_errors[name]}" if pdf_errors.get(name) else ""
        lines.append(f"{name}: {ran}/{len(mine)} notebooks ran, {answered}/{total} questions answered, "
                     f"exercises {points:g}/{possible:g} points{note}")
    return "\n".join(lines) + "\n"


def answers_file(folder: Path) -> str:
    """The name of a student's exported answers: the PDF, or the HTML page written where xelatex is missing."""
    return "answers.html" if (folder / "answers.html").is_file() and not (folder / "answers.pdf").is_file() \
        else "answers.pdf"


def write_html(results: list[NotebookResult], sandbox: sb.Sandbox, path: Path, pdf_errors: dict[str, str],
               seconds: float, shape_notes: list[str] = ()) -> None:
    e = html.escape
    colour = {"ok": "#d9f2d9", "failed": "#f8d0d0", "timeout": "#f8e0b0", "missing": "#e0e0e0",
              "unreadable": "#f8d0d0", "refused": "#f8d0d0"}
    rows = []
    for r in results:
        values = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in list(r.values.items())[:8])
        problems = "; ".join(filter(None, [
            f"missing: {' '.join(r.missing_questions)}" if r.missing_questions else "",
            f"renamed/changed: {' '.join(r.altered_questions)}" if r.altered_questions else ""]))
        where = f"cell {r.error_cell}: " if r.error_cell is not None else ""
        rows.append(
            f"<tr style='background:{colour.get(r.status, '#fff')}'><td>{e(r.student)}</td><td>{e(r.notebook)}</td>"
            f"<td>{e(r.status)}</td><td>{e(where + r.error)}</td><td>{r.answered}/{r.questions}</td>"
            f"<td>{e(problems)}</td><td>{e(values)}</td><td>{r.wall_s}</td></tr>")
    names = sorted({r.student for r in results})
    exported = {name for name, err in pdf_errors.items() if not err}  # a PDF was written for them
    students_html = "".join(
        f"<li>{e(line)}" + (f" (<a href='{e(name)}/{answers_file(path.parent / name)}'>"
                            f"{answers_file(path.parent / name)}</a>)" if name in exported else "")
        + "</li>" for name, line in zip(names, summary_lines(results, pdf_errors).splitlines()))
    warning = "" if sandbox.isolated else " style='color:#b00000;font-weight:bold'"
    page = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Grading summary</title>
<style>body{{font-family:sans-serif;margin:2em}} td,th{{border:1px solid #999;padding:3px 6px;font-size:90%}}
table{{border-collapse:collapse}}</style></head><body>
<p{warning}>{e(sandbox.description)}</p>
<h1>Grading summary</h1>
<p>{len({r.student for r in results})} students, {len(results)} notebook runs, {seconds:.0f} s in all.</p>
<ul>{students_html}</ul>
{"<h2>Submission shape</h2><ul>" + "".join(f"<li>{e(n)}</li>" for n in shape_notes) + "</ul>" if shape_notes else ""}
<table><tr><th>student</th><th>notebook</th><th>status</th><th>error</th><th>answered</th><th>missing / renamed</th>
<th>numbers written</th><th>wall s</th></tr>
{''.join(rows)}
</table></body></html>
"""
    path.write_text(page)
