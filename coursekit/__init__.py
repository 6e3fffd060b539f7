"""coursekit: the tooling around the course notebooks (not the model: that is ``diffusion_lib``).

Modules, one job each:

* ``params``     - check a notebook's papermill parameters, with errors that say how to fix them
* ``widgets``    - a slider when a person is at the keyboard, the same drawing as a static figure otherwise
* ``results``    - write the numbers a grader needs beside the executed notebook (``results_NN.json``)
* ``questions``  - find the embedded questions and their reference answers in a notebook
* ``show``       - source code, tables and image grids that read well in JupyterLab and in the PDF
* ``checkpoints`` - find and check a notebook's checkpoint folder, wherever the kernel runs
* ``trace``      - a shape trace of a model, block by block (forward hooks)
* ``animation``  - a sampling trajectory as an HTML/JS animation, and as a static strip for PDFs
* ``runs``       - a student's training run: reuse, resume or train; the shipped epoch ladder

coursekit imports ``diffusion_lib``; ``diffusion_lib`` never imports coursekit.
"""

from pathlib import Path

__version__ = "0.1.0"

# the kit's checkout: notebooks/, checkpoints/, answers/ (the tools find the course from here)
REPO = Path(__file__).resolve().parent.parent


def numbered_notebooks(folder: str | Path) -> list[Path]:
    """The course's notebooks in ``folder``, in course order: ``01_*.ipynb``, ``02_*.ipynb``, ..."""
    return sorted(Path(folder).glob("[0-9][0-9]_*.ipynb"))
