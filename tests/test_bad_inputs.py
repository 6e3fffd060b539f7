"""Every bad input gets one clear error, and nothing on disk changes.

A table of bad inputs, most of them through the command line (a real subprocess per row,
as a user types them), the rest through the Python API. For each command-line row:

* the exit code is the one expected (1 for a refused input, 2 for argparse's own);
* the first line of stderr names the option, variable or file at fault (and the fix);
* no ``Traceback`` is printed;
* every file of the folders the row points at is byte-identical afterwards, and no new
  file appeared there.

The rows run two at a time (this machine has two cores) in a module fixture; each row is
then its own test.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from diffusion_lib.atomic import update_checksums
from diffusion_lib.pipeline import Pipeline
from diffusion_lib.samplers import SamplingError, sample
from diffusion_lib.schedules import NoiseSchedule

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINTS = ROOT / "checkpoints"
SAMPLE = ["-m", "diffusion_lib", "sample", "--no-progress", "--num-images", "1", "--steps", "2"]
TRAIN = ["-m", "diffusion_lib", "train", "--no-progress", "--num-threads", "1", "--limit", "64", "--batch-size", "64"]
GRADE = ["-m", "coursekit", "grade", "{subs}", "--out", "{tmp}/graded", "--no-pdf"]

# (id, arguments after python, extra environment, exit code, pattern of stderr's first line, watched folders)
# "{ck}" is a copy of the shipped checkpoints; "{bad_X}" a copy broken as the fixture says; "{tmp}" a scratch folder
CLI_ROWS = [
    # prompts and sampling numbers
    ("unknown-prompt", [*SAMPLE, "--checkpoint", "{ck}", "--prompt", "a giraffe", "--out", "{tmp}/a.npz"], {}, 1,
     r"prompt 'a giraffe' names no class.*ankle boot", ["{ck}"]),
    ("prompt-too-long", [*SAMPLE, "--checkpoint", "{ck}", "--prompt", "a very nice photo of a bag on a table",
                         "--out", "{tmp}/a.npz"], {}, 1, r"has 10 words.*Shorten", ["{ck}"]),
    ("steps-0", [*SAMPLE[:-1], "0", "--prompt", "bag", "--out", "{tmp}/a.npz"], {}, 1, r"--steps must be an integer >= 1", []),
    ("steps-negative", [*SAMPLE[:-1], "-1", "--prompt", "bag", "--out", "{tmp}/a.npz"], {}, 1, r"--steps must be", []),
    ("steps-above-T", [*SAMPLE[:-1], "100000", "--checkpoint", "{ck}", "--prompt", "bag", "--out", "{tmp}/a.npz"], {},
     1, r"num_inference_steps=100000 exceeds the 1000 timesteps.*at most 1000", ["{ck}"]),
    ("steps-text", [*SAMPLE[:-1], "abc", "--prompt", "bag", "--out", "{tmp}/a.npz"], {}, 2, r"usage|--steps", []),
    ("guidance-negative", [*SAMPLE, "--prompt", "bag", "--guidance", "-1", "--out", "{tmp}/a.npz"], {}, 1,
     r"--guidance must be a finite number in \[0, 50\], got -1", []),
    ("guidance-nan", [*SAMPLE, "--prompt", "bag", "--guidance", "nan", "--out", "{tmp}/a.npz"], {}, 1,
     r"--guidance must be a finite number in \[0, 50\], got nan", []),
    ("guidance-inf", [*SAMPLE, "--prompt", "bag", "--guidance", "inf", "--out", "{tmp}/a.npz"], {}, 1,
     r"--guidance must be a finite number", []),
    ("guidance-absurd", [*SAMPLE, "--prompt", "bag", "--guidance", "1e9", "--out", "{tmp}/a.npz"], {}, 1,
     r"--guidance must be a finite number in \[0, 50\]", []),
    ("eta-nan", [*SAMPLE, "--prompt", "bag", "--sampler", "ddim", "--eta", "nan", "--out", "{tmp}/a.npz"], {}, 1,
     r"--eta must be a finite number in \[0, 1\]", []),
    ("eta-above-1", [*SAMPLE, "--prompt", "bag", "--sampler", "ddim", "--eta", "1.5", "--out", "{tmp}/a.npz"], {}, 1,
     r"--eta must be a finite number in \[0, 1\]", []),
    ("eta-with-dpmsolver", [*SAMPLE, "--checkpoint", "{ck}", "--prompt", "bag", "--eta", "0.5", "--out", "{tmp}/a.npz"],
     {}, 1, r"eta=0.5 only applies to the ddim sampler", ["{ck}"]),
    ("num-images-0", [*SAMPLE[:3], "--num-images", "0", "--prompt", "bag", "--out", "{tmp}/a.npz"], {}, 1,
     r"--num-images must be an integer >= 1", []),
    ("num-images-negative", [*SAMPLE[:3], "--num-images", "-5", "--prompt", "bag", "--out", "{tmp}/a.npz"], {}, 1,
     r"--num-images must be an integer >= 1", []),
    ("num-images-ten-million", [*SAMPLE[:3], "--num-images", "10000000", "--checkpoint", "{ck}", "--prompt", "bag",
                                "--out", "{tmp}/a.npz"], {}, 1, r"this job would take .* more than --max-hours 1",
     ["{ck}"]),
    ("png-too-large", [*SAMPLE[:3], "--num-images", "20000", "--checkpoint", "{ck}", "--prompt", "bag", "--out",
                       "{tmp}/a.png", "--max-hours", "100"], {}, 1, r"PNG grid of 20,000 images is too large.*\.npz",
     ["{ck}"]),
    ("max-hours-0", [*SAMPLE, "--prompt", "bag", "--max-hours", "0", "--out", "{tmp}/a.npz"], {}, 1,
     r"--max-hours must be a finite number > 0", []),
    ("max-hours-nan", [*SAMPLE, "--prompt", "bag", "--max-hours", "nan", "--out", "{tmp}/a.npz"], {}, 1,
     r"--max-hours must be a finite number > 0, got nan", []),
    ("seed-negative", [*SAMPLE, "--prompt", "bag", "--seed", "-1", "--out", "{tmp}/a.npz"], {}, 1,
     r"--seed must be an integer in \[0, 18446744073709551615\]", []),
    ("seed-too-large", [*SAMPLE, "--prompt", "bag", "--seed", "99999999999999999999999", "--out", "{tmp}/a.npz"], {}, 1,
     r"--seed must be an integer in \[0, 18446744073709551615\]", []),
    ("batch-size-0", [*SAMPLE, "--prompt", "bag", "--batch-size", "0", "--out", "{tmp}/a.npz"], {}, 1,
     r"--batch-size must be an integer >= 1", []),
    ("batch-size-negative", [*SAMPLE, "--prompt", "bag", "--batch-size", "-1", "--out", "{tmp}/a.npz"], {}, 1,
     r"--batch-size must be an integer >= 1", []),
    ("unknown-sampler", [*SAMPLE, "--checkpoint", "{ck}", "--prompt", "bag", "--sampler", "euler", "--out",
                         "{tmp}/a.npz"], {}, 1, r"unknown sampler 'euler'; valid samplers: ddpm, ddim, dpmsolver\+\+",
     ["{ck}"]),
    ("unknown-spacing", [*SAMPLE, "--checkpoint", "{ck}", "--prompt", "bag", "--spacing", "weird", "--out",
                         "{tmp}/a.npz"], {}, 1, r"unknown timestep spacing 'weird'; valid: leading, trailing", ["{ck}"]),
    ("unknown-device", [*SAMPLE, "--checkpoint", "{ck}", "--prompt", "bag", "--device", "banana", "--out",
                        "{tmp}/a.npz"], {}, 1, r"unknown device 'banana'; valid", ["{ck}"]),
    # output paths, checked before any work
    ("out-unwritable", [*SAMPLE, "--prompt", "bag", "--out", "/proc/x.png"], {}, 1, r"--out /proc/x.png cannot be",
     []),
    ("out-uncreatable-folder", [*SAMPLE, "--prompt", "bag", "--out", "{tmp}/afile/sub/x.npz"], {}, 1,
     r"--out .*afile/sub/x.npz cannot be created: .*afile is a file", ["{tmp}"]),
    ("out-is-a-folder", [*SAMPLE, "--prompt", "bag", "--out", "{tmp}/adir.npz"], {}, 1,
     r"--out .*adir.npz is a folder; give a file name", ["{tmp}"]),
    ("out-exists", [*SAMPLE, "--prompt", "bag", "--out", "{tmp}/kept.npz"], {}, 1,
     r"--out .*kept.npz already exists; pass --overwrite", ["{tmp}"]),
    ("out-bad-extension", [*SAMPLE, "--prompt", "bag", "--out", "{tmp}/a.jpg"], {}, 1,
     r"--out must end in .png \(a grid\) or .npz", []),
    ("evaluate-json-exists", ["-m", "diffusion_lib", "evaluate", "--num-images", "10", "--json", "{tmp}/kept.json"],
     {}, 1, r"--json .*kept.json already exists; pass --overwrite", ["{tmp}"]),
    ("evaluate-num-images-0", ["-m", "diffusion_lib", "evaluate", "--num-images", "0"], {}, 1,
     r"--num-images must be an integer >= 1", []),
    # checkpoint folders: missing, corrupt, mismatched
    ("checkpoint-missing", [*SAMPLE, "--checkpoint", "{tmp}/nope", "--prompt", "bag", "--out", "{tmp}/a.npz"], {}, 1,
     r"nope/vae.safetensors is missing\. Restore it", []),
    ("denoiser-rung-missing", [*SAMPLE, "--checkpoint", "{ck}", "--denoiser", "denoiser_epoch999", "--prompt", "bag",
                               "--out", "{tmp}/a.npz"], {}, 1, r"denoiser_epoch999.safetensors is missing", ["{ck}"]),
    ("truncated-weights", [*SAMPLE, "--checkpoint", "{bad_trunc}", "--prompt", "bag", "--out", "{tmp}/a.npz"], {}, 1,
     r"denoiser.safetensors does not match its SHA-256.*truncated, corrupt", ["{bad_trunc}"]),
    ("truncated-weights-reblessed", [*SAMPLE, "--checkpoint", "{bad_trunc_sums}", "--prompt", "bag", "--out",
                                     "{tmp}/a.npz"], {}, 1, r"denoiser.safetensors cannot be read as safetensors",
     ["{bad_trunc_sums}"]),
    ("tampered-byte", [*SAMPLE, "--checkpoint", "{bad_tamper}", "--prompt", "bag", "--out", "{tmp}/a.npz"], {}, 1,
     r"denoiser.safetensors does not match its SHA-256", ["{bad_tamper}"]),
    ("config-wrong-shape", [*SAMPLE, "--checkpoint", "{bad_shape}", "--prompt", "bag", "--out", "{tmp}/a.npz"], {}, 1,
     r"denoiser.safetensors does not fit the Denoiser built from its config", ["{bad_shape}"]),
    ("config-garbage", [*SAMPLE, "--checkpoint", "{bad_garbage}", "--prompt", "bag", "--out", "{tmp}/a.npz"], {}, 1,
     r"denoiser.json is not valid JSON", ["{bad_garbage}"]),
    ("config-a-list", [*SAMPLE, "--checkpoint", "{bad_jsonlist}", "--prompt", "bag", "--out", "{tmp}/a.npz"], {}, 1,
     r"denoiser.json holds a JSON list", ["{bad_jsonlist}"]),
    ("config-wrong-type", [*SAMPLE, "--checkpoint", "{bad_jsontype}", "--prompt", "bag", "--out", "{tmp}/a.npz"], {},
     1, r"denoiser.json is not a valid denoiser config \(UNetConfig.base_channels must be an integer, got '32'\)",
     ["{bad_jsontype}"]),
    ("vae-config-wrong-type", [*SAMPLE, "--checkpoint", "{bad_vaejson}", "--prompt", "bag", "--out", "{tmp}/a.npz"],
     {}, 1, r"vae.json is not a valid autoencoder config \(AutoencoderConfig.latent_channels must be an integer",
     ["{bad_vaejson}"]),
    ("sums-missing", [*SAMPLE, "--checkpoint", "{bad_nosums}", "--prompt", "bag", "--out", "{tmp}/a.npz"], {}, 1,
     r"vae.safetensors has no .*SHA256SUMS beside it.*checksums", ["{bad_nosums}"]),
    ("sums-merge-conflict", [*SAMPLE, "--checkpoint", "{bad_sumsconflict}", "--prompt", "bag", "--out",
                             "{tmp}/a.npz"], {}, 1, r"SHA256SUMS line 1 is not '<sha256>  <file>'.*checksums",
     ["{bad_sumsconflict}"]),
    ("denoiser-beside-another-vae", [*SAMPLE, "--checkpoint", "{bad_othervae}", "--prompt", "bag", "--out",
                                     "{tmp}/a.npz"], {}, 1,
     r"denoiser.json was trained on the autoencoder with SHA-256 .* but .*vae.safetensors beside it is another",
     ["{bad_othervae}"]),
    ("checksums-missing-folder", ["-m", "diffusion_lib", "checksums", "{tmp}/nope"], {}, 1,
     r"nope is not a folder", []),
    # training: nothing is replaced that was not asked to be
    ("train-vae-over-a-checkpoint", ["-m", "diffusion_lib", "train-vae", "--out", "{ck}", "--epochs", "1", "--limit",
                                     "64", "--no-progress"], {}, 1,
     r"already holds a trained autoencoder \(vae.safetensors, vae.json\).*--overwrite", ["{ck}"]),
    ("train-classifier-over-a-checkpoint", ["-m", "diffusion_lib", "train-classifier", "--out", "{ck}", "--epochs", "1",
                                            "--limit", "64", "--no-progress"], {}, 1,
     r"already holds a trained classifier.*--overwrite", ["{ck}"]),
    ("train-classifier-out-a-file", ["-m", "diffusion_lib", "train-classifier", "--out", "{tmp}/afile", "--epochs", "1",
                                     "--limit", "64", "--no-progress"], {}, 1, r"--out .*afile is a file, not a folder",
     ["{tmp}"]),
    ("train-over-a-run", [*TRAIN, "--out", "{ck}", "--epochs", "1"], {}, 1,
     r"already holds a trained denoiser.*--resume.*--overwrite", ["{ck}"]),
    ("train-out-a-file", [*TRAIN, "--out", "{tmp}/afile", "--epochs", "1"], {}, 1,
     r"--out .*afile is a file, not a folder", ["{tmp}"]),
    ("train-resume-nothing", [*TRAIN, "--out", "{tmp}/none", "--epochs", "1", "--resume"], {}, 1,
     r"nothing to resume: .*train_state.safetensors does not exist", ["{tmp}"]),
    ("train-epochs-0", [*TRAIN, "--out", "{tmp}/e0", "--epochs", "0"], {}, 1, r"epochs must be an integer >= 1", []),
    ("train-batch-size-0", [*TRAIN[:-1], "0", "--out", "{tmp}/b0", "--epochs", "1"], {}, 1,
     r"batch_size must be an integer >= 1", []),
    ("train-limit-0", [*TRAIN, "--limit", "0", "--out", "{tmp}/l0", "--epochs", "1"], {}, 1,
     r"limit must be >= 1", []),
    ("train-lr-nan", [*TRAIN, "--lr", "nan", "--out", "{tmp}/lr", "--epochs", "1"], {}, 1,
     r"lr must be a finite number > 0, got nan", []),
    ("train-seed-negative", [*TRAIN, "--seed", "-3", "--out", "{tmp}/sd", "--epochs", "1"], {}, 1,
     r"seed must be an integer in \[0, ", []),
    ("train-ema-decay-1", [*TRAIN, "--ema-decay", "1", "--out", "{tmp}/ema", "--epochs", "1"], {}, 1,
     r"ema_decay must lie in \[0, 1\)", []),
    ("train-keyless-state", [*TRAIN, "--out", "{bad_keyless}", "--epochs", "3", "--resume"], {}, 1,
     r"train_state.json lacks step, denoiser_config.*which resuming needs", ["{bad_keyless}"]),
    ("train-vae-epochs-0", ["-m", "diffusion_lib", "train-vae", "--out", "{tmp}/v0", "--epochs", "0", "--no-progress"],
     {}, 1, r"epochs must be >= 1", []),
    # data: DIFFUSION_DATA, when set, is the only place looked in
    ("data-variable-empty", ["-m", "diffusion_lib", "train-vae", "--out", "{tmp}/d1", "--epochs", "1", "--limit", "64",
                             "--no-progress"], {"DIFFUSION_DATA": ""}, 1, r"DIFFUSION_DATA is set but empty", []),
    ("data-variable-missing", ["-m", "diffusion_lib", "train-vae", "--out", "{tmp}/d2", "--epochs", "1", "--limit",
                               "64", "--no-progress"], {"DIFFUSION_DATA": "{tmp}/no-data"}, 1,
     r"DIFFUSION_DATA=.*no-data does not exist", []),
    ("data-variable-empty-folder", ["-m", "diffusion_lib", "train-vae", "--out", "{tmp}/d3", "--epochs", "1", "--limit",
                                    "64", "--no-progress"], {"DIFFUSION_DATA": "{data_empty}"}, 1,
     r"DIFFUSION_DATA=.*holds no fashion-mnist IDX files", ["{data_empty}"]),
    ("data-truncated-gz", ["-m", "diffusion_lib", "train-vae", "--out", "{tmp}/d4", "--epochs", "1", "--limit", "64",
                           "--no-progress"], {"DIFFUSION_DATA": "{data_truncgz}"}, 1,
     r"train-images-idx3-ubyte.gz cannot be read .*truncated or corrupt.*DIFFUSION_DATA", ["{data_truncgz}"]),
    # the instructor's commands
    ("release-over-the-notebooks", ["-m", "coursekit", "release", "--out", "{repo}", "--notebooks", "{repo}/notebooks",
                                    "--overwrite"], {}, 1,
     r"is or holds the course notebooks \(--notebooks\).*nothing was deleted", ["{repo}"]),
    ("release-over-a-foreign-folder", ["-m", "coursekit", "release", "--out", "{foreign}", "--overwrite"], {}, 1,
     r"is not a student edition written by release.*nothing was deleted", ["{foreign}"]),
    ("release-out-a-file", ["-m", "coursekit", "release", "--out", "{tmp}/afile"], {}, 1,
     r"--out .*afile is a file, not a folder", ["{tmp}"]),
    ("export-corrupt-notebook", ["-m", "coursekit", "export", "--notebooks", "{corrupt_nb}", "--out", "{tmp}/k.pdf"],
     {}, 1, r"01_forward_diffusion.ipynb is not a readable notebook", ["{corrupt_nb}"]),
    ("grade-jobs-0", [*GRADE, "--jobs", "0"], {}, 1, r"--jobs must be an integer >= 1, got 0", ["{subs}"]),
    ("grade-timeout-0", [*GRADE, "--timeout", "0"], {}, 1, r"--timeout must be a finite number > 0, got 0", ["{subs}"]),
    ("grade-memory-0", [*GRADE, "--memory-gb", "0"], {}, 1, r"--memory-gb must be a finite number > 0", ["{subs}"]),
    ("grade-memory-negative", [*GRADE, "--memory-gb", "-1"], {}, 1, r"--memory-gb must be a finite number > 0",
     ["{subs}"]),
    ("grade-disk-0", [*GRADE, "--disk-gb", "0"], {}, 1, r"--disk-gb must be a finite number > 0", ["{subs}"]),
    ("grade-processes-0", [*GRADE, "--max-processes", "0"], {}, 1, r"--max-processes must be a finite number > 0",
     ["{subs}"]),
]


def tree_state(folder: Path) -> dict[str, str]:
    """``{relative path: sha256}`` of every file below ``folder`` (folders as ``/``)."""
    if not folder.exists():
        return {}
    if folder.is_file():
        return {"": hashlib.sha256(folder.read_bytes()).hexdigest()}
    state = {}
    for path in sorted(folder.rglob("*")):
        rel = str(path.relative_to(folder))
        state[rel] = "/" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return state


def _broken_copies(root: Path) -> dict[str, Path]:
    """Copies of the shipped checkpoints, each broken in one way (re-blessed where said, so that the
    check under test is reached rather than the checksum)."""
    def copy(name: str) -> Path:
        d = root / name
        d.mkdir()
        for f in ("vae.json", "vae.safetensors", "denoiser.json", "denoiser.safetensors", "SHA256SUMS",
                  "classifier.json", "classifier.safetensors"):
            shutil.copyfile(CHECKPOINTS / f, d / f)
        return d

    def edit_json(d: Path, name: str, change) -> None:
        config = json.loads((d / name).read_text())
        change(config)
        (d / name).write_text(json.dumps(config))
        update_checksums(d, [name])

    out = {"ck": copy("ck")}
    d = out["bad_trunc"] = copy("trunc")
    (d / "denoiser.safetensors").write_bytes((d / "denoiser.safetensors").read_bytes()[:3_000_000])
    d = out["bad_trunc_sums"] = copy("trunc_sums")
    (d / "denoiser.safetensors").write_bytes((d / "denoiser.safetensors").read_bytes()[:3_000_000])
    update_checksums(d, ["denoiser.safetensors"])
    d = out["bad_tamper"] = copy("tamper")
    data = bytearray((d / "denoiser.safetensors").read_bytes())
    data[5_000_000] ^= 0x42
    (d / "denoiser.safetensors").write_bytes(bytes(data))
    d = out["bad_shape"] = copy("shape")
    edit_json(d, "denoiser.json", lambda c: c["unet"].update(base_channels=48))
    d = out["bad_garbage"] = copy("garbage")
    (d / "denoiser.json").write_text('{"unet": {"base_channels": 32,,, garbage')
    update_checksums(d, ["denoiser.json"])
    d = out["bad_jsonlist"] = copy("jsonlist")
    (d / "denoiser.json").write_text("[1, 2, 3]")
    update_checksums(d, ["denoiser.json"])
    d = out["bad_jsontype"] = copy("jsontype")
    edit_json(d, "denoiser.json", lambda c: c["unet"].update(base_channels="32"))
    d = out["bad_vaejson"] = copy("vaejson")
    edit_json(d, "vae.json", lambda c: c.update(latent_channels="four"))
    d = out["bad_nosums"] = copy("nosums")
    (d / "SHA256SUMS").unlink()
    d = out["bad_sumsconflict"] = copy("sumsconflict")
    sums = (d / "SHA256SUMS").read_text()
    (d / "SHA256SUMS").write_text(f"<<<<<<< HEAD\n{sums}=======\n{sums}>>>>>>> other\n")
    d = out["bad_othervae"] = copy("othervae")
    edit_json(d, "vae.json", lambda c: c.update(scale_factor=c["scale_factor"] * 1.01))
    data = bytearray((d / "vae.safetensors").read_bytes())
    data[-1] ^= 0x01  # the last byte of the last tensor: another autoencoder, still a valid file
    (d / "vae.safetensors").write_bytes(bytes(data))
    update_checksums(d, ["vae.safetensors"])
    d = out["bad_keyless"] = copy("keyless")
    (d / "train_state.json").write_text(json.dumps({"format": 1, "epoch": 2}))
    shutil.copyfile(d / "denoiser.safetensors", d / "train_state.safetensors")
    update_checksums(d, ["train_state.json", "train_state.safetensors"])
    return out


@pytest.fixture(scope="module")
def places(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad_inputs")
    places = _broken_copies(root)
    tmp = places["tmp"] = root / "tmp"
    tmp.mkdir()
    (tmp / "afile").write_text("a file the user owns\n")
    (tmp / "adir.npz").mkdir()
    (tmp / "kept.npz").write_bytes(b"the user's earlier samples")
    (tmp / "kept.json").write_text('{"the user": "measurements"}\n')
    places["data_empty"] = root / "data_empty"
    places["data_empty"].mkdir()
    truncgz = places["data_truncgz"] = root / "data_truncgz"
    truncgz.mkdir()
    raw = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz").read_bytes()
    (truncgz / "train-images-idx3-ubyte.gz").write_bytes(raw[:1_000_000])
    shutil.copyfile("/usr/share/datasets/fashion-mnist/train-labels-idx1-ubyte.gz",
                    truncgz / "train-labels-idx1-ubyte.gz")
    repo = places["repo"] = root / "repo"
    shutil.copytree(ROOT / "notebooks", repo / "notebooks", ignore=shutil.ignore_patterns("*.png", "results_*", "runs"))
    (repo / "my_notes.txt").write_text("an instructor's notes\n")
    foreign = places["foreign"] = root / "foreign"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("months of work\n")
    corrupt = places["corrupt_nb"] = root / "corrupt_nb"
    corrupt.mkdir()
    (corrupt / "01_forward_diffusion.ipynb").write_text('{"cells": [')
    subs = places["subs"] = root / "subs"
    (subs / "alice").mkdir(parents=True)
    shutil.copyfile(ROOT / "notebooks" / "01_forward_diffusion.ipynb", subs / "alice" / "01_forward_diffusion.ipynb")
    return places


def _fill(text: str, places: dict[str, Path]) -> str:
    return text.format(**{k: str(v) for k, v in places.items()})


@pytest.fixture(scope="module")
def outcomes(places) -> dict[str, tuple[subprocess.CompletedProcess, dict, dict]]:
    """Every command-line row, run two at a time: ``{id: (completed, watched before, watched after)}``."""
    env = {k: v for k, v in os.environ.items() if k != "DIFFUSION_DATA"}

    def run(row):
        name, args, extra, _, _, watched = row
        folders = [Path(_fill(w, places)) for w in watched]
        before = {str(f): tree_state(f) for f in folders}
        proc = subprocess.run([sys.executable, *[_fill(a, places) for a in args]], capture_output=True, text=True,
                              cwd=ROOT, env={**env, **{k: _fill(v, places) for k, v in extra.items()},
                                             "OMP_NUM_THREADS": "1"}, timeout=300, stdin=subprocess.DEVNULL)
        after = {str(f): tree_state(f) for f in folders}
        return name, (proc, before, after)

    # rows that share a watched folder with another row could see each other's scratch files: none
    # of them writes (each is refused), which is exactly what is asserted
    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(pool.map(run, CLI_ROWS))


def test_the_table_is_large_enough():
    assert len(CLI_ROWS) + len(API_ROWS) >= 60
    assert len({row[0] for row in CLI_ROWS}) == len(CLI_ROWS)


@pytest.mark.parametrize("row", CLI_ROWS, ids=[row[0] for row in CLI_ROWS])
def test_command_line(row, outcomes):
    name, _, _, code, pattern, _ = row
    proc, before, after = outcomes[name]
    lines = [line for line in proc.stderr.splitlines() if line.strip() and not line.startswith("note:")]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.returncode == code, f"exit {proc.returncode}\n{proc.stderr[-2000:]}"
    assert lines, "no message at all"
    assert re.search(pattern, lines[0] if code != 2 else proc.stderr), lines[0]
    assert after == before, "files changed on disk"


# ------------------------------------------------------------------------------------ the Python API
@pytest.fixture(scope="module")
def pipe():
    return Pipeline.from_pretrained(CHECKPOINTS, "cpu")


KW = dict(num_images=1, num_inference_steps=2, seed=0, progress=False)
NAN, INF = float("nan"), float("inf")
# (id, call arguments as (positional prompt, keyword overrides), exception, pattern)
API_ROWS = [
    ("prompt-none", (None, {}), TypeError, r"prompt must be a string or a list of strings, got None"),
    ("prompt-int", (123, {}), TypeError, r"prompt must be a string or a list of strings"),
    ("prompt-mixed-list", (["bag", 3], {}), TypeError, r"prompt must be a string or a list of strings"),
    ("prompt-list-with-none", (["bag", None], {}), TypeError, r"prompt must be a string or a list of strings"),
    ("prompt-bytes", (b"bag", {}), TypeError, r"prompt must be a string or a list of strings"),
    ("prompt-empty-list", ([], {}), ValueError, r"no prompt given"),
    ("num-images-float", ("bag", {"num_images": 2.5}), TypeError, r"num_images must be an integer >= 1, got 2.5"),
    ("num-images-text", ("bag", {"num_images": "2"}), TypeError, r"num_images must be an integer >= 1"),
    ("num-images-0", ("bag", {"num_images": 0}), ValueError, r"num_images must be an integer >= 1, got 0"),
    ("guidance-text", ("bag", {"guidance_scale": "3"}), TypeError, r"guidance_scale must be a number in \[0, 50\]"),
    ("guidance-none", ("bag", {"guidance_scale": None}), TypeError, r"guidance_scale must be a number"),
    ("guidance-nan", ("bag", {"guidance_scale": NAN}), ValueError, r"guidance_scale must be a finite number"),
    ("guidance-inf", ("bag", {"guidance_scale": INF}), ValueError, r"guidance_scale must be a finite number"),
    ("eta-nan", ("bag", {"sampler": "ddim", "eta": NAN}), ValueError, r"eta must be a finite number in \[0, 1\]"),
    ("eta-text", ("bag", {"sampler": "ddim", "eta": "0.5"}), TypeError, r"eta must be a number in \[0, 1\]"),
    ("steps-float", ("bag", {"num_inference_steps": 2.5}), ValueError, r"num_inference_steps must be a positive"),
    ("steps-bool", ("bag", {"num_inference_steps": True}), ValueError, r"num_inference_steps must be a positive"),
    ("seed-text", ("bag", {"seed": "abc"}), TypeError, r"seed must be an integer in \[0, "),
    ("seed-negative", ("bag", {"seed": -1}), ValueError, r"seed must be an integer in \[0, "),
    ("sampler-none", ("bag", {"sampler": None}), TypeError, r"sampler must be a string, one of ddpm, ddim"),
    ("batch-size-0", ("bag", {"batch_size": 0}), ValueError, r"batch_size must be an integer >= 1"),
    ("generator-wrong-type", ("bag", {"generator": 42}), TypeError, r"generator must be a torch.Generator"),
]


@pytest.mark.parametrize("row", API_ROWS, ids=[row[0] for row in API_ROWS])
def test_python_api(row, pipe):
    _, (prompt, overrides), error, pattern = row
    with pytest.raises(error, match=pattern):
        pipe(prompt, **{**KW, **overrides})


def test_a_prompt_without_words_is_unconditional(pipe):
    out = pipe("!!!", **KW)
    assert out.labels.tolist() == [-1]


@pytest.mark.parametrize("output, pattern", [
    (lambda x, t: torch.full_like(x, NAN), r"NaN or infinite values at step 1 of 3"),
    (lambda x, t: torch.full_like(x, INF), r"NaN or infinite values at step 1 of 3"),
    (lambda x, t: torch.zeros(2, 3, 8, 8), r"returned shape \(2, 3, 8, 8\) at step 1 of 3.*x_t has shape \(2, 4, 8, 8\)"),
    (lambda x, t: torch.zeros(1, 4, 8, 8), r"returned shape \(1, 4, 8, 8\)"),
    (lambda x, t: None, r"returned NoneType at step 1 of 3"),
], ids=["nan", "inf", "channels", "batch", "none"])
@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpmsolver++"])
def test_a_sampler_stops_at_a_bad_model_output(output, pattern, sampler):
    with pytest.raises(SamplingError, match=pattern):
        sample(output, (2, 4, 8, 8), NoiseSchedule(), sampler=sampler, num_inference_steps=3, progress=False)


@pytest.mark.parametrize("kwargs, pattern", [
    (dict(name="linear", beta_start=1e-4, beta_end=1.5), r"beta_end must be a finite number in \[0, 1\], got 1.5"),
    (dict(name="linear", beta_start=-0.1), r"beta_start must be a finite number in \[0, 1\]"),
    (dict(name="linear", beta_start=0.02, beta_end=0.01), r"0 < beta_start <= beta_end < 1"),
    (dict(name="linear", beta_end=math.nan), r"beta_end must be a finite number"),
    (dict(num_train_timesteps=1), r"num_train_timesteps must be an integer >= 2"),
], ids=["beta-above-1", "beta-negative", "betas-reversed", "beta-nan", "one-timestep"])
def test_schedule_numbers(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        NoiseSchedule(**kwargs)


def test_misspelt_papermill_parameter_is_caught(tmp_path):
    """``-p qiuck True`` would otherwise be ignored, and the slow full mode would run."""
    proc = subprocess.run(
        [sys.executable, "-m", "papermill", str(ROOT / "notebooks" / "01_forward_diffusion.ipynb"),
         str(tmp_path / "out.ipynb"), "-p", "qiuck", "True", "--cwd", str(tmp_path), "-k", "python3",
         "--no-progress-bar"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert "ParameterError: unknown notebook parameter qiuck (given with papermill -p); this notebook's " \
           "parameters are: " in proc.stderr
    assert not (tmp_path / "results_01.json").exists(), "the notebook ran on"
