"""The student kit ZIP: everything a student needs, nothing an instructor keeps, and it runs on its own.

The kit is unzipped into an empty folder and every notebook runs there in quick mode, importing the
kit's own copy of diffusion_lib and coursekit (PYTHONPATH puts it first; the installed packages are
reused) and finding the kit's own checkpoints.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nbformat
import pytest

from coursekit import release, student_kit
from coursekit.release import ReleaseError

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    folder = tmp_path_factory.mktemp("kit")
    path = student_kit.write_zip(folder / "student-kit.zip")
    unzipped = folder / "unzipped"
    with zipfile.ZipFile(path) as archive:
        archive.extractall(unzipped)
    return path, unzipped / student_kit.ROOT_NAME


def test_the_kit_holds_what_students_need_and_nothing_else(kit):
    path, root = kit
    names = zipfile.ZipFile(path).namelist()
    assert all(n.startswith(student_kit.ROOT_NAME + "/") for n in names)
    top = {Path(n).parts[1] for n in names}
    assert top == {"notebooks", "diffusion_lib", "coursekit", "checkpoints", "requirements.txt", "pyproject.toml",
                   "README.md", "kit"}
    assert sorted(p.name for p in (root / "notebooks").glob("*.ipynb")) == [p.name for p in NOTEBOOKS]
    assert not any(name in n for n in names for name in ("hidden_tests", "answers", "grade.py", "sandbox.py",
                                                         "derivations", "autograde"))
    info = zipfile.ZipFile(path).getinfo(f"{student_kit.ROOT_NAME}/kit")
    assert (info.external_attr >> 16) & 0o111, "kit is executable once unzipped (unzip restores the mode)"
    assert student_kit.leaks(root) == []
    # the notebooks are the student edition: no answer, every exercise a stub
    for nb_path in (root / "notebooks").glob("*.ipynb"):
        nb = nbformat.read(nb_path, as_version=4)
        for cell in nb.cells:
            if release.is_exercise_cell(cell):
                assert "raise NotImplementedError" in cell.source
    # the checkpoints load from the kit (and match their SHA256SUMS)
    done = subprocess.run([sys.executable, "-c", "from diffusion_lib.pipeline import Pipeline; import diffusion_lib; "
                           "Pipeline.from_pretrained('checkpoints', 'cpu'); print(diffusion_lib.__file__)"],
                          cwd=root, env={**os.environ, "PYTHONPATH": str(root)}, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().startswith(str(root)), "the kit's own diffusion_lib must be the one imported"


def test_the_leak_check_finds_a_planted_answer_and_a_hidden_test(kit, tmp_path):
    _, root = kit
    planted = tmp_path / "planted"
    import shutil

    shutil.copytree(root, planted)
    secret = release.reference_answer_lines(NOTEBOOKS)[0]
    (planted / "notes.md").write_text(f"crib sheet\n{secret}\n")
    hidden = next(line for line in student_kit.hidden_test_lines() if "NoiseSchedule(" in line)
    (planted / "coursekit" / "extra.py").write_text(hidden + "\n")
    (planted / "grading").mkdir()
    (planted / "grading" / "x.py").write_text("")
    found = " | ".join(student_kit.leaks(planted))
    assert "reference line" in found and "hidden-test line" in found and "instructors' file" in found


def test_zip_refuses_to_replace_and_bad_names(tmp_path):
    target = tmp_path / "kit.zip"
    target.write_text("somebody's file")
    with pytest.raises(ReleaseError, match="--overwrite"):
        student_kit.write_zip(target)
    assert target.read_text() == "somebody's file"
    with pytest.raises(ReleaseError, match=".zip"):
        student_kit.write_zip(tmp_path / "kit.tar")
    with pytest.raises(ReleaseError, match="folder"):
        (tmp_path / "d.zip").mkdir()
        student_kit.write_zip(tmp_path / "d.zip")
    done = subprocess.run([sys.executable, "-m", "coursekit", "release"], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 2 and "--zip" in done.stderr


def _run(root: Path, name: str) -> tuple[str, int, str]:
    out = root / "notebooks" / f"executed-{name}"
    done = subprocess.run(
        [sys.executable, "-m", "papermill", name, out.name, "-p", "quick", "True", "-p", "device", "cpu",
         "--kernel", "python3", "--no-progress-bar"],
        cwd=root / "notebooks", env={**os.environ, "PYTHONPATH": str(root)}, capture_output=True, text=True,
        timeout=1500)
    return name, done.returncode, done.stderr[-2000:]


@pytest.mark.slow
@pytest.mark.notebook
def test_every_notebook_runs_from_the_unzipped_kit(kit):
    _, root = kit
    names = [p.name for p in NOTEBOOKS]
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda n: _run(root, n), names))
    failed = [(n, err) for n, rc, err in results if rc != 0]
    assert not failed, failed
    for name in names:
        nb = nbformat.read(root / "notebooks" / f"executed-{name}", as_version=4)
        checks = ["".join(o.get("text", "") for o in c.outputs) for c in nb.cells
                  if c.cell_type == "code" and "exercises.check(" in c.source]
        assert checks and all(text.startswith("Not yet") for text in checks), (name, checks)
        assert json.loads((root / "notebooks" / f"results_{name[:2]}.json").read_text())["values"]
