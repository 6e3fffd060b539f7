"""The course notebooks and the coursekit helpers they rely on.

* structure (fast): parameters cell, validation cell, embedded questions in the nbgrader/otter format,
  question ids unique across the course, no committed outputs, PNG figures, no Unicode Greek in math,
  no remote images;
* execution (slow, papermill): every notebook runs top to bottom in quick mode on the CPU within the
  quick-mode budget and writes its results file; a bad parameter stops the notebook at the validation
  cell with a clear message;
* the coursekit helpers: params, results, widgets, questions, show.

New notebooks in notebooks/ (named NN_*.ipynb) are picked up automatically.
"""

from __future__ import annotations

import ast
import json
import math
import os
import re
import sys
import time
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch

from answer_numbers import DEFAULT_QUOTED, QUOTED, lookup, number
from coursekit import params, questions, results, show, widgets

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
# The quick-mode budget (about 90 s a notebook on a 2-core CPU) is a performance goal: it is measured by
# the main job (`./kit course` prints each notebook's time), not asserted by a timed test, whose verdict
# would depend on what else the machine runs. A cell that hangs still fails here, after this many seconds.
CELL_TIMEOUT_S = 900
MIN_QUESTIONS = 6
REQUIRED_PARAMETERS = {"device": ("str", "auto"), "quick": ("bool", False), "seed": ("int", 0)}
GREEK = re.compile("[\u0370-\u03ff\u1f00-\u1fff]")
MATH = re.compile(r"\$\$.+?\$\$|\$[^$\n]+\$", re.DOTALL)
REMOTE_IMAGE = re.compile(r"!\[[^\]]*\]\(\s*(https?:)?//|<img[^>]+src=[\"']?(https?:)?//", re.IGNORECASE)


def notebook_number(path: Path) -> int:
    return int(path.name[:2])


def read(path: Path):
    return nbformat.read(path, as_version=4)


def code_cells(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


@pytest.fixture
def kernel_env(monkeypatch):
    """Let the notebook kernel import diffusion_lib and coursekit from this checkout even when not pip-installed."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    monkeypatch.delenv("COURSEKIT_STATIC", raising=False)


# ------------------------------------------------------------------------------ structure
def test_the_course_has_notebooks():
    assert NOTEBOOKS, f"no NN_*.ipynb notebooks in {NOTEBOOK_DIR}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_valid_and_committed_without_outputs(path):
    nb = read(path)
    nbformat.validate(nb)
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3", "kernelspec name must be python3"
    dirty = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and (c.outputs or c.execution_count is not None)]
    assert not dirty, f"{path.name}: cells {dirty} have outputs; clear them before committing (jupyter nbconvert --clear-output)"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_parameters_cell_comes_first_then_validation(path):
    cells = code_cells(read(path))
    first = cells[0]
    assert "parameters" in first.metadata.get("tags", []), f"{path.name}: the first code cell must be tagged 'parameters'"
    found = {}
    for node in ast.parse(first.source).body:
        assert isinstance(node, ast.AnnAssign), f"{path.name}: parameters must be annotated: `name: type = value  # why`"
        found[node.target.id] = (ast.unparse(node.annotation), ast.literal_eval(node.value))
    for line in first.source.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            assert "#" in line, f"{path.name}: parameter line without a comment: {line!r}"
    for name, expected in REQUIRED_PARAMETERS.items():
        assert found.get(name) == expected, f"{path.name}: parameter {name} should be {expected}, found {found.get(name)}"
    assert "params.check(" in cells[1].source, f"{path.name}: the cell after the parameters must call params.check(...)"
    for name in found:
        assert name in cells[1].source, f"{path.name}: parameter {name!r} is not validated in the next cell"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_papermill_sees_every_parameter(path):
    """papermill's parser skips a line with two '=' (a '<=' in a comment hides the parameter from graders)."""
    import papermill

    declared = set(papermill.inspect_notebook(str(path)))
    assigned = {node.target.id for node in ast.parse(code_cells(read(path))[0].source).body}
    assert declared == assigned, f"{path.name}: papermill does not see {sorted(assigned - declared)}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_questions_follow_the_format(path):
    nb = read(path)
    assert questions.problems(nb, notebook_number(path)) == []
    found = questions.find_questions(nb)
    assert len(found) >= MIN_QUESTIONS, f"{path.name} has {len(found)} questions, needs at least {MIN_QUESTIONS}"
    numbers = [int(q.label.split(".")[1]) for q in found]
    assert numbers == list(range(1, len(found) + 1)), f"{path.name}: questions not numbered 1..n in order: {numbers}"
    for q in found:
        assert len(q.answer.strip()) > 80, f"{q.label}: the reference answer is too short to be useful"


def test_question_ids_are_unique_across_the_course():
    ids = [(q.grade_id, path.name) for path in NOTEBOOKS for q in questions.find_questions(read(path))]
    seen = {}
    for grade_id, name in ids:
        assert grade_id not in seen, f"grade_id {grade_id} is in both {seen[grade_id]} and {name}"
        seen[grade_id] = name


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_figures_and_math_export_to_pdf(path):
    nb = read(path)
    sources = "\n".join(c.source for c in code_cells(nb))
    assert "%config InlineBackend.figure_formats = ['png']" in sources, f"{path.name}: figures must be PNG"
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "markdown":
            continue
        for math_text in MATH.findall(cell.source):
            assert not GREEK.search(math_text), f"{path.name} cell {i}: Unicode Greek inside math {math_text!r}; write \\alpha"
        assert not REMOTE_IMAGE.search(cell.source), f"{path.name} cell {i}: remote image (the PDF export cannot fetch it)"


def test_python3_kernel_runs_this_python():
    """papermill's kernel_name="python3" must start the interpreter running the tests (the venv), not another one."""
    from jupyter_client.manager import KernelManager

    command = KernelManager(kernel_name="python3").format_kernel_cmd()
    assert command[0] == sys.executable, f"kernel python3 starts {command[0]}, not {sys.executable}"


# ------------------------------------------------------------------------------ execution
def writes(answer: str, text: str) -> bool:
    """Whether ``answer`` writes the number ``text`` as a whole number (not as part of a longer one)."""
    return re.search(r"(?<![\d.,])" + re.escape(text) + r"(?!\d)", answer) is not None


@pytest.mark.parametrize("number", sorted(QUOTED), ids=lambda n: f"notebook_{n}")
def test_quoted_numbers_stand_in_the_reference_answers(number):
    """Each number of tests/answer_numbers.py is written, as written there, in its question's reference answer."""
    (path,) = [p for p in NOTEBOOKS if p.name.startswith(number)]
    answers = {q.label: " ".join((q.answer or "").split()) for q in questions.find_questions(read(path))}
    missing = [f"{label}: {text}" for label, _, text, _ in QUOTED[number]
               if not writes(answers.get(label, ""), text)]
    assert not missing, f"numbers the table ties to {path.name} that its answers do not write: {missing}"


@pytest.mark.parametrize("notebook", sorted(DEFAULT_QUOTED), ids=lambda n: f"notebook_{n}")
def test_quoted_full_run_numbers_match_the_recorded_full_run(notebook):
    """The full-run numbers the answers quote stand in them and in the committed results of a full run."""
    (path,) = [p for p in NOTEBOOKS if p.name.startswith(notebook)]
    answers = {q.label: " ".join((q.answer or "").split()) for q in questions.find_questions(read(path))}
    written = json.loads((ROOT / "answers" / "full_mode" / f"results_{notebook}.json").read_text())
    assert written["parameters"]["quick"] is False
    problems = []
    for label, where, text, tol in DEFAULT_QUOTED[notebook]:
        if not writes(answers.get(label, ""), text):
            problems.append(f"{label} does not write {text}")
        value = lookup(written["values"], where)
        if not abs(value - number(text)) <= tol:
            problems.append(f"{label} quotes {text} for {'/'.join(map(str, where))}; the full run gave {value:.6g}")
    assert not problems, "\n".join(problems)


def _outputs(nb):
    for i, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []):
            yield i, out


@pytest.mark.slow
@pytest.mark.notebook
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_in_quick_mode(path, tmp_path, kernel_env):
    papermill = pytest.importorskip("papermill")
    executed_path = tmp_path / path.name
    start = time.perf_counter()
    papermill.execute_notebook(str(path), str(executed_path), parameters={"quick": True, "device": "cpu"},
                               kernel_name="python3", cwd=str(tmp_path), progress_bar=False,
                               execution_timeout=CELL_TIMEOUT_S)
    print(f"{path.name}: quick mode ran in {time.perf_counter() - start:.1f} s")

    written = results.load(path.name[:2], tmp_path)
    assert written["notebook"] == path.name[:2]
    assert written["parameters"]["quick"] is True and written["values"]
    drifted = []
    for label, where, text, tol in QUOTED.get(path.name[:2], []):
        value = lookup(written["values"], where)
        if not abs(value - number(text)) <= tol:
            drifted.append(f"{label} quotes {text} for {'/'.join(map(str, where))}; the quick run gives {value:.6g}")
    assert not drifted, "reference answers quote numbers this run no longer gives:\n" + "\n".join(drifted)

    executed = read(executed_path)
    images = 0
    for i, out in _outputs(executed):
        assert out.output_type != "error", f"cell {i}: {out.get('ename')}"
        if out.output_type == "stream":
            assert out.name == "stdout", f"cell {i} wrote to stderr (it would end up in the PDF): {out.text[:300]!r}"
            continue
        data = out.get("data", {})
        assert "image/svg+xml" not in data, f"cell {i}: SVG figure; figures must be PNG"
        assert "application/vnd.jupyter.widget-view+json" not in data, f"cell {i}: a widget in quick mode"
        assert not data.get("text/plain", "").startswith(("interactive(", "HBox(", "VBox(")), f"cell {i}: widget text"
        images += "image/png" in data
    assert images >= 3, f"{path.name}: only {images} figures"
    # the reference solutions of the code exercises pass their visible checks
    checks = ["".join(o.get("text", "") for o in c.outputs) for c in executed.cells
              if c.cell_type == "code" and "exercises.check(" in c.source]
    assert checks and all(text.startswith("OK:") for text in checks), checks


@pytest.mark.slow
@pytest.mark.notebook
@pytest.mark.parametrize(
    "bad, expected",
    [
        ({"device": "tpu"}, ["bad notebook parameter device='tpu'", "valid: auto, cpu, cuda, cuda:N"]),
        ({"quick": "yes"}, ["bad notebook parameter quick='yes'", "must be True or False"]),
    ],
    ids=["device", "quick"],
)
def test_bad_parameter_stops_at_the_validation_cell(bad, expected, tmp_path, kernel_env):
    papermill = pytest.importorskip("papermill")
    path = NOTEBOOK_DIR / "01_forward_diffusion.ipynb"
    with pytest.raises(papermill.PapermillExecutionError) as info:
        papermill.execute_notebook(str(path), str(tmp_path / path.name), parameters=bad, kernel_name="python3",
                                   cwd=str(tmp_path), progress_bar=False)
    error = info.value
    assert error.ename == "ParameterError"
    for text in expected:
        assert text in error.evalue
    assert "params.check(" in error.source, "the notebook should stop in the validation cell, not later"
    assert not results.results_path("01", tmp_path).exists()


# ------------------------------------------------------------------------------ coursekit.params
def test_check_returns_the_device():
    assert params.check(device="cpu", quick=True, seed=3) == torch.device("cpu")
    assert params.check(device="auto", quick=False, seed=0).type in ("cpu", "cuda")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"device": "tpu"}, r"device='tpu'.*valid: auto, cpu, cuda, cuda:N"),
        ({"device": 0}, r"device=0 \(int\): must be a string"),
        ({"quick": "yes"}, r"quick='yes' \(str\): must be True or False"),
        ({"quick": 1}, r"quick=1 \(int\): must be True or False"),
        ({"seed": -1}, r"seed=-1 \(int\): must be an integer >= 0"),
        ({"seed": 1.5}, r"seed=1.5 \(float\): must be an integer"),
        ({"seed": True}, r"seed=True \(bool\): must be an integer"),
    ],
)
def test_check_names_the_bad_parameter(kwargs, message):
    with pytest.raises(ValueError, match=message):
        params.check(**{"device": "cpu", "quick": False, "seed": 0, **kwargs})


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_check_refuses_cuda_without_a_gpu():
    with pytest.raises(ValueError, match="no CUDA GPU"):
        params.check(device="cuda")


def test_other_parameter_checks():
    assert params.integer("n", np.int64(5), minimum=1) == 5
    assert params.positive_int("n", 3) == 3
    assert params.real("eta", 1) == 1.0
    assert params.one_of("schedule", "linear", ("linear", "cosine")) == "linear"
    with pytest.raises(ValueError, match=r"n=0 \(int\): must be an integer >= 1"):
        params.positive_int("n", 0)
    with pytest.raises(ValueError, match=r"must be an integer <= 10"):
        params.integer("n", 11, maximum=10)
    with pytest.raises(ValueError, match=r"must be a number"):
        params.real("eta", float("nan"))
    with pytest.raises(ValueError, match=r"valid values: 'linear', 'cosine'"):
        params.one_of("schedule", "cosinus", ("linear", "cosine"))


def test_quick_runs_use_one_thread():
    before = torch.get_num_threads()
    try:
        assert params.set_cpu_threads(True) == 1
        torch.set_num_threads(before)
        assert params.set_cpu_threads(False) == before
    finally:
        torch.set_num_threads(before)


# ------------------------------------------------------------------------------ coursekit.results
def test_results_round_trip(tmp_path):
    values = {"tensor": torch.tensor([1.5, 2.0]), "scalar": torch.tensor(3), "np": np.float32(0.25),
              "nested": {"a": [np.int64(1), -math.inf]}, "nan": float("nan"), "flag": True, "name": "x"}
    path = results.save("07", values, parameters={"quick": True}, directory=tmp_path)
    assert path == tmp_path / "results_07.json"
    loaded = results.load("07", tmp_path)
    assert loaded == {"notebook": "07", "parameters": {"quick": True},
                      "values": {"tensor": [1.5, 2.0], "scalar": 3, "np": 0.25, "nested": {"a": [1, "-inf"]},
                                 "nan": "nan", "flag": True, "name": "x"}}
    json.loads(path.read_text())  # strict JSON: no NaN literals
    with pytest.raises(TypeError, match="cannot write object"):
        results.save("07", {"bad": object()}, directory=tmp_path)
    with pytest.raises(FileNotFoundError, match="run notebook 03 first"):
        results.load("03", tmp_path)


# ------------------------------------------------------------------------------ coursekit.widgets
def test_explore_draws_static_figures_outside_a_live_notebook():
    calls = []
    widgets.explore(lambda t: calls.append(t), {"t": (0, 9, 1)}, static=[{"t": 0}, {"t": 5}], quick=False)
    assert calls == [0, 5]
    calls.clear()
    widgets.explore(lambda t: calls.append(t), {"t": (0, 9, 1)}, static=[{"t": 2}], quick=True)
    assert calls == [2]
    with pytest.raises(ValueError, match="static"):
        widgets.explore(lambda t: None, {"t": (0, 9, 1)}, static=[], quick=True)
    assert widgets.show_progress(quick=False) is False  # not in a Jupyter kernel


def test_batch_runs_are_detected(monkeypatch):
    monkeypatch.setenv("JPY_PARENT_PID", str(os.getpid()))  # this process is pytest, a batch runner
    assert widgets._launched_by_batch_runner() is True
    monkeypatch.setenv("JPY_PARENT_PID", "not-a-pid")
    assert widgets._launched_by_batch_runner() is False
    monkeypatch.setenv("COURSEKIT_STATIC", "1")
    assert widgets.interactive_session(quick=False) is False


def test_widget_has_a_slider_that_redraws_on_release():
    pytest.importorskip("ipywidgets")
    seen = []
    widget = widgets.make_widget(lambda t: seen.append(t), {"t": (0, 99, 1)})
    (slider,) = widget.kwargs_widgets
    assert (slider.min, slider.max, slider.continuous_update) == (0, 99, False)
    slider.value = 42
    assert seen[-1] == 42


def test_widgets_start_at_the_notebooks_settings_not_the_middle_of_the_range():
    pytest.importorskip("ipywidgets")
    def draw(steps, guidance, sampler):
        pass

    controls = {"steps": (1, 100, 1), "guidance": (0.0, 10.0, 0.5), "sampler": ["ddpm", "ddim", "dpmsolver++"]}
    widget = widgets.make_widget(draw, controls, initial={"steps": 20, "guidance": 3.0, "sampler": "dpmsolver++"})
    assert [w.value for w in widget.kwargs_widgets] == [20, 3.0, "dpmsolver++"]
    # without initial values ipywidgets starts in the middle: what explore() used to show
    assert [w.value for w in widgets.make_widget(draw, controls).kwargs_widgets] == [50, 5.0, "ddpm"]
    clipped = widgets.make_widget(draw, controls, initial={"steps": 500, "guidance": 3.0, "sampler": "ddim"})
    assert clipped.kwargs_widgets[0].value == 100


# ------------------------------------------------------------------------------ coursekit.questions
def _question_notebook(answer="### BEGIN SOLUTION\n# forty-two\n### END SOLUTION", grade_id="q1_1", tags=("otter_answer_cell",),
                       label="**Q1.1**"):
    nb = nbformat.v4.new_notebook()
    answer_cell = nbformat.v4.new_code_cell(answer)
    answer_cell.metadata.update(questions.answer_metadata(grade_id))
    answer_cell.metadata["tags"] = list(tags)
    nb.cells = [nbformat.v4.new_markdown_cell(f"{questions.BEGIN_QUESTION}\n{label} Why?\n{questions.END_QUESTION}"),
                answer_cell]
    return nb


def test_a_well_formed_question_has_no_problems():
    nb = _question_notebook()
    assert questions.problems(nb, 1) == []
    (q,) = questions.find_questions(nb)
    assert (q.label, q.grade_id, q.answer, q.answer_index) == ("Q1.1", "q1_1", "# forty-two", 1)


@pytest.mark.parametrize(
    "kwargs, problem",
    [
        ({"answer": "### BEGIN SOLUTION\n### END SOLUTION"}, "empty answer"),
        ({"answer": "# forty-two"}, "lacks ### BEGIN SOLUTION"),
        ({"answer": "### BEGIN SOLUTION\nx = 42\n### END SOLUTION"}, "must be comment lines"),
        ({"grade_id": "q1_2"}, "nbgrader metadata"),
        ({"tags": ()}, "otter_answer_cell"),
        ({"label": "**Q2.1**"}, "belongs to notebook 2"),
        ({"label": "Question 1"}, "no **Q<notebook>.<n>** label"),
    ],
)
def test_malformed_questions_are_reported(kwargs, problem):
    assert any(problem in p for p in questions.problems(_question_notebook(**kwargs), 1))


def test_duplicate_and_orphan_questions_are_reported():
    nb = _question_notebook()
    nb.cells += _question_notebook().cells
    assert any("appears 2 times" in p for p in questions.problems(nb, 1))
    orphan = _question_notebook()
    orphan.cells = orphan.cells[:1]
    assert any("not followed by an answer code cell" in p for p in questions.problems(orphan, 1))


# ------------------------------------------------------------------------------ coursekit.show
def test_table_markdown_formats_numbers():
    text = show.table_markdown([[1, 0.5, 1e-5, 12.3456, -math.inf]], ["a", "b", "c", "d", "e"])
    # the separator has as many dashes as each column's longest entry: pandoc sizes wide tables by it
    assert text.splitlines() == ["| a | b | c | d | e |", "|---|---|---------|-----|----|",
                                 "| 1 | 0.5 | 1.000e-05 | 12.35 | -inf |"]
    assert show.table_markdown([["a|b"]], ["||x||"]).splitlines()[::2] == ["| \\|\\|x\\|\\| |", "| a\\|b |"]
    with pytest.raises(ValueError, match="2 cells but there are 1 headers"):
        show.table_markdown([[1, 2]], ["a"])


def test_written_answer_is_what_the_student_wrote():
    cell = f"{questions.BEGIN_SOLUTION}\n{questions.STUDENT_PLACEHOLDER}\n{questions.END_SOLUTION}"
    assert questions.written_answer(cell) == ""
    assert questions.written_answer(cell.replace(questions.STUDENT_PLACEHOLDER, "# beta  \n\n# gamma")) == "# beta\n\n# gamma"
    assert questions.written_answer("# markers deleted, answer kept") == "# markers deleted, answer kept"
    assert questions.written_answer("   \n") == ""


@pytest.mark.slow
@pytest.mark.notebook
def test_the_main_jobs_kernels_start_without_warnings(tmp_path):
    """The main job's kernels talk over IPC sockets in a private folder: no 'TCP without encryption' warning
    in the job's output, and no socket file left behind."""
    import subprocess
    import sys

    script = ("from pathlib import Path\nfrom coursekit import REPO\nfrom coursekit.course import run_notebook\n"
              "from coursekit.kernels import ipc_kernel_manager\n"
              "with ipc_kernel_manager() as manager:\n"
              "    status = run_notebook(REPO / 'notebooks' / '02_noise_schedules.ipynb', Path('.'), "
              "REPO / 'checkpoints', 'cpu', True, manager)\n"
              "    print('IPC folder', Path(manager().ip).parent)\n"
              "assert status['ok'], status\n")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path,
                         env={**os.environ, "TMPDIR": str(tmp_path)})
    assert run.returncode == 0, run.stderr
    output = run.stdout + run.stderr
    assert "WARNING" not in output and "without encryption" not in output, output
    folder = Path(output.split("IPC folder ")[1].split()[0])
    assert folder.parent == tmp_path and not folder.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["02_noise_schedules.ipynb", "results_02.json"]
