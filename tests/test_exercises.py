"""Code exercises: the reference solutions pass, common mistakes fail with a message, the student edition
scores nothing, and the gradebook adds up (exercise points, the instructor's scores of written answers)."""

from __future__ import annotations

import copy
import csv
import json
from pathlib import Path

import nbformat
import pytest

from coursekit import autograde, gradebook, release
from coursekit import exercises as E
from coursekit import questions as Q

ROOT = Path(__file__).resolve().parents[1]
HIDDEN = ROOT / "grading" / "hidden_tests.py"
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def notebook_of(grade_id: str) -> Path:
    (path,) = [p for p in NOTEBOOKS if int(p.name[:2]) == int(grade_id[2:].split("_")[0])]
    return path


def reference_source(grade_id: str) -> str:
    return autograde.exercise_cells(json.loads(notebook_of(grade_id).read_text()))[grade_id]


def test_every_exercise_has_its_cell_and_check_in_its_notebook():
    assert len(E.EXERCISES) >= 10
    for gid, ex in E.EXERCISES.items():
        nb = nbformat.read(notebook_of(gid), as_version=4)
        cells = [i for i, c in enumerate(nb.cells) if release.is_exercise_cell(c)
                 and c.metadata["nbgrader"]["grade_id"] == gid]
        assert len(cells) == 1, f"{gid}: {len(cells)} exercise cells"
        cell, check = nb.cells[cells[0]], nb.cells[cells[0] + 1]
        assert f"def {ex.function}(" in cell.source and Q.BEGIN_SOLUTION in cell.source
        assert check.source.strip() == f'exercises.check("{gid}", {ex.function})'
        assert check.metadata["nbgrader"]["grade_id"] == f"{gid}_check"
        assert check.metadata["nbgrader"]["points"] == ex.points
        assert f"({ex.points} points)" in nb.cells[cells[0] - 1].source


@pytest.mark.parametrize("grade_id", sorted(E.EXERCISES))
def test_the_reference_solution_passes_visible_and_hidden_cases(grade_id):
    result = autograde.score(grade_id, reference_source(grade_id), autograde.load_hidden(HIDDEN))
    assert result["visible"] == [] and result["hidden"] == []
    assert result["points"] == E.EXERCISES[grade_id].points


MISTAKES = {  # a classic slip per exercise, and a word the message must contain
    "ex1_1": ("return abar_t.reshape(-1, 1, 1, 1) * x0 + (1 - abar_t.reshape(-1, 1, 1, 1)) * eps", "differs"),
    "ex1_2": ("return x0, torch.zeros(len(x0), 1, 1, 1)", "differs"),
    "ex3_1": ("return torch.zeros(len(t), dim)", "differs"),
    "ex3_2": ("return eps", "differs"),
    "ex5_1": ("return eps_cond + w * (eps_cond - eps_uncond)", "differs"),
    "ex5_2": ("w = (q @ k.transpose(-2, -1)).softmax(-1)\n    return w @ v, w", "differs"),
    "ex6_1": ("x0 = (x_t - (1 - abar_t) ** 0.5 * eps_hat) / abar_t ** 0.5\n    return abar_prev ** 0.5 * x0", "differs"),
    "ex6_3": ("known = abar_prev ** 0.5 * z0 + (1 - abar_prev) ** 0.5 * noise\n    x.mul_(mask)\n"
              "    return x + (1 - mask) * known", "in place"),
    "ex7_1": ("return float(((mu1 - mu2) ** 2).sum())", "differs"),
}


def with_body(grade_id: str, body: str) -> str:
    source = reference_source(grade_id)
    return release.strip_exercise(source, "x").replace('raise NotImplementedError("x: write this function")', body)


@pytest.mark.parametrize("grade_id", sorted(MISTAKES))
def test_a_classic_mistake_fails_with_a_message(grade_id):
    body, word = MISTAKES[grade_id]
    fn, problem = autograde.load_function(with_body(grade_id, body), E.EXERCISES[grade_id].function)
    assert fn is not None, problem
    problems = E.failures(grade_id, fn)
    assert problems and word in problems[0], problems


def test_visible_check_prints_and_never_raises(capsys):
    def q_sample(x0, eps, abar_t):
        raise NotImplementedError

    E.check("ex1_1", q_sample)
    assert "not written yet" in capsys.readouterr().out
    E.check("ex1_1", lambda x0, eps, abar_t: 1 / 0)
    assert "ZeroDivisionError" in capsys.readouterr().out
    E.check("ex1_1", lambda x0, eps, abar_t: x0[:1])
    assert "shape" in capsys.readouterr().out
    E.check("ex1_1", "not a function")
    assert capsys.readouterr().out.startswith("Not yet")


def test_a_broken_cell_is_a_result_not_a_crash():
    assert "does not compile" in autograde.load_function("def q_sample(:\n", "q_sample")[1]
    assert "raised" in autograde.load_function("import nonexistent_module_xyz\n", "q_sample")[1]
    assert "does not define" in autograde.load_function("x = 1\n", "q_sample")[1]
    result = autograde.score("ex1_1", None, None)
    assert result["points"] == 0 and "missing" in result["visible"][0]


def test_the_student_edition_scores_zero_and_the_notebooks_hold_no_solution(tmp_path):
    release.write_release(tmp_path / "student")
    for path in sorted((tmp_path / "student").glob("*.ipynb")):
        cells = autograde.exercise_cells(json.loads(path.read_text()))
        for gid, source in cells.items():
            assert "raise NotImplementedError" in source
            assert autograde.score(gid, source, autograde.load_hidden(HIDDEN))["points"] == 0
    # without the hidden cases a correct solution earns the visible half only
    assert autograde.score("ex1_1", reference_source("ex1_1"), None)["points"] == E.EXERCISES["ex1_1"].points / 2


def test_autograde_command_writes_scores_for_one_notebook(tmp_path):
    nb = nbformat.read(notebook_of("ex6_1"), as_version=4)
    for cell in nb.cells:
        if release.is_exercise_cell(cell) and cell.metadata["nbgrader"]["grade_id"] == "ex6_2":
            cell.source = with_body("ex6_2", "return timesteps, z0")
        if release.is_exercise_cell(cell) and cell.metadata["nbgrader"]["grade_id"] == "ex6_3":
            cell.metadata["tags"] = []  # the student broke the cell's metadata: the exercise counts as missing
    nbformat.write(nb, tmp_path / "06_sampling.ipynb")
    assert autograde.main([str(tmp_path / "06_sampling.ipynb"), "--hidden", str(HIDDEN), "--out",
                           str(tmp_path / "scores.json")]) == 0
    scores = json.loads((tmp_path / "scores.json").read_text())
    assert scores["ex6_1"]["points"] == 3 and scores["ex6_2"]["points"] == 0 and scores["ex6_3"]["points"] == 0
    assert "missing" in scores["ex6_3"]["visible"][0]


# -------------------------------------------------------------------------- gradebook
def fake_graded(out: Path, name: str, answers: dict, exercise_points: dict) -> None:
    folder = out / name
    folder.mkdir(parents=True)
    (folder / "answers_01.json").write_text(json.dumps(answers))
    results = {gid: {"exercise": E.EXERCISES[gid].function, "possible": E.EXERCISES[gid].points, "points": p,
                     "visible": [] if p else ["the result differs"], "hidden": []}
               for gid, p in exercise_points.items()}
    (folder / "exercises_01.json").write_text(json.dumps({"results": results, "sources": {g: "def f(): pass"
                                                                                          for g in results}}))


def test_gradebook_scores_review_and_feedback(tmp_path):
    out = tmp_path / "grading"
    nb01 = [p for p in NOTEBOOKS if p.name.startswith("01")]
    fake_graded(out, "ada", {"Q1.1": "the mean stays -1 <script>alert(1)</script>"}, {"ex1_1": 2.0, "ex1_2": 3.0})
    fake_graded(out, "bob", {}, {"ex1_1": 0.0, "ex1_2": 1.5})
    table = gradebook.write_all(out, ["ada", "bob"], nb01, None)
    template = (out / "scores.csv").read_text()
    assert template.count("\n") == 1 + 2 * 8  # a header, 8 questions per student
    assert table["ada"]["ex1_2"] == 3.0 and table["ada"]["Q1.1"] is None
    # the instructor fills in two rows and grades again: the file is read, never replaced
    rows = list(csv.DictReader(template.splitlines()))
    for row in rows:
        if (row["student"], row["question"]) == ("ada", "Q1.1"):
            row["points"], row["comment"] = "1.5", "VE named, variance right"
        if (row["student"], row["question"]) == ("bob", "Q1.6"):
            row["points"] = "3"
    with (out / "scores.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=gradebook.SCORE_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    filled = (out / "scores.csv").read_text()
    table = gradebook.write_all(out, ["ada", "bob"], nb01, None)
    assert (out / "scores.csv").read_text() == filled
    book = list(csv.DictReader((out / "gradebook.csv").read_text().splitlines()))
    ada, bob = book
    assert ada["student"] == "ada" and float(ada["exercises"]) == 5 and float(ada["written"]) == 1.5
    assert float(bob["total"]) == 4.5 and float(bob["possible"]) == 5 + sum(
        Q.points_of(nbformat.read(nb01[0], 4).cells[q.answer_index]) for q in Q.find_questions(nbformat.read(nb01[0], 4)))
    assert "Q1.2" in bob["not scored yet"]
    canvas = (out / "gradebook_canvas.csv").read_text().splitlines()
    assert canvas[0].startswith("Student,ID,SIS User ID,SIS Login ID,Section") and canvas[1].startswith("Points Possible")
    review = (out / "review" / "Q1_1.html").read_text()
    assert "&lt;script&gt;" in review and "<script>" not in review and "1.5 / 2" in review
    assert "Reference answer" in review and "variance" in review
    feedback = (out / "feedback" / "ada.html").read_text()
    assert "VE named, variance right" in feedback and "6.5 / " in feedback


@pytest.mark.parametrize("row, message", [
    ("ada,Q1.1,2,2.5,", "worth 0 to 2"),
    ("ada,Q9.9,2,1,", "unknown question"),
    ("ada,Q1.1,2,lots,", "not a number"),
])
def test_a_bad_scores_row_is_named(tmp_path, row, message):
    items = gradebook.course_items([p for p in NOTEBOOKS if p.name.startswith("01")])
    path = tmp_path / "scores.csv"
    path.write_text("student,question,points_possible,points,comment\n" + row + "\n")
    with pytest.raises(gradebook.ScoresError, match=message) as err:
        gradebook.read_scores(path, items)
    assert "line 2" in str(err.value)
    path.write_text("student,points\n")
    with pytest.raises(gradebook.ScoresError, match="lacks the column"):
        gradebook.read_scores(path, items)


def test_points_of_every_question_are_set():
    total = 0
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        assert Q.problems(nb) == []
        total += sum(Q.points_of(nb.cells[q.answer_index]) for q in Q.find_questions(nb))
    assert total == 121 and E.total_points() == 29
    assert copy.deepcopy(E.EXERCISES) == E.EXERCISES


def test_each_exercise_is_scored_in_a_child_of_its_own(monkeypatch):
    """A cell that kills its process, tampers with the checks or hangs costs its own exercise only."""
    hidden = autograde.load_hidden(HIDDEN)
    dies = with_body("ex1_1", "import os\n    os._exit(3)")
    assert "exit code" in autograde.score("ex1_1", dies, hidden)["visible"][0]
    # tampering: the cell replaces the checker in its own process; the next exercise is checked as usual
    tamper = reference_source("ex1_2").replace(
        "def ", "import coursekit.exercises as _E\n_E.failures = lambda *a, **k: []\n\ndef ", 1)
    tamper_wrong = tamper.replace("return", "return 0 *", 1)
    autograde.score("ex1_2", tamper_wrong, hidden)
    assert autograde.score("ex1_1", with_body("ex1_1", "return x0"), hidden)["points"] == 0
    assert autograde.score("ex1_1", reference_source("ex1_1"), hidden)["points"] == E.EXERCISES["ex1_1"].points
    # a hang is stopped at the time limit
    monkeypatch.setattr(autograde, "SECONDS_PER_EXERCISE", 2)
    hangs = with_body("ex1_1", "while True:\n        pass")
    assert "longer than 2 s" in autograde.score("ex1_1", hangs, hidden)["visible"][0]
