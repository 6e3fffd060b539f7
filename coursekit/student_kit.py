"""The student kit: one ZIP with everything a student needs and nothing an instructor keeps.

::

    python -m coursekit release --zip student-kit.zip

Inside, under ``stable-diffusion-course/``: the student edition of the notebooks, the code
they import (``diffusion_lib`` and the notebook helpers of ``coursekit``), the pretrained
checkpoints, ``requirements.txt`` and ``pyproject.toml``, a ``kit`` script with the set-up and
lab commands, and a README for students. Never inside: reference answers, derivations,
exercise solutions, hidden tests, the grader, the test suite. Before the archive is written,
every file that would go in is searched for every line of a reference answer, an exercise
solution and the hidden tests (:func:`leaks`); one hit and nothing is written.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
import zipfile
from pathlib import Path

from . import REPO
from .release import ReleaseError, course_notebooks, leaked_answer_lines, student_notebook

ROOT_NAME = "stable-diffusion-course"
# the coursekit modules the notebooks import (and what those import); the grader, the release and the PDF export stay
STUDENT_MODULES = ("__init__.py", "params.py", "results.py", "show.py", "widgets.py", "exercises.py",
                   "animation.py", "checkpoints.py", "runs.py", "trace.py")
HIDDEN_TESTS = REPO / "grading" / "hidden_tests.py"
FORBIDDEN_FOLDERS = ("answers", "grading", "tests", "training")
FORBIDDEN_FILES = ("hidden_tests.py", "derivations.md", "answers.pdf", "autograde.py", "gradebook.py", "grade.py",
                   "sandbox.py", "release.py", "student_kit.py", "export.py", "course.py")
MIN_HIDDEN_CHARS = 30

README = """# Stable Diffusion course: student kit

A miniature Stable Diffusion on Fashion-MNIST that runs on a laptop, and seven notebooks that take it apart.

## Set up

On Debian or Ubuntu:

```bash
./kit setup   # Fashion-MNIST from Debian (dataset-fashion-mnist), a .venv with the requirements, the Jupyter kernel
./kit lab     # JupyterLab on notebooks/
```

Anywhere else (macOS, Windows, a JupyterHub), with Python 3.10 or newer:

```bash
python -m venv .venv && . .venv/bin/activate     # Windows: .venv\\Scripts\\activate
pip install -r requirements.txt && pip install -e .
jupyter lab notebooks/
```

The notebooks find Fashion-MNIST in `$DIFFUSION_DATA` (a folder with the four `*-ubyte.gz` files) or at
`/usr/share/datasets/fashion-mnist/`; on a machine with internet, `diffusion_lib.data.load_split("train",
download=True)` fetches it once.

Training runs about 1.1x faster on Linux with a C compiler (Debian: `apt-get install gcc libc6-dev`): the
model's fused CPU kernels (`diffusion_lib/kernels.c`) are then built on first use, in about a second.
Without one the same formulas run as PyTorch ops; nothing else changes.

## Work

* **Questions** (`**Q1.1**` ...): answer each in the code cell right below it, as comment lines between
  `### BEGIN SOLUTION` and `### END SOLUTION` (replace `# YOUR ANSWER HERE`). Derivations that need more room
  go in a separate PDF.
* **Code exercises** (`**Exercise 1.1**` ...): write the function between the markers, replacing the
  `raise NotImplementedError` line, and run the cell below it: it compares your function with the kit's on
  random inputs and says what differs. The grader runs the same check and hidden cases.
* Keep the question, answer and exercise cells where they are (the grader finds them by their metadata), and
  run every notebook from top to bottom before you hand it in.

## Hand in

The notebooks you worked in (`notebooks/NN_*.ipynb`), in one ZIP or as files, as your course asks.
"""

KIT = """#!/usr/bin/env bash
# The student kit's set-up and lab commands.
#
#   ./kit setup    Fashion-MNIST from Debian, a .venv with the requirements, the Jupyter kernel
#   ./kit lab      JupyterLab on notebooks/ with the kit's kernel
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
VENV=.venv

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

setup() {
    if command -v dpkg-query >/dev/null && ! dpkg-query -W -f='${Status}' dataset-fashion-mnist 2>/dev/null \\
            | grep -q "install ok installed" && [ -z "${DIFFUSION_DATA:-}" ]; then
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends dataset-fashion-mnist
    fi
    [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q -r requirements.txt
    "$VENV/bin/python" -m pip install -q --no-deps --no-build-isolation -e .
    "$VENV/bin/python" -m ipykernel install --sys-prefix --name diffusion-kit --display-name "Python (diffusion-kit)" \\
        >/dev/null
}

case "${1:-}" in
    setup) setup ;;
    lab) setup; exec "$VENV/bin/jupyter" lab notebooks/ ;;
    *) sed -n '2,5p' "$0" | sed 's/^# \\{0,1\\}//'; exit 2 ;;
esac
"""


def _copy_tree(source: Path, target: Path) -> None:
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".*"))


def build(staging: Path, notebooks_dir: Path = REPO / "notebooks") -> Path:
    """Lay the student kit out in ``staging/stable-diffusion-course``; returns that folder."""
    import nbformat

    root = staging / ROOT_NAME
    (root / "notebooks").mkdir(parents=True)
    for path in course_notebooks(notebooks_dir):
        nbformat.write(student_notebook(nbformat.read(path, as_version=4)), root / "notebooks" / path.name)
    _copy_tree(REPO / "diffusion_lib", root / "diffusion_lib")
    (root / "coursekit").mkdir()
    for name in STUDENT_MODULES:
        shutil.copyfile(REPO / "coursekit" / name, root / "coursekit" / name)
    _copy_tree(REPO / "checkpoints", root / "checkpoints")
    for name in ("requirements.txt", "pyproject.toml"):
        shutil.copyfile(REPO / name, root / name)
    (root / "README.md").write_text(README)
    (root / "kit").write_text(KIT)
    (root / "kit").chmod(0o755)
    return root


def public_code() -> str:
    """The source of the library modules a kit ships, as they are in the repository."""
    files = sorted((REPO / "diffusion_lib").glob("*.py")) + [REPO / "coursekit" / name for name in STUDENT_MODULES]
    return "\n".join(p.read_text() for p in files)


def hidden_test_lines(path: Path = HIDDEN_TESTS) -> list[str]:
    """The distinctive lines of the hidden tests (long enough not to be ordinary code)."""
    if not path.is_file():
        return []
    return [line.strip() for line in path.read_text().splitlines() if len(line.strip()) >= MIN_HIDDEN_CHARS]


def leaks(root: Path, notebooks_dir: Path = REPO / "notebooks") -> list[str]:
    """What in the laid-out kit must not reach students: answer or solution lines, hidden-test lines, or files
    of the instructors' side."""
    # the library the kit ships is public: an exercise asks for a function that diffusion_lib has, and checks
    # the student's against it
    code = public_code()
    found = [f"{f}: reference line {line[:60]!r}" for f, line in
             leaked_answer_lines(root, course_notebooks(notebooks_dir), code)]
    needles = [line for line in hidden_test_lines() if line not in code]
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        relative = str(path.relative_to(root))
        if path.relative_to(root).parts[0] in FORBIDDEN_FOLDERS or path.name in FORBIDDEN_FILES:
            found.append(f"{relative}: an instructors' file")
        if path.suffix in (".py", ".ipynb", ".md", ".txt", ".json", ".toml", ""):
            text = path.read_bytes().decode("utf-8", errors="replace")
            found += [f"{relative}: hidden-test line {n[:60]!r}" for n in needles if n in text]
    return found


def write_zip(zip_path: str | Path, notebooks_dir: str | Path = REPO / "notebooks", overwrite: bool = False) -> Path:
    """Build, leak-check and write the student kit; the ZIP appears only when all went well."""
    zip_path, notebooks_dir = Path(zip_path), Path(notebooks_dir)
    if zip_path.suffix.lower() != ".zip":
        raise ReleaseError(f"--zip {zip_path}: give a file name ending in .zip")
    if zip_path.is_dir():
        raise ReleaseError(f"--zip {zip_path} is a folder; give the path of the .zip file to write")
    if zip_path.exists() and not overwrite:
        raise ReleaseError(f"{zip_path} exists; pass --overwrite to replace it, or choose another name")
    zip_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="coursekit-kit-") as tmp:
        root = build(Path(tmp), notebooks_dir)
        problems = leaks(root, notebooks_dir)
        if problems:
            raise ReleaseError(f"{len(problems)} thing(s) would leak into the student kit ({'; '.join(problems[:4])}); "
                               "nothing was written")
        partial = zip_path.with_name(f".{zip_path.name}.partial")
        with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as archive:
            for path in sorted(p for p in root.rglob("*") if p.is_file()):
                info = zipfile.ZipInfo(str(path.relative_to(root.parent)), date_time=(2026, 1, 1, 0, 0, 0))
                mode = 0o755 if os.access(path, os.X_OK) else 0o644
                info.external_attr = (stat.S_IFREG | mode) << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                archive.writestr(info, path.read_bytes())
        os.replace(partial, zip_path)
    return zip_path
