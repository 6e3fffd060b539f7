r"""The embedded questions of a course notebook, and their reference answers.

The format (nbgrader's and otter-grader's conventions, as the course uses them):

1. a markdown cell that holds the question, wrapped in ``<!-- BEGIN QUESTION -->``
   and ``<!-- END QUESTION -->`` and labelled ``**Q<notebook>.<n>**`` (e.g. ``**Q1.3**``);
2. immediately after it, the answer: a code cell tagged ``otter_answer_cell`` with
   nbgrader metadata ``{"schema_version": 3, "grade_id": "q1_3", "solution": true,
   "grade": true, "points": 2, "locked": false, "task": false}`` (a manually graded answer
   worth ``points``) whose answer is comment lines between ``### BEGIN SOLUTION`` and
   ``### END SOLUTION``.

In the instructor's notebooks the lines between the markers are the reference
answer; the student edition replaces them with ``# YOUR ANSWER HERE``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

BEGIN_QUESTION = "<!-- BEGIN QUESTION -->"
END_QUESTION = "<!-- END QUESTION -->"
BEGIN_SOLUTION = "### BEGIN SOLUTION"
END_SOLUTION = "### END SOLUTION"
ANSWER_TAG = "otter_answer_cell"
STUDENT_PLACEHOLDER = "# YOUR ANSWER HERE"
LABEL = re.compile(r"\*\*Q(\d+)\.(\d+)\*\*")


@dataclass
class Question:
    """One question: ``label`` "Q1.3", ``grade_id`` "q1_3", the cells' indices and texts."""

    label: str
    grade_id: str
    question_index: int
    answer_index: int | None
    prompt: str
    answer: str | None

    @property
    def notebook_number(self) -> int:
        return int(self.label[1:].split(".")[0])


def _source(cell: Any) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def grade_id_for(label: str) -> str:
    """"Q1.3" -> "q1_3"."""
    number, part = label[1:].split(".")
    return f"q{int(number)}_{int(part)}"


DEFAULT_POINTS = 2


def answer_metadata(grade_id: str, points: int = DEFAULT_POINTS) -> dict[str, Any]:
    """The metadata an answer cell carries (nbgrader schema 3: a manually graded answer worth ``points``, the
    otter tag)."""
    return {
        "nbgrader": {"schema_version": 3, "grade_id": grade_id, "solution": True, "grade": True, "points": points,
                     "locked": False, "task": False},
        "tags": [ANSWER_TAG],
    }


def points_of(cell: Any) -> int:
    """The points an answer cell is worth (its nbgrader metadata; the default when it has none)."""
    value = ((cell.get("metadata", {}) or {}).get("nbgrader") or {}).get("points", DEFAULT_POINTS)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else DEFAULT_POINTS


def solution_text(source: str) -> str | None:
    """The lines strictly between the solution markers (None if the markers are missing or out of order)."""
    lines = source.splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == BEGIN_SOLUTION)
        end = next(i for i, line in enumerate(lines) if line.strip() == END_SOLUTION and i > start)
    except StopIteration:
        return None
    return "\n".join(lines[start + 1 : end])


def written_answer(source: str) -> str:
    """What a student wrote in an answer cell: the lines between the solution markers (the whole
    cell if the markers were deleted), without the placeholder; "" when nothing was written."""
    body = solution_text(source)
    text = source if body is None else body
    lines = [line.rstrip() for line in text.splitlines()
             if line.strip() not in (STUDENT_PLACEHOLDER, BEGIN_SOLUTION, END_SOLUTION)]
    return "\n".join(lines).strip("\n") if any(line.strip() for line in lines) else ""


def is_question_cell(cell: Any) -> bool:
    return cell.get("cell_type") == "markdown" and BEGIN_QUESTION in _source(cell)


def find_questions(nb: Any) -> list[Question]:
    """Every question of notebook ``nb`` (an nbformat node or plain dict), in order."""
    cells = nb["cells"]
    questions = []
    for i, cell in enumerate(cells):
        if not is_question_cell(cell):
            continue
        text = _source(cell)
        match = LABEL.search(text)
        label = f"Q{match.group(1)}.{match.group(2)}" if match else f"Q?(cell {i})"
        answer_index = i + 1 if i + 1 < len(cells) and cells[i + 1].get("cell_type") == "code" else None
        answer = solution_text(_source(cells[answer_index])) if answer_index is not None else None
        questions.append(Question(label, grade_id_for(label) if match else "", i, answer_index, text, answer))
    return questions


def problems(nb: Any, notebook_number: int | None = None) -> list[str]:
    """Everything wrong with the questions of ``nb`` under the format above; [] when all is well.

    :param notebook_number: if given, every label must be Q<notebook_number>.n
    """
    found = []
    cells = nb["cells"]
    for q in find_questions(nb):
        where = f"{q.label} (cell {q.question_index})"
        if END_QUESTION not in q.prompt or q.prompt.find(END_QUESTION) < q.prompt.find(BEGIN_QUESTION):
            found.append(f"{where}: markdown lacks {END_QUESTION} after {BEGIN_QUESTION}")
        if not LABEL.search(q.prompt):
            found.append(f"{where}: no **Q<notebook>.<n>** label")
            continue
        if notebook_number is not None and q.notebook_number != notebook_number:
            found.append(f"{where}: label belongs to notebook {q.notebook_number}, not {notebook_number}")
        if q.answer_index is None:
            found.append(f"{where}: not followed by an answer code cell")
            continue
        cell = cells[q.answer_index]
        meta = cell.get("metadata", {})
        points = (meta.get("nbgrader") or {}).get("points")
        if not isinstance(points, int) or isinstance(points, bool) or points < 1:
            found.append(f"{where}: answer cell needs nbgrader points (a positive integer), has {points!r}")
        expected = answer_metadata(q.grade_id, points if isinstance(points, int) else DEFAULT_POINTS)
        if meta.get("nbgrader") != expected["nbgrader"]:
            found.append(f"{where}: answer cell nbgrader metadata {meta.get('nbgrader')} != {expected['nbgrader']}")
        if ANSWER_TAG not in meta.get("tags", []):
            found.append(f"{where}: answer cell lacks the {ANSWER_TAG!r} tag")
        if q.answer is None:
            found.append(f"{where}: answer cell lacks {BEGIN_SOLUTION} ... {END_SOLUTION}")
        elif not q.answer.strip():
            found.append(f"{where}: empty answer between the solution markers")
        elif any(line.strip() and not line.lstrip().startswith("#") for line in q.answer.splitlines()):
            found.append(f"{where}: the answer must be comment lines (start each with #)")
    labels = [q.label for q in find_questions(nb)]
    for label in sorted({lab for lab in labels if labels.count(lab) > 1}):
        found.append(f"{label} appears {labels.count(label)} times")
    return found
