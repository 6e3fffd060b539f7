"""The student edition: every reference answer replaced, outputs cleared, questions and parameters intact."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest

from coursekit import exercises
from coursekit import questions as Q
from coursekit import release

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


@pytest.fixture(scope="module")
def edition(tmp_path_factory):
    out = tmp_path_factory.mktemp("release") / "student"
    release.write_release(out)
    return out


def test_no_reference_answer_survives_anywhere(edition):
    assert release.leaked_answer_lines(edition) == []
    # and the needles are real: hundreds of distinctive lines, every one of which is in the sources
    needles = release.reference_answer_lines(SOURCES)
    assert len(needles) > 200
    everything = "\n".join(p.read_text() for p in edition.rglob("*") if p.is_file())
    assert not [n for n in needles if n in everything]


def test_the_leak_check_finds_a_planted_answer(edition, tmp_path):
    planted = tmp_path / "copy"
    planted.mkdir()
    for p in edition.iterdir():
        (planted / p.name).write_bytes(p.read_bytes())
    secret = release.reference_answer_lines(SOURCES)[7]
    nb = nbformat.read(planted / SOURCES[0].name, as_version=4)
    nb.metadata["notes"] = secret  # hidden in the metadata, JSON-escaped
    nbformat.write(nb, planted / SOURCES[0].name)
    assert any(line == secret for _, line in release.leaked_answer_lines(planted))


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_questions_parameters_and_placeholders(edition, source):
    ref = nbformat.read(source, as_version=4)
    stu = nbformat.read(edition / source.name, as_version=4)
    assert len(stu.cells) == len(ref.cells)
    ref_q, stu_q = Q.find_questions(ref), Q.find_questions(stu)
    assert [q.label for q in stu_q] == [q.label for q in ref_q]
    assert [q.prompt for q in stu_q] == [q.prompt for q in ref_q]
    for q in stu_q:
        assert q.answer.strip() == Q.STUDENT_PLACEHOLDER
        assert stu.cells[q.answer_index].metadata["nbgrader"]["grade_id"] == q.grade_id
    # everything else is unchanged: the parameters cell first of all
    answers = {q.answer_index for q in ref_q}
    for i, (a, b) in enumerate(zip(ref.cells, stu.cells)):
        if release.is_exercise_cell(a):  # the solution is stubbed, the rest of the cell kept
            title = exercises.label(a.metadata["nbgrader"]["grade_id"])
            assert b.source == release.strip_exercise(a.source, title) and "raise NotImplementedError" in b.source
            assert Q.solution_text(a.source).strip() not in b.source
        elif i not in answers:
            assert a.source == b.source, (source.name, i)
    first_code = next(c for c in stu.cells if c.cell_type == "code")
    assert "parameters" in first_code.metadata["tags"]
    for cell in stu.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None
    assert set(stu.metadata) <= {"kernelspec", "language_info"}


def test_release_refuses_to_overwrite(tmp_path):
    out = tmp_path / "student"
    release.write_release(out)
    with pytest.raises(release.ReleaseError, match="--overwrite"):
        release.write_release(out)
    release.write_release(out, overwrite=True)
    with pytest.raises(release.ReleaseError, match="over the course notebooks"):
        release.write_release(ROOT / "notebooks", overwrite=True)


def test_release_command_line(tmp_path):
    from coursekit.__main__ import main

    assert main(["release", "--out", str(tmp_path / "s")]) == 0
    assert json.loads((tmp_path / "s" / SOURCES[0].name).read_text())["cells"]
    assert main(["release", "--out", str(tmp_path / "s")]) == 1
