"""Submissions as they arrive: folders, nested folders, ZIPs, platform bulk downloads, browser renames."""

from __future__ import annotations

import hashlib
import os
import time
import zipfile
from pathlib import Path

import pytest

from coursekit import submissions as S

COURSE = ["01_forward_diffusion.ipynb", "02_noise_schedules.ipynb", "07_training_reduced_epochs.ipynb"]


def notebook(text: str) -> str:
    return '{"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5, "note": "%s"}' % text


def write(path: Path, text: str, age_s: float = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    if age_s:
        then = time.time() - age_s
        os.utime(path, (then, then))
    return path


def tree_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        h.update(str(p.relative_to(folder)).encode())
        if p.is_file() and not p.is_symlink():
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.mark.parametrize("name, expected", [
    ("01_forward_diffusion.ipynb", "01_forward_diffusion.ipynb"),
    ("01_forward_diffusion (1).ipynb", "01_forward_diffusion.ipynb"),
    ("01_forward_diffusion-2.ipynb", "01_forward_diffusion.ipynb"),
    ("02_noise_schedules (3).ipynb", "02_noise_schedules.ipynb"),
    ("01_forward.ipynb", None),
    ("01_forward_diffusion.pdf", None),
])
def test_course_names_survive_browser_renames(name, expected):
    assert S.course_name(name, COURSE) == expected


@pytest.mark.parametrize("name, student, notebook", [
    ("Ada Lovelace_123456_assignsubmission_file_01_forward_diffusion.ipynb", "Ada Lovelace", "01_forward_diffusion.ipynb"),
    ("lovelaceada_12345_67890_02_noise_schedules.ipynb", "lovelaceada_12345", "02_noise_schedules.ipynb"),
    ("lovelaceada_LATE_12345_67890_02_noise_schedules.ipynb", "lovelaceada_12345", "02_noise_schedules.ipynb"),
    ("ada_07_training_reduced_epochs (1).ipynb", "ada", "07_training_reduced_epochs.ipynb"),
    ("ada-01_forward_diffusion.ipynb", "ada", "01_forward_diffusion.ipynb"),
])
def test_platform_prefixes_name_the_student(name, student, notebook):
    assert S.split_prefixed(name, COURSE) == (student, notebook)


def test_every_shape_is_recognised_and_the_rest_reported(tmp_path):
    subs = tmp_path / "submissions"
    # a folder per student, one notebook nested and browser-renamed, an older copy at the top
    write(subs / "ada" / "work" / "01_forward_diffusion (1).ipynb", notebook("ada new"))
    write(subs / "ada" / "01_forward_diffusion.ipynb", notebook("ada old"), age_s=3600)
    write(subs / "ada" / "derivations.pdf", "%PDF-1.4")
    write(subs / "ada" / "scratch.ipynb", notebook("not a course notebook"))
    # a ZIP per student, with a folder inside and macOS debris
    with zipfile.ZipFile(subs / "bob.zip", "w") as z:
        z.writestr("bob-work/02_noise_schedules.ipynb", notebook("bob"))
        z.writestr("__MACOSX/bob-work/._02_noise_schedules.ipynb", "junk")
    # Moodle's and Canvas's flat bulk downloads
    write(subs / "Cara Diaz_777_assignsubmission_file_01_forward_diffusion.ipynb", notebook("cara"))
    write(subs / "dunnedan_12_34_07_training_reduced_epochs.ipynb", notebook("dan"))
    with zipfile.ZipFile(subs / "Eve Fox_888_assignsubmission_file_eve.zip", "w") as z:
        z.writestr("01_forward_diffusion.ipynb", notebook("eve"))
    # what is not a submission
    write(subs / "notes.txt", "hello")
    write(subs / "01_forward_diffusion.ipynb", notebook("whose?"))
    before = tree_digest(subs)

    got = S.collect(subs, COURSE, tmp_path / "out" / ".submissions")
    assert tree_digest(subs) == before, "the submissions are only read"
    assert sorted(got.students) == ["Cara Diaz", "Eve Fox", "ada", "bob", "dunnedan_12"]
    ada = got.students["ada"]
    assert "ada new" in (ada / "01_forward_diffusion.ipynb").read_text()
    assert "bob" in (got.students["bob"] / "02_noise_schedules.ipynb").read_text()
    assert "cara" in (got.students["Cara Diaz"] / "01_forward_diffusion.ipynb").read_text()
    assert "dan" in (got.students["dunnedan_12"] / "07_training_reduced_epochs.ipynb").read_text()
    assert "eve" in (got.students["Eve Fox"] / "01_forward_diffusion.ipynb").read_text()
    problems = "\n".join(got.problems)
    assert "notes.txt" in problems and "01_forward_diffusion.ipynb: a file at the top level" in problems
    assert "scratch.ipynb is not a notebook of this course" in problems
    assert "2 files for 01_forward_diffusion.ipynb" in problems and "graded the newest" in problems
    assert any("derivations.pdf" in k for k in got.kept)
    # a second run replaces its own staging folder; a foreign one is refused
    S.collect(subs, COURSE, tmp_path / "out" / ".submissions")
    foreign = tmp_path / "mine"
    write(foreign / "keep.txt", "my work")
    with pytest.raises(ValueError, match="not written by grade"):
        S.collect(subs, COURSE, foreign)
    assert (foreign / "keep.txt").read_text() == "my work"


def test_hostile_archives_are_refused_member_by_member(tmp_path):
    subs = tmp_path / "submissions"
    subs.mkdir()
    with zipfile.ZipFile(subs / "mallory.zip", "w") as z:
        z.writestr("../../escaped.ipynb", notebook("escape"))
        z.writestr("/abs/01_forward_diffusion.ipynb", notebook("absolute"))
        link = zipfile.ZipInfo("01_forward_diffusion.ipynb")
        link.external_attr = (0o120777 << 16)
        z.writestr(link, "/etc/passwd")
        z.writestr("ok/02_noise_schedules.ipynb", notebook("fine"))
    (subs / "broken.zip").write_bytes(b"PK\x03\x04 not really")
    got = S.collect(subs, COURSE, tmp_path / "out" / ".submissions")
    problems = "\n".join(got.problems)
    assert "points outside the archive" in problems and "is a link" in problems and "not a readable ZIP" in problems
    assert not (tmp_path / "escaped.ipynb").exists() and not list(tmp_path.rglob("escaped.ipynb"))
    folder = got.students["mallory"]
    assert "fine" in (folder / "02_noise_schedules.ipynb").read_text()
    assert not (folder / "01_forward_diffusion.ipynb").exists()


def test_a_zip_bomb_is_not_unpacked(tmp_path, monkeypatch):
    monkeypatch.setattr(S, "MAX_ZIP_BYTES", 1000)
    with zipfile.ZipFile(tmp_path / "big.zip", "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("01_forward_diffusion.ipynb", "0" * 100_000)
    problems = S.safe_unzip(tmp_path / "big.zip", tmp_path / "out")
    assert "not unpacked" in problems[0] and not (tmp_path / "out").exists()
