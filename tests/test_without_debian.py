"""The kit without Debian: ``pip install -e .`` in a fresh virtual environment that sees none of the Debian
extras (no xelatex, pandoc, pdftotext or bubblewrap on PATH; the data from ``$DIFFUSION_DATA``, as after a
download), as on macOS, Windows or a JupyterHub.

The fresh environment gets the kit's dependencies the way pip would find them installed (a ``.pth``
file naming this environment's site-packages: PyPI's torch is several GB and is already here), and
pip itself must then resolve ``pyproject.toml``'s dependencies with no index at all.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, pytest.mark.notebook]


def test_pip_install_without_debian_then_sample_run_a_notebook_and_export(tmp_path):
    # the kit as a user has it: its sources (a copy), the shipped checkpoints
    kit = tmp_path / "kit"
    for part in ("diffusion_lib", "coursekit", "notebooks", "answers", "grading"):
        shutil.copytree(ROOT / part, kit / part, ignore=shutil.ignore_patterns("__pycache__", "*.pdf"))
    for part in ("pyproject.toml", "README.md"):
        shutil.copyfile(ROOT / part, kit / part)
    (kit / "checkpoints").symlink_to(ROOT / "checkpoints")
    data = tmp_path / "data"  # Fashion-MNIST as a download leaves it
    data.mkdir()
    for f in Path("/usr/share/datasets/fashion-mnist").glob("*-ubyte*"):
        (data / f.name).symlink_to(f)

    base = Path(sys._base_executable)  # the interpreter this environment was made from
    venv = tmp_path / "venv"
    subprocess.run([str(base), "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "installed-packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    bare = tmp_path / "bin"  # PATH: the fresh environment's commands and nothing else
    bare.mkdir()
    env = {"PATH": f"{venv / 'bin'}:{bare}", "HOME": str(tmp_path / "home"), "DIFFUSION_DATA": str(data),
           "TMPDIR": str(tmp_path), "LANG": "C.UTF-8", "OMP_NUM_THREADS": "1",
           # the data files pip puts in an environment's share/jupyter (nbconvert's templates), which a .pth
           # file does not bring
           "JUPYTER_PATH": str(Path(sys.prefix) / "share" / "jupyter")}

    def run(*args, cwd=kit, ok=True):
        done = subprocess.run([str(python), *args], capture_output=True, text=True, cwd=cwd, env=env)
        assert (done.returncode == 0) == ok, done.stdout[-2000:] + done.stderr[-3000:]
        return done

    # the venv's own old setuptools would shadow the build backend pip would fetch; the installed one serves
    run("-m", "pip", "uninstall", "-q", "-y", "setuptools")
    run("-m", "pip", "install", "-q", "--no-index", "--no-build-isolation", "-e", ".")
    where = run("-c", "import diffusion_lib, coursekit, shutil; print(diffusion_lib.__file__, coursekit.__file__, "
                      "shutil.which('xelatex'), shutil.which('pandoc'), shutil.which('bwrap'))").stdout.split()
    assert where[0].startswith(str(kit)) and where[1].startswith(str(kit)) and where[2:] == ["None"] * 3

    run("-m", "diffusion_lib", "sample", "--prompt", "a photo of a bag", "--num-images", "4", "--steps", "5",
        "--device", "cpu", "--no-progress", "--out", str(tmp_path / "bags.png"))
    assert (tmp_path / "bags.png").stat().st_size > 1000

    executed = tmp_path / "executed"
    executed.mkdir()
    run("-m", "papermill", "01_forward_diffusion.ipynb", str(executed / "01_forward_diffusion.ipynb"), "-p", "quick",
        "True", "-p", "device", "cpu", "-p", "results_dir", str(executed), "-k", "python3", "--no-progress-bar",
        cwd=kit / "notebooks")
    assert (executed / "results_01.json").is_file()

    done = run("-m", "coursekit", "export", "--notebooks", str(executed), "--out", str(tmp_path / "answers.pdf"))
    assert "xelatex and pandoc not found" in done.stderr and "brew install" in done.stderr
    page = (tmp_path / "answers.html").read_text()
    assert "Q1.1" in page and "data:image/png;base64," in page
