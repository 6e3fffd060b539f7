"""How long grading a class takes: a benchmark, not a test.

::

    python -m coursekit bench-grading --students 30 --out /tmp/bench-grading --jobs 2

Builds ``--students`` submissions from the student edition (every question answered with a line
of text, every exercise solved with the reference solution, so that every check runs in full),
grades them with ``grade`` as an instructor would (quick mode, sandbox, exercise checks, one PDF
per student), and prints the wall time, the time per student, and the time 30 students would
take at that rate.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import nbformat

from . import REPO, numbered_notebooks
from . import questions as Q
from .release import is_exercise_cell, student_notebook


def make_submissions(folder: Path, students: int, notebooks_dir: Path = REPO / "notebooks") -> None:
    """``students`` folders of answered student notebooks in ``folder`` (which must not exist)."""
    folder.mkdir(parents=True)
    sources = numbered_notebooks(notebooks_dir)
    for k in range(students):
        target = folder / f"student{k + 1:02d}"
        target.mkdir()
        for path in sources:
            reference = nbformat.read(path, as_version=4)
            nb = student_notebook(reference)
            for q in Q.find_questions(nb):
                nb.cells[q.answer_index].source = (f"{Q.BEGIN_SOLUTION}\n# Student {k + 1}: my answer to {q.label}.\n"
                                                   f"{Q.END_SOLUTION}")
            for mine, theirs in zip(nb.cells, reference.cells):
                if is_exercise_cell(mine):
                    mine.source = theirs.source
            nbformat.write(nb, target / path.name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m coursekit bench-grading", description=__doc__.splitlines()[0])
    parser.add_argument("--students", type=int, default=30)
    parser.add_argument("--out", type=Path, required=True, help="a new folder for the submissions and the grading")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--no-pdf", action="store_true")
    args = parser.parse_args(argv)
    if args.students < 1:
        parser.error("--students must be at least 1")
    if args.out.exists():
        parser.error(f"--out {args.out} exists; the benchmark writes into a new folder")
    from .grade import grade

    make_submissions(args.out / "submissions", args.students)
    start = time.perf_counter()
    results, sandbox = grade(args.out / "submissions", args.out / "grading", jobs=args.jobs, pdf=not args.no_pdf,
                             progress=True)
    wall = time.perf_counter() - start
    ok = sum(r.status == "ok" for r in results)
    per_student = wall / args.students
    summary = {"students": args.students, "jobs": args.jobs, "pdf": not args.no_pdf, "wall_s": round(wall, 1),
               "per_student_s": round(per_student, 1), "runs_ok": ok, "runs": len(results),
               "notebook_run_s": {name: round(sum(r.wall_s for r in results if r.notebook == name) / args.students, 1)
                                  for name in sorted({r.notebook for r in results})},
               "thirty_students_min": round(30 * per_student / 60, 1), "sandbox": sandbox.description}
    (args.out / "bench.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary, indent=1))
    return 0 if ok == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
