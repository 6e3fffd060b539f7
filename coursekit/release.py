"""The student edition: the course notebooks with every reference answer taken out.

For each ``notebooks/NN_*.ipynb`` the release keeps every cell, the parameters and the
questions, and

* replaces the lines between ``### BEGIN SOLUTION`` and ``### END SOLUTION`` of every
  answer cell by ``# YOUR ANSWER HERE`` (the markers and the nbgrader metadata stay, so
  the grader finds the answers again);
* clears every output and execution count, and drops cell attachments and notebook
  metadata that a run may have left (papermill's, widget state);
* refuses to write a release if any line of a reference answer would survive anywhere
  in it (the check is :func:`leaked_answer_lines`, which the tests run as well).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
from pathlib import Path

import nbformat

from . import questions as Q
from .exercises import is_exercise_cell, label
from . import REPO, numbered_notebooks

NOTEBOOKS = REPO / "notebooks"
MIN_LEAK_CHARS = 12  # answer lines shorter than this ("# (a)", "# Yes.") are too generic to count as a leak
KEEP_METADATA = ("kernelspec", "language_info")


class ReleaseError(RuntimeError):
    """The student edition could not be written safely."""


def strip_answer(source: str) -> str:
    """An answer cell's source with the reference answer replaced by the placeholder."""
    lines = source.splitlines()
    bounds = solution_bounds(lines)
    if bounds is None:  # no markers: the whole cell is the answer
        return "\n".join([Q.BEGIN_SOLUTION, Q.STUDENT_PLACEHOLDER, Q.END_SOLUTION])
    start, end = bounds
    return "\n".join(lines[: start + 1] + [Q.STUDENT_PLACEHOLDER] + lines[end:])


def solution_bounds(lines: list[str]) -> tuple[int, int] | None:
    """The indices of the ``### BEGIN SOLUTION`` and the following ``### END SOLUTION`` line, or None."""
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == Q.BEGIN_SOLUTION)
        end = next(i for i, line in enumerate(lines) if line.strip() == Q.END_SOLUTION and i > start)
    except StopIteration:
        return None
    return start, end


def strip_exercise(source: str, title: str) -> str:
    """An exercise cell's source with the solution replaced by ``raise NotImplementedError`` (at its indentation)."""
    lines = source.splitlines()
    bounds = solution_bounds(lines)
    if bounds is None:
        raise ReleaseError(f"{title}: its cell lacks {Q.BEGIN_SOLUTION} ... {Q.END_SOLUTION}")
    start, end = bounds
    indent = lines[start][: len(lines[start]) - len(lines[start].lstrip())]
    stub = f'{indent}raise NotImplementedError("{title}: write this function")'
    return "\n".join(lines[: start + 1] + [stub] + lines[end:])


def student_notebook(nb):
    """A copy of notebook ``nb`` as students get it."""
    nb = copy.deepcopy(nb)
    answer_cells = {q.answer_index for q in Q.find_questions(nb) if q.answer_index is not None}
    for i, cell in enumerate(nb.cells):
        cell.pop("attachments", None)
        if cell.cell_type != "code":
            continue
        cell.outputs = []
        cell.execution_count = None
        cell.metadata.pop("papermill", None)
        cell.metadata.pop("execution", None)
        is_answer = i in answer_cells or Q.ANSWER_TAG in cell.metadata.get("tags", []) or \
            cell.metadata.get("nbgrader", {}).get("solution")
        if is_exercise_cell(cell):
            cell.source = strip_exercise(cell.source, label(cell.metadata["nbgrader"]["grade_id"]))
        elif is_answer:
            cell.source = strip_answer(cell.source)
    nb.metadata = nbformat.from_dict({k: v for k, v in nb.metadata.items() if k in KEEP_METADATA})
    return nb


def reference_answer_lines(notebooks: list[Path], public_text: str = "") -> list[str]:
    """Every distinctive line of every reference answer and exercise solution (comment marks and spaces stripped).

    A line that also appears in the public part of the notebooks (a question, a heading, a printed label, an
    exercise cell outside its solution region) is not a secret, and is left out; so is a line found in
    ``public_text`` (the library code a student kit ships, whose functions the exercises ask students to write).
    """
    lines, public = [], []
    for path in notebooks:
        nb = nbformat.read(path, as_version=4)
        found = Q.find_questions(nb)
        answers = {q.answer_index for q in found}
        solutions = [q.answer or "" for q in found]
        for i, cell in enumerate(nb.cells):
            if is_exercise_cell(cell):
                solutions.append(Q.solution_text(cell.source) or "")
                public.append(strip_exercise(cell.source, "public"))
            elif i not in answers:
                public.append(cell.source)
        for solution in solutions:
            for line in solution.splitlines():
                text = line.strip().lstrip("#").strip()
                if len(text) >= MIN_LEAK_CHARS:
                    lines.append(text)
    public_text = "\n".join(public) + "\n" + public_text
    return [line for line in dict.fromkeys(lines) if line not in public_text]


def leaked_answer_lines(release_dir: str | Path, notebooks: list[Path] | None = None,
                        public_text: str = "") -> list[tuple[str, str]]:
    """``(file, line)`` for every reference-answer line found in any file of ``release_dir``.

    Notebook files are searched both as raw JSON and as their decoded cell sources, so an
    answer cannot hide behind JSON escaping.
    """
    notebooks = notebooks if notebooks is not None else course_notebooks()
    needles = reference_answer_lines(notebooks, public_text)
    found = []
    for path in sorted(Path(release_dir).rglob("*")):
        if not path.is_file():
            continue
        raw = path.read_bytes().decode("utf-8", errors="replace")
        haystacks = [raw]
        if path.suffix == ".ipynb":
            try:
                nb = nbformat.reads(raw, as_version=4)
                haystacks.append("\n".join(c.source for c in nb.cells))
                haystacks.append(json.dumps(nb.metadata))
            except Exception:  # a broken notebook is still searched as text
                pass
        for needle in needles:
            if any(needle in h for h in haystacks):
                found.append((str(path.relative_to(release_dir)), needle))
    return found


def course_notebooks(directory: Path = NOTEBOOKS) -> list[Path]:
    found = numbered_notebooks(directory)
    if not found:
        raise ReleaseError(f"no course notebooks (NN_*.ipynb) in {directory}")
    return found


README = """# Stable Diffusion course: student edition

Open these notebooks in JupyterLab with the kit's kernel (`./kit lab` in the kit).
Answer every question **Qn.m** in the code cell right below it, as comment lines
between `### BEGIN SOLUTION` and `### END SOLUTION` (replace `# YOUR ANSWER HERE`).
Keep the question and answer cells where they are: the grader finds your answers by them.
Derivations that need more room go in a separate PDF.
"""


MARKER = ".coursekit-release"  # written into every release: the list of its files


def _protected(out: Path, notebooks_dir: Path) -> str | None:
    """What precious folder ``out`` is or holds, if any (a release never replaces those)."""
    out = out.resolve()
    places = [
        (notebooks_dir.resolve(), "the course notebooks (--notebooks)"),
        (REPO.resolve(), "the course kit's repository"),
        (Path.home().resolve(), "your home folder"),
        (Path.cwd().resolve(), "the current folder"),
    ]
    for place, what in places:
        if out == place or out in place.parents:
            return f"{what}, {place}"
    if out == Path(out.anchor) or (out / ".git").exists():
        return "a file system root" if out == Path(out.anchor) else "a git repository"
    return None


def _check_replaceable(out: Path, notebooks_dir: Path) -> None:
    """Refuse to replace anything but a student edition that ``release`` wrote and nobody added to."""
    precious = _protected(out, notebooks_dir)
    if precious:
        raise ReleaseError(f"--out {out} is or holds {precious}; a release never replaces that, so nothing was "
                           "deleted. Choose a new or empty --out folder.")
    marker = out / MARKER
    try:
        written = set(json.loads(marker.read_text())["files"])
    except (OSError, ValueError, KeyError, TypeError):
        raise ReleaseError(
            f"{out} is not empty and is not a student edition written by release (no readable {MARKER} in it); "
            "--overwrite only replaces such a folder, so nothing was deleted. Choose a new or empty --out folder."
        ) from None
    present = {str(p.relative_to(out)) for p in out.rglob("*") if not p.is_dir()} - {MARKER}
    present |= {str(p.relative_to(out)) + "/" for p in out.rglob("*") if p.is_dir() and not any(p.iterdir())}
    foreign = sorted(present - written)
    if foreign:
        raise ReleaseError(
            f"{out} holds files that release did not write ({', '.join(foreign[:5])}"
            f"{' ...' if len(foreign) > 5 else ''}); move them out first. Nothing was deleted."
        )


def write_release(out: str | Path, notebooks_dir: str | Path = NOTEBOOKS, overwrite: bool = False) -> list[Path]:
    """Write the student edition of every course notebook into ``out``; returns the files written.

    ``out`` must be new or empty; with ``overwrite`` it may also be an earlier release,
    recognised by its ``.coursekit-release`` marker and holding only the files listed
    there. Anything else (the course notebooks, the repository, a home folder, a folder
    with other files) is refused before anything is written. The new release is built
    and leak-checked beside ``out`` first, so a failed release leaves the old one whole.
    """
    out, notebooks_dir = Path(out), Path(notebooks_dir)
    sources = course_notebooks(notebooks_dir)
    if out.resolve() == notebooks_dir.resolve():
        raise ReleaseError("the release must not be written over the course notebooks; choose another --out")
    if out.exists() and not out.is_dir():
        raise ReleaseError(f"--out {out} is a file, not a folder; choose a folder for the student edition")
    replace = out.is_dir() and any(out.iterdir())
    if replace:
        if not overwrite:
            raise ReleaseError(f"{out} is not empty; pass --overwrite to replace an earlier release there, "
                               "or choose a new --out folder")
        _check_replaceable(out, notebooks_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.new-"))
    try:
        for path in sources:
            nbformat.write(student_notebook(nbformat.read(path, as_version=4)), staging / path.name)
        (staging / "README.md").write_text(README)
        leaks = leaked_answer_lines(staging, sources)
        if leaks:
            where = "; ".join(f"{f}: {line[:60]!r}" for f, line in leaks[:5])
            raise ReleaseError(f"{len(leaks)} reference-answer line(s) would leak into the release ({where}); "
                               "nothing was written")
        files = sorted(str(p.relative_to(staging)) for p in staging.rglob("*") if p.is_file())
        (staging / MARKER).write_text(json.dumps({"written_by": "python -m coursekit release", "files": files},
                                                 indent=1) + "\n")
        if replace:
            # the old release (only files release wrote, checked above) goes once the new one is in place
            old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
            os.rename(out, old / "release")
            os.rename(staging, out)
            shutil.rmtree(old)
        else:
            if out.exists():
                out.rmdir()  # empty
            os.rename(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return sorted(p for p in out.iterdir() if p.name != MARKER)
