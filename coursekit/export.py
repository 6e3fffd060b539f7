r"""Export the answers to one PDF: every question, its answer, the figures and numbers it refers to.

The book is built as one notebook, then handed to ``nbconvert``'s PDF exporter (xelatex)
with the template in ``answers/templates/coursekit`` (DejaVu fonts: with LaTeX's default
fonts, Greek letters in text vanish without an error). For each executed course notebook,
in order:

1. a section with the notebook's title;
2. for each question: the outputs of the code cells of the section the question sits in
   (figures, tables, printed numbers) that no earlier question of that notebook showed
   already, then the question, then the answer cell as written (comment lines, wrapped to
   the page);
3. the numbers the notebook wrote (``results_NN.json``), when they lie beside it.

Then the derivations document (``answers/derivations.md``), whose code references
``[code: file::name]`` are resolved to file and line number.

Outputs that only make sense live are dropped: widgets (their static twin is drawn in
batch runs), stderr (progress bars), ANSI colour codes, source listings, and the text
stand-ins of figures (``<Figure size ...>``).
"""

from __future__ import annotations

import ast
import copy
import json
import re
import textwrap
from pathlib import Path
from typing import Any, Iterable

import nbformat

from . import questions as Q
from . import REPO, numbered_notebooks

TEMPLATE_DIR = REPO / "answers" / "templates"
TEMPLATE_NAME = "coursekit"
DERIVATIONS = REPO / "answers" / "derivations.md"
WRAP = 80  # characters per line of answers and printed output: the PDF page holds about 83

WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# the text stand-in of an object that only a browser shows (a figure, an HTML animation, a widget)
FIGURE_REPR = re.compile(r"^<(Figure|matplotlib\.\S+|IPython\.core\.display\.\w+ object)\b.*>$")
CODE_REF = re.compile(r"\[code:\s*([\w./-]+\.py)::([\w.]+)\]")
HEADING = re.compile(r"^#{1,3}\s")


class ExportError(RuntimeError):
    """The answers cannot be exported; the message says what is missing."""


# ------------------------------------------------------------------------------- outputs
CAPTION = "*What to look at.*"


def _text(value: Any) -> str:
    return "".join(value) if isinstance(value, list) else str(value)


def _wrap(text: str, width: int = WRAP, prefix: str = "") -> str:
    """Wrap long lines (keeping a leading ``prefix`` such as "# " on continuation lines)."""
    out = []
    for line in text.splitlines():
        if len(line) <= width:
            out.append(line)
            continue
        lead = re.match(r"^(\s*#\s?|\s*)", line).group(1) if not prefix else prefix
        out.extend(textwrap.wrap(line, width, subsequent_indent=lead, break_long_words=True,
                                 break_on_hyphens=False, drop_whitespace=True) or [""])
    return "\n".join(out)


BREAK_AFTER = re.compile(r"(?<=[_/(])(?=[^\s\\|])")  # "beta_(T-1)" may break after "_" and "("
SCIENTIFIC = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?e[-+]\d+\b")  # 4.128e-05, -1.2e+03
LONG_TOKEN = re.compile(r"[\w.\-/]{14,}")


def breakable_tables(markdown: str) -> str:
    """Let LaTeX break names in table cells after "_", "/" and "(", long names ("down_blocks.2.1.attn1") also
    after "." and in CamelCase, and never break a number in scientific notation ("4.128e-05") at its sign.

    LaTeX never breaks inside a word, so in a table that fills the page one long layer name
    would run over its neighbours; ``\\allowbreak`` is invisible and only offers a break.
    """
    def soften(match: re.Match) -> str:
        token = re.sub(r"([._/])", r"\1\\allowbreak{}", match.group(0))
        return re.sub(r"(?<=[a-z])(?=[A-Z])", r"\\allowbreak{}", token)  # SpatialTransformer

    def keep(match: re.Match) -> str:
        return f"\\mbox{{{match.group(0)}}}"  # 1.234e-05 would otherwise break after its "-"

    lines = []
    for line in markdown.splitlines():
        is_row = line.lstrip().startswith("|") and not set(line.strip()) <= set("|-: ")
        if is_row:  # not inside `code spans`, where LaTeX commands would print literally
            parts = line.split("`")
            line = "`".join(SCIENTIFIC.sub(keep, BREAK_AFTER.sub(r"\\allowbreak{}", LONG_TOKEN.sub(soften, p)))
                            if i % 2 == 0 else p for i, p in enumerate(parts))
        lines.append(line)
    return "\n".join(lines)


NEW_ITEM = re.compile(r"^\s*(\(?[a-z0-9]{1,2}[.)]|[-*+]|Q\d|\|)\s")


def reflow_comments(text: str, width: int = WRAP) -> str:
    """Re-wrap an answer's comment lines to ``width`` so that no line overflows the page.

    A paragraph is a run of ``# ...`` lines; a blank ``#``, a non-comment line, or a line that
    starts a list item ("(a)", "1.", "-", "|") starts a new one. Paragraphs whose lines all fit
    are kept exactly as written (tables, aligned sums); the others are joined and wrapped.
    """
    out: list[str] = []
    para: list[str] = []

    def flush() -> None:
        if not para:
            return
        if max(len(line) for line in para) <= width:
            out.extend(para)
        else:
            lead = re.match(r"^(\s*#\s?)", para[0]).group(1)
            words = " ".join(line.strip()[1:].strip() for line in para)
            out.extend(textwrap.wrap(words, width, initial_indent=lead, subsequent_indent=lead,
                                     break_long_words=True, break_on_hyphens=False))
        para.clear()

    for line in text.splitlines():
        stripped = line.strip()
        if not stripped.startswith("#") or stripped == "#":
            flush()
            out.append(_wrap(line, width) if len(line) > width else line)
            continue
        if para and NEW_ITEM.match(stripped[1:]):
            flush()
        para.append(line.rstrip())
    flush()
    return "\n".join(out)


def clean_output(output: dict) -> dict | None:
    """The output as it should appear on paper, or None when it has no place there."""
    kind = output.get("output_type")
    if kind == "stream":
        if output.get("name") != "stdout":
            return None  # stderr: progress bars and warnings
        text = ANSI.sub("", _text(output.get("text", "")))
        # a carriage return redraws the line (progress bars): keep what was drawn last
        text = "\n".join(line.rsplit("\r", 1)[-1] for line in text.rstrip("\n").split("\n"))
        return {"output_type": "stream", "name": "stdout", "text": _wrap(text)} if text.strip() else None
    if kind == "error":
        tb = ANSI.sub("", f"{output.get('ename', 'Error')}: {output.get('evalue', '')}")
        return {"output_type": "stream", "name": "stdout", "text": _wrap(tb)}
    if kind not in ("display_data", "execute_result"):
        return None
    data = dict(output.get("data", {}))
    if WIDGET_MIME in data:
        return None
    data.pop("text/html", None)  # LaTeX cannot use it; tables come as text/markdown too
    if "text/markdown" in data:
        if "```python" in _text(data["text/markdown"]):
            return None  # a source listing (coursekit.show.source): the code is in diffusion_lib
        data["text/markdown"] = breakable_tables(_text(data["text/markdown"]))
    if set(data) <= {"text/plain"}:
        plain = ANSI.sub("", _text(data.get("text/plain", ""))).strip()
        if not plain or FIGURE_REPR.match(plain):
            return None
        data["text/plain"] = _wrap(plain)
    if not data:
        return None
    return {"output_type": "display_data", "data": data, "metadata": output.get("metadata", {})}


def shown_outputs(cell: dict) -> list[dict]:
    """The printable outputs of a code cell."""
    if cell.get("cell_type") != "code":
        return []
    return [o for o in (clean_output(o) for o in cell.get("outputs", [])) if o is not None]


# ---------------------------------------------------------------------- one notebook
def notebook_title(nb: Any, fallback: str) -> str:
    for cell in nb["cells"]:
        if cell["cell_type"] == "markdown":
            for line in _text(cell["source"]).splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
    return fallback


def is_answer_cell(cell: dict) -> bool:
    return Q.ANSWER_TAG in cell.get("metadata", {}).get("tags", [])


def is_caption(cell: dict) -> bool:
    """A figure's caption: the markdown cell under it that starts with "*What to look at.*"."""
    return cell["cell_type"] == "markdown" and _text(cell["source"]).lstrip().startswith(CAPTION)


def _strip_question_markers(text: str) -> str:
    return text.replace(Q.BEGIN_QUESTION, "").replace(Q.END_QUESTION, "").strip()


def _answer_source(cell: dict | None) -> str:
    if cell is None:
        return "# (no answer cell)"
    text = Q.written_answer(_text(cell.get("source", "")))
    return reflow_comments(text) if text else "# (not answered)"


def _section_start(cells: list, index: int) -> int:
    """Index of the markdown heading cell that opens the section holding cell ``index``."""
    for i in range(index, -1, -1):
        c = cells[i]
        if c["cell_type"] == "markdown" and not Q.is_question_cell(c) and any(
                HEADING.match(line) for line in _text(c["source"]).splitlines()):
            return i
    return 0


def _results_cells(path: Path, number: str) -> list:
    results = path.parent / f"results_{number}.json"
    if not results.is_file():
        return []
    try:
        values = json.loads(results.read_text()).get("values", {})
    except (json.JSONDecodeError, AttributeError):
        return [nbformat.v4.new_markdown_cell(f"`{results.name}` is not valid JSON.")]
    rows = []
    for key, value in values.items():
        if isinstance(value, (int, float, str, bool)) or value is None:
            rows.append(f"| `{key}` | {value:.6g} |" if isinstance(value, float) else f"| `{key}` | {value} |")
        elif isinstance(value, list) and len(value) <= 8 and all(isinstance(v, (int, float)) for v in value):
            rows.append(f"| `{key}` | " + ", ".join(f"{v:.4g}" for v in value) + " |")
    if not rows:
        return []
    table = "\n".join(["| value | |", "| --- | --- |", *rows])
    return [nbformat.v4.new_markdown_cell(f"**Numbers written by the notebook** (`{results.name}`)\n\n{table}")]


def notebook_section(path: Path) -> list:
    """The cells of the answers book for one executed notebook."""
    try:
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
    except Exception as err:  # noqa: BLE001 - not JSON, truncated, schema-invalid: one clear message
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise ExportError(f"{path} is not a readable notebook ({first}). Run it again (./kit course) or restore "
                          "it; nothing was exported") from err
    number = path.name[:2]
    cells = nb.cells
    out = [nbformat.v4.new_markdown_cell(f"# {notebook_title(nb, path.stem)}\n\n*From `{path.name}`.*")]
    shown: set[int] = set()
    found = Q.find_questions(nb)
    if not found:
        out.append(nbformat.v4.new_markdown_cell("*This notebook has no embedded questions.*"))
    for q in found:
        start = _section_start(cells, q.question_index)
        context = []  # the outputs of the section, each figure followed by its caption
        for i in range(start, q.question_index):
            if i in shown or Q.is_question_cell(cells[i]) or is_answer_cell(cells[i]):
                continue
            outputs = shown_outputs(cells[i])
            if outputs:
                shown.add(i)
                holder = nbformat.v4.new_code_cell(source="")
                holder.outputs = [nbformat.from_dict(o) for o in outputs]
                holder.metadata["coursekit"] = {"context_for": q.label}
                context.append(holder)
                if i + 1 < len(cells) and is_caption(cells[i + 1]):
                    context.append(nbformat.v4.new_markdown_cell(_text(cells[i + 1]["source"])))
        if context:
            heading = _text(cells[start]["source"]).splitlines()[0].lstrip("# ").strip() if start else ""
            note = f"*What {q.label} refers to" + (f" (section {heading})*" if heading else "*")
            out.append(nbformat.v4.new_markdown_cell(note))
            out.extend(context)
        out.append(nbformat.v4.new_markdown_cell(_strip_question_markers(q.prompt)))
        answer = cells[q.answer_index] if q.answer_index is not None else None
        cell = nbformat.v4.new_code_cell(source=_answer_source(answer))
        cell.metadata["coursekit"] = {"answer_for": q.label}
        out.append(nbformat.v4.new_markdown_cell(f"*Answer to {q.label}:*"))
        out.append(cell)
    out.extend(_results_cells(path, number))
    return out


# --------------------------------------------------------------------- derivations
def code_line(file: str, qualname: str, root: Path = REPO) -> int:
    """Line number of the ``def``/``class`` ``qualname`` ("NoiseSchedule.add_noise") in ``file``."""
    path = root / file
    if not path.is_file():
        raise ExportError(f"{file} (named in a [code: ...] reference) does not exist")
    scope: Iterable[ast.AST] = ast.parse(path.read_text()).body
    node = None
    for part in qualname.split("."):
        node = next((n for n in scope if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                     and n.name == part), None)
        if node is None:
            raise ExportError(f"{qualname} (named in a [code: ...] reference) is not defined in {file}")
        scope = node.body
    return node.lineno


def resolve_code_refs(text: str, root: Path = REPO) -> str:
    """Replace ``[code: file::name]`` by "`file`, line N (`name`)"."""
    return CODE_REF.sub(lambda m: f"`{m.group(1)}`, line {code_line(m.group(1), m.group(2), root)} (`{m.group(2)}`)",
                        text)


def derivation_cells(path: Path = DERIVATIONS) -> list:
    """The derivations document as markdown cells, one per section."""
    if not path.is_file():
        raise ExportError(f"derivations document {path} not found")
    text = resolve_code_refs(path.read_text())
    parts = re.split(r"(?m)^(?=## )", text)
    return [nbformat.v4.new_markdown_cell(p.strip()) for p in parts if p.strip()]


# ------------------------------------------------------------------------------ the book
def executed_notebooks(directory: str | Path) -> list[Path]:
    directory = Path(directory)
    found = numbered_notebooks(directory)
    if not found:
        raise ExportError(
            f"no executed notebooks (NN_*.ipynb) in {directory}. Run the course first (./kit course writes them "
            "to output/notebooks), or point --notebooks at a folder of executed notebooks.")
    return found


def answers_book(notebooks: Iterable[Path], title: str = "Answers", derivations: Path | None = DERIVATIONS,
                 subtitle: str = "") -> Any:
    """One notebook holding every question, answer and figure of ``notebooks``, then the derivations."""
    book = nbformat.v4.new_notebook()
    book.metadata["title"] = title
    book.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    intro = ("Each notebook's questions follow in order: first what the question refers to (the figures, tables "
             "and numbers of its section, as the executed notebook drew them), then the question, then the answer "
             "as written in the answer cell.")
    book.cells.append(nbformat.v4.new_markdown_cell((subtitle + "\n\n" if subtitle else "") + intro))
    for path in notebooks:
        book.cells.extend(notebook_section(Path(path)))
    if derivations is not None:
        book.cells.extend(derivation_cells(derivations))
    return book


# what xelatex writes to its log when the next pass would change the output (outline, page labels,
# longtable column widths, references); the package banner "Rerun checks for auxiliary files" is not one
RERUN = re.compile(r"Rerun to get|Rerun LaTeX|Please rerun|Label\(s\) may have changed")


def _pdf_exporter(**kwargs: Any):
    """nbconvert's PDF exporter, running xelatex again only while its log asks for it (at most
    ``latex_count`` times) instead of always three times: a book is settled after two passes."""
    from nbconvert import PDFExporter
    from nbconvert.exporters.pdf import LatexFailed

    class SettlingPDFExporter(PDFExporter):
        def run_latex(self, filename, raise_on_failure=LatexFailed):
            def log_error(command, out):
                self.log.critical("%s failed: %s\n%s", command[0], command, out)

            log = Path(filename).with_suffix(".log")
            for _ in range(self.latex_count):
                if not self.run_command(self.latex_command, filename, 1, log_error, raise_on_failure):
                    return False
                if not (log.is_file() and RERUN.search(log.read_text(errors="replace"))):
                    return True
            return True

    return SettlingPDFExporter(**kwargs)


FORMATS = ("auto", "pdf", "html")


def pdf_toolchain_problem() -> str:
    """What is missing for the PDF (xelatex, pandoc) and how to install it; '' when nothing is."""
    import shutil

    missing = [tool for tool in ("xelatex", "pandoc") if shutil.which(tool) is None]
    if not missing:
        return ""
    return (f"{' and '.join(missing)} not found, which the PDF needs. Install them: Debian/Ubuntu: apt-get install "
            "texlive-xetex texlive-fonts-recommended texlive-plain-generic pandoc fonts-dejavu-core (./kit setup "
            "does it); macOS: MacTeX (or BasicTeX) and pandoc, e.g. brew install --cask mactex and brew install "
            "pandoc; Windows: MiKTeX and pandoc")


def _config():
    from traitlets.config import Config

    config = Config()
    # the context holders are empty code cells: show only their outputs
    config.TagRemovePreprocessor.enabled = True
    config.TagRemovePreprocessor.remove_input_tags = {"remove_input"}
    return config


def _tagged(book: Any) -> Any:
    """A copy of ``book`` whose context holders carry the tag that hides their (empty) input."""
    book = copy.deepcopy(book)
    for cell in book.cells:
        if cell.cell_type == "code" and "context_for" in cell.metadata.get("coursekit", {}):
            cell.metadata.setdefault("tags", []).append("remove_input")
    return book


def _write(out: str | Path, body: bytes) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(body)
    tmp.replace(out)
    return out


def to_html(book: Any, out: str | Path) -> Path:
    """Write ``book`` as one self-contained HTML page (figures embedded): the same content as the PDF,
    for machines without xelatex. Math is typeset by MathJax, which the page loads when online."""
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(config=_config(), template_name="lab", embed_images=True)
    exporter.exclude_input_prompt = True
    exporter.exclude_output_prompt = True
    body, _ = exporter.from_notebook_node(_tagged(book), resources={"metadata": {"name": book.metadata.get("title", "")}})
    return _write(out, body.encode("utf-8"))


def to_pdf(book: Any, out: str | Path) -> Path:
    """Write ``book`` as a PDF through nbconvert and xelatex with the DejaVu template."""
    from nbconvert.exporters.pdf import LatexFailed

    problem = pdf_toolchain_problem()
    if problem:
        raise ExportError(problem)
    exporter = _pdf_exporter(config=_config(), template_name=TEMPLATE_NAME,
                             extra_template_basedirs=[str(TEMPLATE_DIR)])
    exporter.exclude_input_prompt = True
    exporter.exclude_output_prompt = True
    book = _tagged(book)
    try:
        body, _ = exporter.from_notebook_node(book, resources={"metadata": {"name": book.metadata.get("title", "")}})
    except LatexFailed as err:
        log = err.output if isinstance(err.output, str) else ""
        tail = "\n".join(log.splitlines()[-30:])
        raise ExportError(f"xelatex failed while writing {out}:\n{tail}") from err
    return _write(out, body)


def export_answers(notebooks_dir: str | Path, out: str | Path, derivations: Path | None = DERIVATIONS,
                   title: str = "The Stable Diffusion course: answers", subtitle: str = "",
                   format: str = "pdf") -> Path:
    """Build the answers book from ``notebooks_dir`` and write it to ``out``; returns the file written.

    :param format: ``"pdf"``; ``"html"`` (``out`` with the suffix ``.html``); ``"auto"``: the PDF, or the HTML
        page when xelatex or pandoc is missing (the caller tells the user: :func:`pdf_toolchain_problem`)
    :raises ExportError: no executed notebooks, an unknown format, or the PDF asked for without its toolchain
    """
    if format not in FORMATS:
        raise ExportError(f"unknown format {format!r}; valid: {', '.join(FORMATS)}")
    book = answers_book(executed_notebooks(notebooks_dir), title=title, derivations=derivations, subtitle=subtitle)
    if format == "html" or (format == "auto" and pdf_toolchain_problem()):
        return to_html(book, Path(out).with_suffix(".html"))
    return to_pdf(book, out)
