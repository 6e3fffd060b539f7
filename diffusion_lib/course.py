"""The course's main job: everything a ``./kit course`` run produces, from the shipped checkpoints.

Writes into ``out``: a grid of samples for every class (``samples.png``), the
same images as ``samples.npz`` and a short evaluation (``evaluation.json``), and
prints the evaluation table beside the real-data floor.
"""

from __future__ import annotations

import json
from pathlib import Path

from .checkpoint import atomic_write_text


def run_course(out: str | Path, checkpoint: str | Path = "checkpoints", device: str = "auto") -> int:
    import numpy as np

    from .__main__ import format_table, run_evaluation
    from .evaluator import Evaluator
    from .pipeline import Pipeline
    from .plotting import save_image_grid

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pipe = Pipeline.from_pretrained(checkpoint, device)
    grid = pipe(list(pipe.class_names), num_images=10, num_inference_steps=20, guidance_scale=3.0, seed=0)
    save_image_grid(grid.images, out / "samples.png", nrow=10)
    np.savez_compressed(out / "samples.npz", images=grid.images.numpy(), labels=grid.labels.numpy())
    print(f"samples: {out / 'samples.png'} (one row per class: {', '.join(pipe.class_names)})")

    evaluator = Evaluator.from_pretrained(checkpoint, device=str(pipe.device))
    rows = [run_evaluation(pipe, evaluator, 1000, g, 20, "dpmsolver++", seed=1) for g in (1.0, 3.0)]
    floor = evaluator.real_floor(n=1000)
    print(format_table(rows, floor))
    atomic_write_text(out / "evaluation.json", json.dumps({"real_floor": floor, "results": rows}, indent=2) + "\n")
    return 0
