"""The course's main job: everything a ``./kit course`` run produces, from the shipped checkpoints.

``python -m coursekit course [--out output]`` writes into ``out``:

* ``notebooks/NN_*.ipynb`` - every course notebook executed by papermill in quick mode (the
  sources in ``notebooks/`` are never written to), with each notebook's ``results_NN.json``;
* ``samples.png`` / ``samples.npz`` - ten samples of every class from the shipped model;
* ``evaluation.json`` - FID-FMNIST, KID and conditional accuracy of 1,000 samples at guidance
  1 and 3, beside the real-data floor (also printed);

and exports the answers (every question, answer and figure of the executed notebooks, then
the derivations) to ``answers/answers.pdf``.

A notebook that fails is reported with its error and the job goes on; the exit code is 1 if any did.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from diffusion_lib.atomic import atomic_write_text

from . import REPO, numbered_notebooks
from .kernels import ipc_kernel_manager



FULL_MODE = REPO / "answers" / "full_mode"  # the results files of the last full run, which the answers quote


def run_notebooks(out: Path, checkpoint: Path, device: str, quick: bool = True) -> list[dict]:
    """Execute ``notebooks/NN_*.ipynb`` (in quick mode, or with their default parameters) into ``out``;
    one status dict per notebook."""
    out.mkdir(parents=True, exist_ok=True)
    with ipc_kernel_manager() as manager:
        return [run_notebook(source, out, checkpoint, device, quick, manager)
                for source in numbered_notebooks(REPO / "notebooks")]


def run_notebook(source: Path, out: Path, checkpoint: Path, device: str, quick: bool, manager: type) -> dict:
    """Execute one course notebook into ``out`` with papermill, its kernel started by ``manager``; its status."""
    import papermill

    known = papermill.inspect_notebook(str(source))
    wanted = {"quick": quick, "device": "cpu" if device == "auto" else device, "checkpoint_dir": str(checkpoint),
              "evaluator_dir": str(checkpoint)}
    params = {k: v for k, v in wanted.items() if k in known}
    start = time.perf_counter()
    status = {"notebook": source.name, "ok": True, "error": None}
    try:
        papermill.execute_notebook(str(source), str(out / source.name), parameters=params, kernel_name="python3",
                                   cwd=str(out), progress_bar=False, kernel_manager_class=manager)
    except papermill.PapermillExecutionError as err:
        status.update(ok=False, error=f"cell {err.exec_count}: {err.ename}: {err.evalue}")
    status["seconds"] = round(time.perf_counter() - start, 1)
    print(f"{source.name:<40} {'ok' if status['ok'] else 'FAILED'} ({status['seconds']} s)"
          + (f"  {status['error']}" if status["error"] else ""), flush=True)
    return status


def record_full_mode(executed: Path, statuses: list[dict], target: Path = FULL_MODE) -> list[Path]:
    """Keep the results of a full run: each ``results_NN.json`` of ``executed`` copied into ``target`` (paths
    written relative to the repository), and ``times.json`` with each notebook's wall time."""
    target.mkdir(parents=True, exist_ok=True)
    written = []
    for results in sorted(Path(executed).glob("results_[0-9][0-9].json")):
        text = results.read_text().replace(str(REPO) + "/", "").replace(str(Path(executed).resolve()), ".")
        document = json.loads(text)
        if document.get("parameters", {}).get("quick") is not False:
            raise ValueError(f"{results} is not from a full run (quick = {document.get('parameters', {}).get('quick')})")
        atomic_write_text(target / results.name, json.dumps(document, indent=1) + "\n")
        written.append(target / results.name)
    atomic_write_text(target / "times.json", json.dumps(statuses, indent=1) + "\n")
    return written


def run_full_mode(out: str | Path, checkpoint: str | Path = "checkpoints", device: str = "auto") -> int:
    """Every notebook with its default parameters (an hour or more on a 2-core CPU), and the results kept in
    ``answers/full_mode/`` for the reference answers' numbers (``tests/answer_numbers.py``)."""
    out, checkpoint = Path(out).resolve(), Path(checkpoint).resolve()
    statuses = run_notebooks(out, checkpoint, device, quick=False)
    failed = [s["notebook"] for s in statuses if not s["ok"]]
    if failed:
        print(f"{len(failed)} notebook(s) failed: {', '.join(failed)}; nothing recorded")
        return 1
    for path in record_full_mode(out, statuses):
        print(f"recorded {path}")
    return 0


def run_course(out: str | Path, checkpoint: str | Path = "checkpoints", device: str = "auto",
               pdf: str | Path | None = REPO / "answers" / "answers.pdf") -> int:
    import numpy as np

    from diffusion_lib.evaluator import Evaluator, format_table, run_evaluation
    from diffusion_lib.pipeline import Pipeline
    from diffusion_lib.plotting import save_image_grid

    from .export import ExportError, export_answers, pdf_toolchain_problem

    out, checkpoint = Path(out).resolve(), Path(checkpoint).resolve()
    out.mkdir(parents=True, exist_ok=True)
    statuses = run_notebooks(out / "notebooks", checkpoint, device)

    pipe = Pipeline.from_pretrained(checkpoint, device)
    grid = pipe(list(pipe.class_names), num_images=10, num_inference_steps=20, guidance_scale=3.0, seed=0,
                progress=False)
    save_image_grid(grid.images, out / "samples.png", nrow=10)
    np.savez_compressed(out / "samples.npz", images=grid.images.numpy(), labels=grid.labels.numpy())
    print(f"samples: {out / 'samples.png'} (one row per class: {', '.join(pipe.class_names)})")

    evaluator = Evaluator.from_pretrained(checkpoint, device=str(pipe.device))
    rows = [run_evaluation(pipe, evaluator, 1000, g, 20, "dpmsolver++", seed=1, progress=False) for g in (1.0, 3.0)]
    floor = evaluator.real_floor(n=1000)
    print(format_table(rows, floor))
    atomic_write_text(out / "evaluation.json",
                      json.dumps({"real_floor": floor, "results": rows, "notebooks": statuses}, indent=2) + "\n")
    failed = [s["notebook"] for s in statuses if not s["ok"]]
    if pdf is not None:
        start = time.perf_counter()
        try:
            path = export_answers(out / "notebooks", pdf, format="auto")
            print(f"answers: {path} ({time.perf_counter() - start:.0f} s)")
            if path.suffix == ".html":
                print(f"  (as one HTML page, not a PDF: {pdf_toolchain_problem()})")
        except ExportError as err:
            print(f"answers PDF failed: {err}")
            failed.append("answers PDF")
    if failed:
        print(f"{len(failed)} part(s) failed: {', '.join(failed)}")
    return 1 if failed else 0
