"""Batch grading with deliberately bad submissions: each must be reported, none may stop or spoil the batch.

The reference course here is one tiny notebook (no torch: the memory limit can then be small)
with two questions; the students are

* ``good``       answers Q9.1, leaves Q9.2 unanswered, writes its numbers;
* ``raises``     a cell raises;
* ``hangs``      a cell sleeps for an hour;
* ``hog``        a cell allocates memory until it fails;
* ``escape``     tries to read the reference answers and to write outside its folder
                 (the kit, another student's submission, the grading output);
* ``renamed``    renamed question Q9.1 and deleted question Q9.2 with its answer cell;
* ``absent``     submitted no notebook;
* ``garbled``    submitted a file that is not a notebook.

A second test grades the real notebook 01 (student edition with one answer) and exports its PDF.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import nbformat
import pytest

from coursekit import grade as G
from coursekit import questions as Q
from coursekit import release, sandbox

ROOT = Path(__file__).resolve().parents[1]
SECRET = "the reference answer to nine point one is forty-two"
NAME = "09_tiny.ipynb"

pytestmark = [pytest.mark.slow, pytest.mark.notebook]


def tiny_notebook(body: str = "", answer1: str = f"# {SECRET}", answer2: str = "# a second reference answer here",
                  rename: bool = False, drop_q2: bool = False):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = nbformat.v4.new_code_cell('quick: bool = False\ndevice: str = "auto"\nseed: int = 0\nresults_dir: str = "."')
    params.metadata["tags"] = ["parameters"]
    label1 = "**Question one**" if rename else "**Q9.1**"
    cells = [nbformat.v4.new_markdown_cell("# 09 - a tiny notebook"), params,
             nbformat.v4.new_code_cell(body or "x = 1"),
             nbformat.v4.new_code_cell(
                 "import json\nvalues = {'quick': quick, 'device': device, 'answer': 42.0}\n"
                 "json.dump({'notebook': '09', 'values': {**values, **globals().get('extra', {})}}, "
                 "open(f'{results_dir}/results_09.json', 'w'))"),
             nbformat.v4.new_markdown_cell(f"{Q.BEGIN_QUESTION}\n{label1} Why?\n{Q.END_QUESTION}")]
    a1 = nbformat.v4.new_code_cell(f"{Q.BEGIN_SOLUTION}\n{answer1}\n{Q.END_SOLUTION}")
    a1.metadata.update(Q.answer_metadata("q9_1"))
    cells.append(a1)
    if not drop_q2:
        cells.append(nbformat.v4.new_markdown_cell(f"{Q.BEGIN_QUESTION}\n**Q9.2** Why not?\n{Q.END_QUESTION}"))
        a2 = nbformat.v4.new_code_cell(f"{Q.BEGIN_SOLUTION}\n{answer2}\n{Q.END_SOLUTION}")
        a2.metadata.update(Q.answer_metadata("q9_2"))
        cells.append(a2)
    nb.cells = cells
    return nb


ESCAPE = r'''
import os, pathlib
extra = {}
def attempt(name, fn):
    try:
        fn()
        extra[name] = True
    except Exception as err:
        extra[name] = False
targets = {TARGETS}
for key, path in targets["read"].items():
    attempt("read_" + key, lambda p=path: SECRET_CHECK(pathlib.Path(p).read_text()))
for key, path in targets["write"].items():
    attempt("wrote_" + key, lambda p=path: pathlib.Path(p).write_text("pwned"))
'''


def secret_check(text):
    if "forty-two" not in text:
        raise ValueError("no secret here")


@pytest.fixture
def course(tmp_path):
    reference = tmp_path / "reference"
    reference.mkdir()
    nbformat.write(tiny_notebook(), reference / NAME)
    subs = tmp_path / "submissions"
    out = tmp_path / "grading"
    return reference, subs, out


def student(subs: Path, name: str, nb=None, raw: str | None = None) -> Path:
    folder = subs / name
    folder.mkdir(parents=True)
    if raw is not None:
        (folder / NAME).write_text(raw)
    elif nb is not None:
        nbformat.write(nb, folder / NAME)
    else:
        (folder / "README.txt").write_text("I forgot my notebook")
    return folder


def test_bad_submissions_are_reported_and_contained(course):
    reference, subs, out = course
    student(subs, "good", tiny_notebook(answer1="# my own answer", answer2=Q.STUDENT_PLACEHOLDER))
    student(subs, "raises", tiny_notebook(body="raise RuntimeError('boom in cell two')"))
    student(subs, "hangs", tiny_notebook(body="import time\ntime.sleep(3600)"))
    student(subs, "hog", tiny_notebook(body="blocks = []\nwhile True:\n    blocks.append(bytearray(2**27))"))
    targets = {
        "read": {"course_notebook": str(ROOT / "notebooks" / "01_forward_diffusion.ipynb"),
                 "reference": str(reference / NAME)},
        "write": {"kit": str(ROOT / "checkpoints" / "pwned.txt"),
                  "other_student": str(subs / "good" / NAME),
                  "grading_output": str(out / "good" / "results_09.json"),
                  "outside_tmp": str(subs.parent / "pwned.txt")},
    }
    code = ESCAPE.replace("{TARGETS}", repr(targets)).replace("SECRET_CHECK", "(lambda t: None if 'forty-two' in t "
                                                                             "or 'BEGIN SOLUTION' in t else 1/0)")
    student(subs, "escape", tiny_notebook(body=code))
    student(subs, "renamed", tiny_notebook(rename=True, drop_q2=True))
    student(subs, "absent")
    student(subs, "garbled", raw="{ this is not json")
    good_nb_before = (subs / "good" / NAME).read_bytes()

    results, box = G.grade(subs, out, reference_dir=reference, jobs=2, timeout_s=20, memory_gb=1.5, pdf=False,
                           progress=False)
    by = {r.student: r for r in results}
    assert set(by) == {"good", "raises", "hangs", "hog", "escape", "renamed", "absent", "garbled"}

    assert by["good"].status == "ok", by["good"]
    assert (by["good"].answered, by["good"].questions) == (1, 2)
    assert by["good"].values["answer"] == 42.0 and by["good"].values["quick"] is True

    assert by["raises"].status == "failed" and by["raises"].error_cell == 2
    assert "boom in cell two" in by["raises"].error

    assert by["hangs"].status == "timeout" and by["hangs"].wall_s < 120

    assert by["hog"].status == "failed" and "MemoryError" in by["hog"].error, by["hog"]

    assert by["renamed"].status == "ok"
    assert by["renamed"].missing_questions == ["Q9.2"] and by["renamed"].altered_questions == ["Q9.1"]
    assert by["absent"].status == "missing" and by["absent"].missing_questions == ["Q9.1", "Q9.2"]
    assert by["garbled"].status == "unreadable"

    # the escape attempts: nothing read, nothing written, nobody else's results changed
    esc = by["escape"]
    assert esc.status == "ok", esc

    # the report: first line says whether a sandbox ran; one CSV row per student and notebook
    assert (out / "report.txt").read_text().splitlines()[0] == box.description
    assert box.description in (out / "summary.html").read_text()
    rows = list(csv.DictReader((out / "grades.csv").open()))
    assert len(rows) == 8 and {r["student"] for r in rows} == set(by)
    assert next(r for r in rows if r["student"] == "raises")["error_cell"] == "2"

    # the escape attempts need the sandbox to fail: without one, say so rather than pass
    if not box.isolated:
        pytest.skip(f"no sandbox here, so the containment of the escape attempts was not checked: {box.description}")
    assert not esc.values["read_course_notebook"] and not esc.values["read_reference"]
    for key in targets["write"]:
        assert esc.values[f"wrote_{key}"] is False, key
    assert not (ROOT / "checkpoints" / "pwned.txt").exists()
    assert not (subs.parent / "pwned.txt").exists()
    assert (subs / "good" / NAME).read_bytes() == good_nb_before
    assert json.loads((out / "good" / "results_09.json").read_text())["values"]["answer"] == 42.0


def test_sandbox_is_available_here():
    """This kit's CI installs bubblewrap; on a machine without it the grader still runs, but says so."""
    box = sandbox.probe()
    assert box.isolated, box.description


def test_real_notebook_is_graded_and_exported(tmp_path):
    subs = tmp_path / "submissions"
    edition = tmp_path / "edition"
    release.write_release(edition)
    folder = subs / "ada"
    folder.mkdir(parents=True)
    nb = nbformat.read(edition / "01_forward_diffusion.ipynb", as_version=4)
    first = Q.find_questions(nb)[0]
    nb.cells[first.answer_index].source = f"{Q.BEGIN_SOLUTION}\n# Ada's answer: variance preserving, beta.\n{Q.END_SOLUTION}"
    # Ada solves exercise 1.1 (the reference solution) and leaves 1.2 as it came
    reference = nbformat.read(ROOT / "notebooks" / "01_forward_diffusion.ipynb", as_version=4)
    for mine, theirs in zip(nb.cells, reference.cells):
        if release.is_exercise_cell(mine) and mine.metadata["nbgrader"]["grade_id"] == "ex1_1":
            mine.source = theirs.source
    nbformat.write(nb, folder / "01_forward_diffusion.ipynb")
    out = tmp_path / "grading"
    results, box = G.grade(subs, out, notebooks=["01_forward_diffusion.ipynb"], jobs=1, timeout_s=600, pdf=True,
                           progress=False)
    (res,) = results
    assert res.status == "ok", res
    assert res.answered == 1 and res.questions == len(Q.find_questions(nb))
    assert res.values, "notebook 01 writes its numbers to results_01.json"
    pdf = out / "ada" / "answers.pdf"
    assert pdf.is_file(), (out / "report.txt").read_text()
    text = _pdftotext(pdf)
    assert "Ada's answer" in text and "Q1.1" in text
    assert "(not answered)" in text
    # exercises: 1.1 scored by the visible and the hidden cases, 1.2 not written
    assert (res.exercise_points, res.exercise_possible) == (2.0, 5.0)
    scores = json.loads((out / "ada" / "exercises_01.json").read_text())["results"]
    assert scores["ex1_2"]["visible"][0].startswith("not written yet")
    # the gradebook, the scores template, review pages and feedback
    book = list(csv.DictReader((out / "gradebook.csv").read_text().splitlines()))
    assert book[0]["student"] == "ada" and float(book[0]["exercises"]) == 2 and float(book[0]["written"]) == 0
    assert "Q1.1" in book[0]["not scored yet"]
    assert (out / "scores.csv").read_text().count("\nada,Q1.") == len(Q.find_questions(nb))
    assert "Ada&#x27;s answer" in (out / "review" / "Q1_1.html").read_text()
    assert "not written yet" in (out / "feedback" / "ada.html").read_text()


def _pdftotext(pdf: Path) -> str:
    import subprocess

    assert shutil.which("pdftotext"), "pdftotext missing (Debian: poppler-utils)"
    return subprocess.run(["pdftotext", str(pdf), "-"], capture_output=True, text=True, check=True).stdout


HOSTILE = {
    # more processes than --max-processes: stopped by the watchdog
    "forks": "import subprocess, time\nkids = [subprocess.Popen(['sleep', '60']) for _ in range(40)]\ntime.sleep(60)",
    # more than --disk-gb in its own folder, file by file: stopped by the watchdog
    "fills": "import time\nfor i in range(40):\n    open(f'junk{i}.bin', 'wb').write(bytes(20_000_000))\n"
             "    time.sleep(0.1)",
    # more than --disk-gb in /tmp (a bounded tmpfs in the sandbox): the write fails
    "tmpfill": "with open('/tmp/junk.bin', 'wb') as f:\n    for i in range(40):\n        f.write(bytes(20_000_000))",
    # the grader's environment is not the student's
    "env": "import os\nextra = {'sees_canary': 'COURSEKIT_TEST_CANARY' in os.environ, "
           "'env_size': len(os.environ)}",
    # the kernel killed from inside
    "dies": "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)",
    # a process that tries to outlive the run
    "daemon": "import subprocess\nsubprocess.Popen(['sleep', '3131'], start_new_session=True)",
}


def sleepers(seconds: str) -> list[int]:
    """Processes running ``sleep SECONDS`` (left over by a run)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if cmdline.read_bytes().split(b"\0")[:2] == [b"sleep", seconds.encode()]:
                found.append(int(cmdline.parent.name))
        except OSError:
            pass
    return found


def test_limits_environment_and_hostile_runs(course, monkeypatch):
    reference, subs, out = course
    monkeypatch.setenv("COURSEKIT_TEST_CANARY", "the grader's secret")
    for name, body in HOSTILE.items():
        student(subs, name, tiny_notebook(body=body))
    linked = student(subs, "linked", tiny_notebook())
    (linked / "notes.txt").symlink_to("/etc/hostname")
    old = {"nbformat": 3, "nbformat_minor": 0, "metadata": {}, "worksheets": [{"cells": []}]}
    student(subs, "old", raw=json.dumps(old))

    results, box = G.grade(subs, out, reference_dir=reference, jobs=2, timeout_s=40, memory_gb=1.5, disk_gb=0.1,
                           max_processes=16, pdf=False, progress=False)
    by = {r.student: r for r in results}

    assert by["forks"].status == "failed" and "more than 16 processes" in by["forks"].error, by["forks"]
    assert by["fills"].status == "failed" and "more than 0.1 GB" in by["fills"].error, by["fills"]
    assert by["env"].status == "ok", by["env"]
    assert by["env"].values["sees_canary"] is False and by["env"].values["env_size"] < 30
    assert by["dies"].status == "failed" and "kernel died" in by["dies"].error, by["dies"]
    assert "Warning" not in by["dies"].error and "warn" not in by["dies"].error
    assert by["daemon"].status == "ok", by["daemon"]
    assert not sleepers("3131"), "a process outlived its run"
    assert not sleepers("60"), "a process outlived its run"
    assert by["linked"].status == "refused" and "notes.txt" in by["linked"].error
    assert by["old"].status == "unreadable" and "nbformat 3" in by["old"].error
    if box.isolated:
        assert by["tmpfill"].status == "failed" and "No space left" in by["tmpfill"].error, by["tmpfill"]


@pytest.mark.parametrize("option, value", [("jobs", 0), ("jobs", -1), ("timeout_s", 0), ("timeout_s", float("nan")),
                                           ("memory_gb", 0), ("memory_gb", -1), ("disk_gb", 0),
                                           ("max_processes", 0)])
def test_limits_of_zero_or_less_are_refused(course, option, value):
    reference, subs, out = course
    student(subs, "good", tiny_notebook())
    with pytest.raises(ValueError, match="must be"):
        G.grade(subs, out, reference_dir=reference, pdf=False, progress=False, **{option: value})
    assert not out.exists(), "nothing is written before the settings are checked"


TRAIN_CELL = '''
import hashlib, json
from coursekit import runs
from diffusion_lib.train import TrainConfig
config = TrainConfig(out_dir=output_dir, epochs=1, batch_size=32, limit=64, seed=seed, vae_dir=checkpoint_dir,
                     warmup_steps=2, unet={UNET}, prompt={PROMPT}, progress=False, device=device)
history, how = runs.train_or_reuse(config)
digest = hashlib.sha256(open(f"{output_dir}/denoiser.safetensors", "rb").read()).hexdigest()
json.dump({"notebook": "08", "values": {"how": how, "digest": digest, "loss": history[-1]["loss"]}},
          open(f"{results_dir}/results_08.json", "w"))
'''


def training_notebook(seed: int = 0):
    """A course notebook that trains a tiny run the way notebook 07 does (``output_dir``, ``train_or_reuse``)."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = nbformat.v4.new_code_cell(f'quick: bool = False\ndevice: str = "auto"\nseed: int = {seed}\n'
                                       'output_dir: str = "runs/student"\ncheckpoint_dir: str = "../checkpoints"\n'
                                       'results_dir: str = "."')
    params.metadata["tags"] = ["parameters"]
    body = TRAIN_CELL.replace("{UNET}", repr({"base_channels": 8, "channel_mult": [1, 2], "attention_levels": [1],
                                              "num_heads": 2, "norm_groups": 4, "ff_mult": 1}))
    nb.cells = [nbformat.v4.new_markdown_cell("# 08 - a tiny training run"), params,
                nbformat.v4.new_code_cell(body.replace("{PROMPT}", repr({"dim": 16, "num_heads": 2})))]
    return nb


def test_training_notebook_runs_once_and_default_settings_reuse_it(tmp_path):
    reference = tmp_path / "reference"
    reference.mkdir()
    name = "08_tiny_train.ipynb"
    nbformat.write(training_notebook(), reference / name)
    assert G.runs_folder(reference / name) == "runs"
    subs = tmp_path / "submissions"
    for student, seed in (("kept", 0), ("changed", 1)):
        (subs / student).mkdir(parents=True)
        nbformat.write(training_notebook(seed), subs / student / name)
    results, _ = G.grade(subs, tmp_path / "shared", reference_dir=reference, jobs=2, pdf=False, progress=False,
                         hidden_tests=None)
    values = {r.student: r.values for r in results}
    assert all(r.status == "ok" for r in results), results
    assert values["kept"]["how"] == "reused" and values["changed"]["how"] == "trained"
    assert values["kept"]["digest"] != values["changed"]["digest"]
    assert (tmp_path / "shared" / ".shared-runs" / "08" / "runs" / "student" / "denoiser.safetensors").is_file()

    # without sharing, the same student trains the run themselves: the very same weights
    alone, _ = G.grade(subs, tmp_path / "alone", reference_dir=reference, jobs=2, pdf=False, progress=False,
                       hidden_tests=None, share_runs=False)
    (kept,) = [r for r in alone if r.student == "kept"]
    assert kept.values["how"] == "trained"
    assert kept.values["digest"] == values["kept"]["digest"] and kept.values["loss"] == values["kept"]["loss"]
    assert not (tmp_path / "alone" / ".shared-runs").exists()


def test_shared_runs_never_replace_a_submitted_run(tmp_path):
    shared = tmp_path / "shared"
    (shared / "runs" / "student").mkdir(parents=True)
    (shared / "runs" / "student" / "denoiser.safetensors").write_text("the reference's")
    (shared / "runs" / "student-v-zsnr").mkdir()
    (shared / "runs" / "student-v-zsnr" / "denoiser.safetensors").write_text("the reference's v run")
    work = tmp_path / "work"
    (work / "runs" / "student").mkdir(parents=True)
    (work / "runs" / "student" / "denoiser.safetensors").write_text("mine")
    G.seed_runs(shared, work)
    assert (work / "runs" / "student" / "denoiser.safetensors").read_text() == "mine"
    assert (work / "runs" / "student-v-zsnr" / "denoiser.safetensors").read_text() == "the reference's v run"
