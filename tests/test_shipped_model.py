"""The shipped checkpoints load with their checksums verified and still draw the prompted classes."""

from pathlib import Path

import pytest

from diffusion_lib.atomic import read_checksums, sha256_file
from diffusion_lib.evaluator import Evaluator
from diffusion_lib.pipeline import Pipeline

CHECKPOINTS = Path(__file__).resolve().parent.parent / "checkpoints"


def test_every_shipped_file_is_listed_and_intact():
    sums = read_checksums(CHECKPOINTS)
    shipped = {p.name for p in CHECKPOINTS.iterdir() if p.suffix in (".safetensors", ".json")}
    assert shipped and shipped == set(sums)
    for name, digest in sums.items():
        assert sha256_file(CHECKPOINTS / name) == digest, name
    # every file small enough to move around easily
    assert all((CHECKPOINTS / n).stat().st_size < 16 * 2**20 for n in shipped)


@pytest.mark.slow
def test_shipped_model_draws_the_prompted_classes():
    """200 images (20 per class), DPM-Solver++ 20 steps, guidance 3: the classifier agrees with the prompt."""
    pipe = Pipeline.from_pretrained(CHECKPOINTS, "cpu")
    out = pipe(list(pipe.class_names), num_images=20, num_inference_steps=20, guidance_scale=3.0, seed=123,
               progress=False)
    result = Evaluator.from_pretrained(CHECKPOINTS).evaluate(out.images, out.labels)
    assert result["accuracy"] >= 0.95, result
