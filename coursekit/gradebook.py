"""From graded runs to grades: the scores file, the gradebook, review pages and feedback.

``grade`` scores the code exercises itself; written answers are scored by the instructor:

* ``review/index.html`` and one page per question: the question, the reference answer, a
  rubric, and every student's answer beside it;
* ``scores.csv``: one row per student and question (``student, question, points_possible,
  points, comment``) with ``points`` left empty. Fill it in (or pass your own file with
  ``--scores``) and run ``grade`` again: the file is read, never replaced;
* ``gradebook.csv``: one row per student with every exercise and question, the totals, and
  the student's identifier first (Moodle's grade import maps these columns);
  ``gradebook_canvas.csv``: Canvas's import layout (Student, ID, SIS User ID, SIS Login ID,
  Section, then the course total as one new assignment column);
* ``feedback/STUDENT.html``: per question their answer, the reference, points and comment;
  per exercise the points and the checks that failed.
"""

from __future__ import annotations

import csv
import html
import json
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

from . import questions as Q
from .exercises import EXERCISES, label, of_notebook

SCORE_FIELDS = ["student", "question", "points_possible", "points", "comment"]
RUBRIC = ("Full points: the reasoning of the reference answer and its numbers (within the tolerance it states, or "
          "the student's own printed numbers where the question asks for them). About half: the right idea with a "
          "wrong or missing number, or the numbers without the reason. None: wrong, or not answered.")


@dataclass
class Item:
    """One gradable item: a written question or a code exercise."""

    key: str            # Q1.3 or ex1_2
    title: str          # Q1.3 or Exercise 1.2 (q_sample)
    notebook: str
    possible: float
    kind: str           # "question" or "exercise"
    prompt: str = ""
    reference: str = ""


@dataclass
class Student:
    name: str
    answers: dict[str, str] = field(default_factory=dict)        # question -> their answer
    exercises: dict[str, dict] = field(default_factory=dict)     # grade_id -> autograde result
    sources: dict[str, str] = field(default_factory=dict)        # grade_id -> their exercise cell


def course_items(references: list[Path]) -> list[Item]:
    """Every question and exercise of the reference notebooks, in course order, with its points."""
    items = []
    for path in references:
        nb = nbformat.read(path, as_version=4)
        for q in Q.find_questions(nb):
            cell = nb.cells[q.answer_index] if q.answer_index is not None else {}
            prompt = q.prompt.replace(Q.BEGIN_QUESTION, "").replace(Q.END_QUESTION, "").strip()
            items.append(Item(q.label, q.label, path.name, Q.points_of(cell), "question", prompt, q.answer or ""))
        for gid in of_notebook(path.name):
            ex = EXERCISES[gid]
            items.append(Item(gid, f"{label(gid)} ({ex.function})", path.name, float(ex.points), "exercise",
                              ex.signature))
    return items


def load_students(out: Path, names: list[str]) -> list[Student]:
    """What ``grade`` kept of every student: answers_NN.json and exercises_NN.json in their folder."""
    found = []
    for name in names:
        s = Student(name)
        folder = out / name
        for path in sorted(folder.glob("answers_[0-9][0-9].json")):
            s.answers.update(json.loads(path.read_text()))
        for path in sorted(folder.glob("exercises_[0-9][0-9].json")):
            payload = json.loads(path.read_text())
            s.exercises.update(payload.get("results", {}))
            s.sources.update(payload.get("sources", {}))
        found.append(s)
    return found


# ----------------------------------------------------------------------------- scores
class ScoresError(ValueError):
    """The instructor's scores file cannot be used as it is."""


def read_scores(path: Path, items: list[Item]) -> dict[tuple[str, str], tuple[float | None, str]]:
    """(student, question) -> (points or None when left empty, comment). Rows are checked: a question of
    ``items``, points within 0..possible."""
    possible = {i.key: i.possible for i in items if i.kind == "question"}
    scores = {}
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in ("student", "question", "points") if c not in (reader.fieldnames or [])]
        if missing:
            raise ScoresError(f"{path} lacks the column(s) {', '.join(missing)}; expected {', '.join(SCORE_FIELDS)}")
        for line, row in enumerate(reader, start=2):
            question, text = (row.get("question") or "").strip(), (row.get("points") or "").strip()
            if question not in possible:
                raise ScoresError(f"{path}, line {line}: unknown question {question!r} (the course has "
                                  f"{', '.join(list(possible)[:3])} ... {list(possible)[-1]})")
            points = None
            if text:
                try:
                    points = float(text.replace(",", "."))
                except ValueError:
                    raise ScoresError(f"{path}, line {line}: points {text!r} is not a number") from None
                if not 0 <= points <= possible[question]:
                    raise ScoresError(f"{path}, line {line}: {points:g} points for {question}, which is worth "
                                      f"0 to {possible[question]:g}")
            scores[(row.get("student", "").strip(), question)] = (points, (row.get("comment") or "").strip())
    return scores


def write_scores_template(path: Path, students: list[Student], items: list[Item]) -> None:
    """A scores file to fill in: one row per student and question, points empty. Never replaces a file."""
    if path.exists():
        return
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(SCORE_FIELDS)
        for s in students:
            for item in items:
                if item.kind == "question":
                    writer.writerow([s.name, item.key, f"{item.possible:g}", "", ""])


# -------------------------------------------------------------------------- gradebook
def points_table(students: list[Student], items: list[Item], scores: dict) -> dict[str, dict[str, float | None]]:
    """student -> item key -> points (None: a question not scored yet)."""
    table = {}
    for s in students:
        row = {}
        for item in items:
            if item.kind == "exercise":
                row[item.key] = float(s.exercises.get(item.key, {}).get("points", 0.0))
            else:
                row[item.key] = scores.get((s.name, item.key), (None, ""))[0]
        table[s.name] = row
    return table


def write_gradebooks(out: Path, table: dict, items: list[Item]) -> None:
    possible = sum(i.possible for i in items)
    with (out / "gradebook.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["student"] + [f"{i.title} ({i.possible:g})" for i in items]
                        + ["exercises", "written", "total", "possible", "not scored yet"])
        for name, row in table.items():
            exercises = sum(v for k, v in row.items() if k.startswith("ex"))
            written = sum(v for k, v in row.items() if not k.startswith("ex") and v is not None)
            open_items = [k for k, v in row.items() if v is None]
            writer.writerow([name] + ["" if row[i.key] is None else f"{row[i.key]:g}" for i in items]
                            + [f"{exercises:g}", f"{written:g}", f"{exercises + written:g}", f"{possible:g}",
                               " ".join(open_items)])
    with (out / "gradebook_canvas.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["Student", "ID", "SIS User ID", "SIS Login ID", "Section", "Stable Diffusion course"])
        writer.writerow(["Points Possible", "", "", "", "", f"{possible:g}"])
        for name, row in table.items():
            writer.writerow([name, "", "", name, "", f"{sum(v for v in row.values() if v is not None):g}"])


# ---------------------------------------------------------------------- HTML pages
STYLE = ("<style>body{font-family:sans-serif;margin:2em;max-width:70em} pre{background:#f4f4f4;padding:.6em;"
         "white-space:pre-wrap} .ok{color:#060} .bad{color:#a00} td,th{border:1px solid #999;padding:3px 6px}"
         "table{border-collapse:collapse}</style>")


def _page(title: str, body: str) -> str:
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>{STYLE}"
            f"</head><body><h1>{html.escape(title)}</h1>{body}</body></html>\n")


def _file_name(key: str) -> str:
    return key.replace(".", "_") + ".html"


def write_review(out: Path, students: list[Student], items: list[Item], scores: dict) -> None:
    """review/index.html and one page per question and exercise."""
    e = html.escape
    folder = out / "review"
    folder.mkdir(exist_ok=True)
    links = []
    for item in items:
        parts = [f"<p><b>{e(item.notebook)}</b>, worth {item.possible:g} points.</p>",
                 f"<h2>Question</h2><pre>{e(item.prompt)}</pre>"]
        if item.kind == "question":
            parts += [f"<h2>Reference answer</h2><pre>{e(item.reference)}</pre>", f"<h2>Rubric</h2><p>{e(RUBRIC)}</p>"]
        else:
            parts.append("<p>Scored by the grader: half the points for the visible check, half for the hidden cases."
                         "</p>")
        parts.append("<h2>Answers</h2>")
        for s in students:
            if item.kind == "question":
                points, comment = scores.get((s.name, item.key), (None, ""))
                given = "not scored yet" if points is None else f"{points:g} / {item.possible:g}"
                parts.append(f"<h3>{e(s.name)} ({e(given)})</h3><pre>{e(s.answers.get(item.key) or '(no answer)')}"
                             f"</pre>" + (f"<p>{e(comment)}</p>" if comment else ""))
            else:
                r = s.exercises.get(item.key, {})
                problems = r.get("visible", []) + r.get("hidden", [])
                parts.append(f"<h3>{e(s.name)} ({r.get('points', 0):g} / {item.possible:g})</h3>"
                             f"<pre>{e(s.sources.get(item.key, '(no cell)'))}</pre>"
                             + "".join(f"<p class='bad'>{e(p)}</p>" for p in problems[:5]))
        (folder / _file_name(item.key)).write_text(_page(item.title, "".join(parts)), encoding="utf-8")
        links.append(f"<li><a href='{_file_name(item.key)}'>{e(item.title)}</a> ({item.possible:g} points)</li>")
    (folder / "index.html").write_text(_page("Review: every question and exercise", f"<ul>{''.join(links)}</ul>"),
                                       encoding="utf-8")


def write_feedback(out: Path, students: list[Student], items: list[Item], scores: dict, table: dict) -> None:
    """feedback/STUDENT.html: what each student gets back."""
    e = html.escape
    folder = out / "feedback"
    folder.mkdir(exist_ok=True)
    possible = sum(i.possible for i in items)
    for s in students:
        row = table[s.name]
        total = sum(v for v in row.values() if v is not None)
        parts = [f"<p>Total: <b>{total:g} / {possible:g}</b> points"
                 + (" (some answers are not scored yet)" if any(v is None for v in row.values()) else "") + ".</p>"]
        for item in items:
            got = row[item.key]
            head = f"{item.title}: {'not scored yet' if got is None else f'{got:g}'} / {item.possible:g}"
            if item.kind == "question":
                comment = scores.get((s.name, item.key), (None, ""))[1]
                parts.append(f"<h2>{e(head)}</h2><p>Your answer:</p><pre>{e(s.answers.get(item.key) or '(none)')}"
                             f"</pre><p>Reference answer:</p><pre>{e(item.reference)}</pre>"
                             + (f"<p><b>Comment:</b> {e(comment)}</p>" if comment else ""))
            else:
                r = s.exercises.get(item.key, {})
                problems = [f"visible check: {p}" for p in r.get("visible", [])] + \
                           [f"hidden case: {p}" for p in r.get("hidden", [])]
                body = "".join(f"<p class='bad'>{e(p)}</p>" for p in problems[:6]) or "<p class='ok'>all checks " \
                                                                                       "passed</p>"
                parts.append(f"<h2>{e(head)}</h2>{body}")
        (folder / f"{s.name}.html").write_text(_page(f"Feedback for {s.name}", "".join(parts)), encoding="utf-8")


def write_all(out: Path, student_names: list[str], references: list[Path], scores_path: Path | None,
              course: list[Path] | None = None) -> dict:
    """Every file of this module's docstring for the graded ``references``; returns the points table.

    :param course: all notebooks of the course (the scores file may hold rows of notebooks not graded now)
    """
    items = course_items(references)
    students = load_students(out, student_names)
    scores_path = scores_path or out / "scores.csv"
    write_scores_template(scores_path, students, items)
    scores = read_scores(scores_path, course_items(course or references))
    table = points_table(students, items, scores)
    write_gradebooks(out, table, items)
    write_review(out, students, items, scores)
    write_feedback(out, students, items, scores, table)
    return table
