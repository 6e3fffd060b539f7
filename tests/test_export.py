"""The answers PDF: built from an executed notebook, read back with pdftotext, its pages rendered.

Checks that questions, answers, Greek letters (in text and in math), figures and the
derivations survive xelatex, that widgets and progress bars leave no junk, and that every
code reference of the derivations points at a function that exists.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import nbformat
import pytest

from coursekit import export
from coursekit import questions as Q

ROOT = Path(__file__).resolve().parents[1]
NB01 = ROOT / "notebooks" / "01_forward_diffusion.ipynb"


# ---------------------------------------------------------------------------- fast checks
def test_every_code_reference_of_the_derivations_exists():
    text = export.DERIVATIONS.read_text()
    refs = export.CODE_REF.findall(text)
    assert len(refs) >= 15
    for file, name in refs:
        assert export.code_line(file, name) > 0
    resolved = export.resolve_code_refs(text)
    assert "[code:" not in resolved
    assert "`diffusion_lib/schedules.py`, line" in resolved


def test_a_wrong_code_reference_is_an_error():
    with pytest.raises(export.ExportError, match="not defined"):
        export.code_line("diffusion_lib/schedules.py", "NoiseSchedule.no_such_method")
    with pytest.raises(export.ExportError, match="does not exist"):
        export.code_line("diffusion_lib/nowhere.py", "f")


@pytest.mark.parametrize("topic", [
    r"q\(x_t \\mid x_0\)", r"q\(x_\{t-1\} \\mid x_t, x_0\)", "ELBO", r"L_\{\\text\{simple\}\}", "velocity",
    "DDIM", r"\\eta", "Bayes", "zero terminal SNR", "scale factor", "Frechet"])
def test_the_derivations_cover(topic):
    assert re.search(topic, export.DERIVATIONS.read_text()), topic


def test_long_answers_are_reflowed_but_tables_kept():
    long = "# " + " ".join(["word"] * 60)
    table = "# a   | b\n# 1.0 | 2.0"
    out = export.reflow_comments(long + "\n#\n" + table)
    assert all(len(line) <= export.WRAP for line in out.splitlines())
    assert out.splitlines()[-2:] == table.splitlines()
    assert all(line.startswith("#") for line in out.splitlines())
    items = export.reflow_comments("# (a) " + "x " * 50 + "\n# (b) short")
    assert items.splitlines()[-1] == "# (b) short"


def test_live_only_outputs_are_dropped():
    widget = {"output_type": "display_data", "data": {export.WIDGET_MIME: {}, "text/plain": "interactive(...)"}}
    bar = {"output_type": "stream", "name": "stderr", "text": "50%|#####     | 5/10 [00:01<00:01, 4.2it/s]"}
    figure_repr = {"output_type": "execute_result", "data": {"text/plain": "<Figure size 640x480 with 1 Axes>"}}
    listing = {"output_type": "display_data", "data": {"text/markdown": "`x`\n\n```python\ndef f(): pass\n```"}}
    animation = {"output_type": "display_data", "data": {"text/html": "<video ...>",
                                                          "text/plain": "<IPython.core.display.HTML object>"}}
    for output in (widget, bar, figure_repr, listing, animation):
        assert export.clean_output(output) is None
    printed = {"output_type": "stream", "name": "stdout", "text": "\x1b[31mloss 0.12\x1b[0m\rloss 0.11\n"}
    assert export.clean_output(printed)["text"] == "loss 0.11"
    png = {"output_type": "display_data", "data": {"image/png": "iVBOR", "text/plain": "<Figure>", "text/html": "x"}}
    assert set(export.clean_output(png)["data"]) == {"image/png", "text/plain"}


def test_no_executed_notebooks_is_a_clear_error(tmp_path):
    with pytest.raises(export.ExportError, match="kit course"):
        export.executed_notebooks(tmp_path)


# ------------------------------------------------------------------------ the real PDF
def _tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} not found: ./kit setup installs it (Debian: poppler-utils, texlive-xetex)"
    return path


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """Notebook 01 executed in quick mode, with a Greek letter typed into one answer."""
    import papermill

    folder = tmp_path_factory.mktemp("executed")
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        papermill.execute_notebook(str(NB01), str(folder / NB01.name), parameters={"quick": True, "device": "cpu"},
                                   kernel_name="python3", cwd=str(folder), progress_bar=False)
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    nb = nbformat.read(folder / NB01.name, as_version=4)
    first = Q.find_questions(nb)[0]
    cell = nb.cells[first.answer_index]
    cell.source = cell.source.replace(Q.BEGIN_SOLUTION, Q.BEGIN_SOLUTION + "\n# Greek check: β_t and ᾱ_t, ε ~ N(0, I)"
                                      "\n# 答案：扩散模型的噪声 and an emoji 👜 😀")
    nbformat.write(nb, folder / NB01.name)
    return folder


@pytest.mark.slow
@pytest.mark.notebook
def test_the_answers_pdf_holds_questions_answers_figures_and_derivations(executed, tmp_path):
    pdf = export.export_answers(executed, tmp_path / "answers.pdf")
    text = subprocess.run([_tool("pdftotext"), str(pdf), "-"], capture_output=True, text=True, check=True).stdout
    nb = nbformat.read(executed / NB01.name, as_version=4)
    found = Q.find_questions(nb)
    for q in found:
        assert q.label in text, q.label
        first_words = " ".join(q.answer.strip().lstrip("#").split()[:4])
        assert first_words in " ".join(text.split()), (q.label, first_words)
    # Greek typed as Unicode in an answer survives only with the DejaVu fonts; Chinese and emoji with the fallbacks
    assert "β_t and ᾱ_t, ε" in text
    assert "答案：扩散模型的噪声" in text and "👜" in text and "😀" in text
    # tables: no two numbers run into each other (e.g. "0.0021930.002202"), no number split over two lines
    assert not re.findall(r"\d\.\d+\.\d", text), re.findall(r"\S*\d\.\d+\.\d\S*", text)[:5]
    assert not re.findall(r"\de-\n", text), "a number in scientific notation was wrapped"
    # math: \bar\alpha_t and friends come out as math glyphs
    assert re.search("[\U0001d6fc\U0001d6fd\U0001d6c2\U0001d716\u03b1\u03b2]", text)
    # each figure is followed by its caption, as in the notebook
    captions = [c.source for c in export.notebook_section(executed / NB01.name) if export.is_caption(c)]
    assert len(captions) >= 5
    flat = " ".join(text.split())
    for caption in captions:
        words = " ".join(caption.replace("*What to look at.*", "").split()[:5])
        if "$" not in words:
            assert words in flat, words
    # the derivations follow, with resolved code references
    assert "Derivations" in text and "The posterior" in text and "diffusion_lib/schedules.py" in text
    assert "[code:" not in text
    # no junk from widgets or progress bars
    for junk in ("interactive(children", "IntSlider", "it/s]", "Widget", "\x1b["):
        assert junk not in text, junk
    # figures: the notebook's PNGs are in the PDF
    images = subprocess.run([_tool("pdfimages"), "-list", str(pdf)], capture_output=True, text=True,
                            check=True).stdout.splitlines()[2:]
    figures_in_notebook = sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code"
                              for o in c.get("outputs", []))
    assert len(images) >= min(figures_in_notebook, 5) > 0
    # and the pages render
    subprocess.run([_tool("pdftoppm"), "-png", "-r", "30", "-f", "1", "-l", "2", str(pdf), str(tmp_path / "page")],
                   check=True)
    assert len(list(tmp_path.glob("page-*.png"))) == 2


@pytest.mark.slow
@pytest.mark.notebook
def test_export_command_line(executed, tmp_path):
    out = tmp_path / "a.pdf"
    from coursekit.__main__ import main

    assert main(["export", "--notebooks", str(executed), "--out", str(out), "--no-derivations"]) == 0
    text = subprocess.run([_tool("pdftotext"), str(out), "-"], capture_output=True, text=True, check=True).stdout
    assert "Q1.1" in text and "Derivations" not in text
    assert main(["export", "--notebooks", str(tmp_path / "none"), "--out", str(out)]) == 1


def test_long_names_in_tables_may_break_but_code_spans_stay_literal():
    md = "| layer | file |\n|---|---|\n| down_blocks.2.1.attn1 SpatialTransformer | `results_01.json` |\nnot_a_table.line_here"
    out = export.breakable_tables(md).splitlines()
    assert out[2].startswith(r"| down_\allowbreak{}blocks.\allowbreak{}2.") and r"Spatial\allowbreak{}Transformer" in out[2]
    assert "`results_01.json`" in out[2]
    assert out[0] == "| layer | file |" and out[1] == "|---|---|" and out[3] == "not_a_table.line_here"


def test_xelatex_runs_again_only_while_its_log_asks(tmp_path, monkeypatch):
    """The exporter stops after the pass whose log asks for no rerun, and never runs more than latex_count."""
    for line in ("Package hyperref Warning: Rerun to get /PageLabels entry.",
                 "Package longtable Warning: Table widths have changed. Rerun LaTeX.",
                 "LaTeX Warning: Label(s) may have changed. Rerun to get cross-references right."):
        assert export.RERUN.search(line), line
    assert not export.RERUN.search("Package: rerunfilecheck 2022-07-10 v1.10 Rerun checks for auxiliary files (HO)")
    # a stand-in for xelatex: counts its passes and asks for a rerun on the first `asks` of them
    fake = tmp_path / "fake-latex"
    fake.write_text('#!/bin/sh\nn=$(cat passes 2>/dev/null || echo 0); n=$((n + 1)); echo $n > passes\n'
                    'if [ "$n" -le "$ASKS" ]; then echo "LaTeX Warning: Label(s) may have changed." > "${1%.tex}.log";'
                    ' else echo "all settled" > "${1%.tex}.log"; fi\n')
    fake.chmod(0o755)
    monkeypatch.chdir(tmp_path)
    for asks, passes in ((0, 1), (1, 2), (2, 3), (5, 3)):
        monkeypatch.setenv("ASKS", str(asks))
        (tmp_path / "passes").unlink(missing_ok=True)
        exporter = export._pdf_exporter()
        exporter.latex_command = [str(fake), "{filename}"]
        assert exporter.run_latex("notebook.tex")
        assert int((tmp_path / "passes").read_text()) == passes, asks


@pytest.mark.slow
@pytest.mark.notebook
def test_without_xelatex_the_same_answers_come_as_one_html_page(executed, tmp_path):
    """xelatex and pandoc hidden (an empty PATH): a clear message naming what to install,
    and the same book as a self-contained HTML page; asked for the PDF alone, a clear error."""
    import sys

    bare = tmp_path / "bin"  # an empty folder: the only place commands are looked for
    bare.mkdir()
    env = {**os.environ, "PATH": str(bare)}
    out = tmp_path / "answers.pdf"
    run = subprocess.run([sys.executable, "-m", "coursekit", "export", "--notebooks", str(executed), "--out",
                          str(out)], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "xelatex and pandoc not found" in run.stderr and "apt-get install texlive-xetex" in run.stderr
    assert "MacTeX" in run.stderr and "MiKTeX" in run.stderr
    page = (tmp_path / "answers.html").read_text()
    assert not out.exists()
    nb = nbformat.read(executed / NB01.name, as_version=4)
    for q in Q.find_questions(nb):
        assert q.label in page
    assert "β_t and ᾱ_t" in page and "Derivations" in page
    assert page.count("data:image/png;base64,") >= 5, "figures are embedded"
    assert "What to look at" in page
    for junk in ("interactive(children", "IntSlider", "it/s]"):
        assert junk not in page, junk
    strict = subprocess.run([sys.executable, "-m", "coursekit", "export", "--notebooks", str(executed),
                             "--out", str(out), "--format", "pdf"], capture_output=True, text=True, env=env,
                            cwd=tmp_path)
    assert strict.returncode == 1 and "xelatex and pandoc not found" in strict.stderr and not out.exists()
