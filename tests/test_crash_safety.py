"""A kill at any moment of a save loses nothing: fault injection at every write point.

A tiny run is killed (SIGKILL, in a child process) at each step of its second epoch's
save in turn: after each staged file, after the journal, after each file is put in
place, after SHA256SUMS. Then, for every kill, the folder must

* load: ``Pipeline.from_pretrained`` works, and the folder holds exactly the first
  epoch's files or exactly the second's (never a mix), each matching SHA256SUMS, with
  no staged file, journal or lock left behind;
* resume: ``--resume`` ends with files byte-identical to an uninterrupted run.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from diffusion_lib.atomic import JOURNAL, LOCK, STAGED_SUFFIX, read_checksums, sha256_file
from diffusion_lib.pipeline import Pipeline
from diffusion_lib.train import TrainConfig, train

pytestmark = pytest.mark.slow

TINY = dict(
    epochs=2, batch_size=32, limit=64, warmup_steps=3, cond_drop_prob=0.25, seed=0,
    unet={"base_channels": 8, "channel_mult": [1, 2], "attention_levels": [1], "num_heads": 2, "norm_groups": 4,
          "ff_mult": 1, "dropout": 0.1},
    prompt={"dim": 16, "num_heads": 2}, snapshot_epochs=[2], progress=False, device="cpu", num_threads=1,
)
# the files whose bytes do not depend on timing (the logs and train_state.json hold wall times)
DETERMINISTIC = ("denoiser.safetensors", "denoiser.json", "train_state.safetensors", "vae.safetensors",
                 "denoiser_epoch002.safetensors", "denoiser_epoch002.json")

# the child: train with write_point replaced by a counter that kills the process at point KILL_AT
CHILD = r"""
import json, os, signal, sys
import diffusion_lib.atomic as atomic
from diffusion_lib.train import TrainConfig, train

settings, kill_at, log = json.loads(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
count = 0

def write_point(label):
    global count
    count += 1
    with open(log, "a") as f:
        f.write(f"{count} {label}\n")
    if count == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)

atomic.write_point = write_point
settings["snapshot_epochs"] = tuple(settings["snapshot_epochs"])
train(TrainConfig(**settings))
"""


def config(out: Path, vae_dir: Path, **overrides) -> dict:
    return {**TINY, "out_dir": str(out), "vae_dir": str(vae_dir), **overrides}


def run_child(settings: dict, kill_at: int, log: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", CHILD, json.dumps(settings), str(kill_at), str(log)],
                          capture_output=True, text=True, timeout=300)


def snapshot(directory: Path) -> dict[str, bytes]:
    return {name: (directory / name).read_bytes() for name in DETERMINISTIC if (directory / name).exists()}


def to_config(settings: dict) -> TrainConfig:
    return TrainConfig(**{**settings, "snapshot_epochs": tuple(settings["snapshot_epochs"])})


@pytest.fixture(scope="module")
def references(vae_dir, tmp_path_factory):
    """The uninterrupted run after 1 and after 2 epochs, and the write points of epoch 2's save."""
    root = tmp_path_factory.mktemp("crash")
    one, two = root / "one", root / "two"
    train(to_config(config(one, vae_dir, epochs=1)))
    log = root / "points.log"
    proc = run_child(config(two, vae_dir), kill_at=0, log=log)
    assert proc.returncode == 0, proc.stderr
    points = [line.split(" ", 1)[1] for line in log.read_text().splitlines()]
    # the vae copy, epoch 1 and epoch 2: each save ends with "sums"
    ends = [i for i, label in enumerate(points) if label == "sums"]
    assert len(ends) == 3, points
    epoch2 = list(range(ends[1] + 2, ends[2] + 2))  # 1-based point numbers of epoch 2's save
    return snapshot(one), snapshot(two), epoch2, points


def test_every_write_point_of_a_save(references, vae_dir, tmp_path):
    after_one, after_two, epoch2, points = references
    # staged x7 (snapshot, denoiser, train_state: 2 files each, and the log), the journal, placed x7, the sums
    assert len(epoch2) == 17, [points[i - 1] for i in epoch2]
    for kill_at in epoch2:
        label = points[kill_at - 1]
        run = tmp_path / f"kill{kill_at}"
        settings = config(run, vae_dir)
        proc = run_child(settings, kill_at, tmp_path / f"kill{kill_at}.log")
        assert proc.returncode == -9, f"the child was not killed at point {kill_at} ({label}): {proc.stderr[-500:]}"

        # it loads (finishing or undoing the interrupted save) ...
        pipe = Pipeline.from_pretrained(run, "cpu")
        assert pipe("bag", num_images=1, num_inference_steps=2, seed=0, progress=False).images.shape == (1, 28, 28)
        leftovers = [p.name for p in run.iterdir() if p.name.endswith(STAGED_SUFFIX) or p.name in (JOURNAL, LOCK)]
        assert not leftovers, f"kill at {label}: {leftovers} left behind"
        for name, digest in read_checksums(run).items():
            assert sha256_file(run / name) == digest, f"kill at {label}: {name} does not match SHA256SUMS"
        # ... holding one epoch's files whole: the first before the journal, the second from it on
        decided = not (label.startswith("staged") or label == "journal written")
        expected = after_two if decided else after_one
        assert snapshot(run) == expected, f"kill at {label}: a mix of epochs, or the wrong one"

        # ... and resumes to the uninterrupted run, byte for byte
        train(to_config({**settings, "resume": True}))
        assert snapshot(run) == after_two, f"kill at {label}: the resumed run differs from the uninterrupted one"
        shutil.rmtree(run)


def test_a_failed_write_keeps_the_last_epoch(vae_dir, tmp_path, monkeypatch):
    """A full disk (EFBIG here) while saving epoch 2: a clear error, and epoch 1 stays whole and loadable."""
    import errno

    import diffusion_lib.atomic as atomic
    from diffusion_lib.train import TrainingError

    run = tmp_path / "run"
    train(to_config(config(run, vae_dir, epochs=1)))
    epoch1 = snapshot(run)
    real = atomic._write_synced

    def fail_on_state(path, data):
        if "train_state.safetensors" in path.name:
            raise OSError(errno.EFBIG, "File too large")
        real(path, data)

    monkeypatch.setattr(atomic, "_write_synced", fail_on_state)
    with pytest.raises(TrainingError, match=r"could not write the checkpoint of epoch 2 .*File too large.*the "
                                            r"checkpoint of epoch 1 was kept.*--resume"):
        train(to_config(config(run, vae_dir, resume=True)))
    assert snapshot(run) == epoch1
    assert not [p for p in run.iterdir() if p.name.endswith(STAGED_SUFFIX) or p.name in (JOURNAL, LOCK)]
    Pipeline.from_pretrained(run, "cpu")
