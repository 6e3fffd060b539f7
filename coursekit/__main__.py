"""The instructor's commands: ``python -m coursekit course | full-mode | export | release | grade | bench-grading``.

::

    python -m coursekit course  [--out output]      every notebook in quick mode, samples, evaluation, answers PDF
    python -m coursekit full-mode [--out output/full]  every notebook with its defaults; results to answers/full_mode
    python -m coursekit export  [--notebooks output/notebooks] [--out answers/answers.pdf] [--format auto]
    python -m coursekit release --out release/ [--zip student-kit.zip] [--overwrite]
    python -m coursekit grade   SUBMISSIONS --out grading/ [--jobs 2] [--timeout 600] [--memory-gb 8] [--scores F]
                                [--disk-gb 2] [--max-processes 64] [--hidden-tests F | --no-hidden-tests]
                                [--no-shared-runs]
    python -m coursekit bench-grading --students 30 --out DIR [--jobs 2]   time grading a class
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from . import REPO



def _course(args) -> int:
    from .course import run_course

    return run_course(args.out, args.checkpoint, args.device, pdf=None if args.no_pdf else args.pdf)


def _full_mode(args) -> int:
    from .course import run_full_mode

    return run_full_mode(args.out, args.checkpoint, args.device)


def _export(args) -> int:
    from .export import DERIVATIONS, ExportError, export_answers, pdf_toolchain_problem

    start = time.perf_counter()
    try:
        path = export_answers(args.notebooks, args.out, derivations=None if args.no_derivations else DERIVATIONS,
                              title=args.title, format=args.format)
    except ExportError as err:
        print(f"export failed: {err}", file=sys.stderr)
        return 1
    if args.format == "auto" and path.suffix == ".html":
        print(f"{pdf_toolchain_problem()}.\nWrote the same content as one HTML page instead: {path} (open it in a "
              "browser; print it to PDF from there if you need one).", file=sys.stderr)
    print(f"wrote {path} ({time.perf_counter() - start:.0f} s)")
    return 0


def _release(args) -> int:
    from .release import ReleaseError, write_release

    if not args.out and not args.zip:
        print("release: give --out FOLDER (the student notebooks) and/or --zip FILE (the whole student kit)",
              file=sys.stderr)
        return 2
    try:
        if args.out:
            files = write_release(args.out, args.notebooks, overwrite=args.overwrite)
            print(f"wrote the student edition ({len(files)} files) to {args.out}; no reference answer survives in it")
        if args.zip:
            from .student_kit import write_zip

            path = write_zip(args.zip, args.notebooks, overwrite=args.overwrite)
            print(f"wrote the student kit {path} ({path.stat().st_size / 2**20:.1f} MB): notebooks, code, checkpoints, "
                  "set-up; no answer, solution or hidden test in it")
    except ReleaseError as err:
        print(f"release failed: {err}", file=sys.stderr)
        return 1
    return 0


def _grade(args) -> int:
    from .grade import grade

    start = time.perf_counter()
    try:
        results, sandbox = grade(args.submissions, args.out, reference_dir=args.reference, notebooks=args.notebook,
                                 jobs=args.jobs, timeout_s=args.timeout, memory_gb=args.memory_gb,
                                 disk_gb=args.disk_gb, max_processes=args.max_processes, pdf=not args.no_pdf,
                                 hidden_tests=None if args.no_hidden_tests else args.hidden_tests, scores=args.scores,
                                 share_runs=not args.no_shared_runs)
    except ValueError as err:  # a bad limit, a missing folder or file, a scores file that cannot be read
        print(f"grade failed: {err}", file=sys.stderr)
        return 1
    ran = sum(r.status == "ok" for r in results)
    print(f"{ran}/{len(results)} notebook runs succeeded in {time.perf_counter() - start:.0f} s; "
          f"report: {Path(args.out) / 'summary.html'}, {Path(args.out) / 'grades.csv'}; gradebook: "
          f"{Path(args.out) / 'gradebook.csv'}; written answers to score: {Path(args.out) / 'review' / 'index.html'}, "
          f"{args.scores or Path(args.out) / 'scores.csv'}")
    if not sandbox.isolated:
        print(sandbox.description, file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m coursekit", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("course", help="the course's main job: notebooks in quick mode, samples, answers PDF")
    p.add_argument("--out", default="output", help="folder for the executed notebooks, samples and evaluation")
    p.add_argument("--checkpoint", default=str(REPO / "checkpoints"))
    p.add_argument("--device", default="auto")
    p.add_argument("--pdf", default=str(REPO / "answers" / "answers.pdf"), help="where the answers PDF goes")
    p.add_argument("--no-pdf", action="store_true", help="skip the answers PDF")
    p.set_defaults(run=_course)

    p = sub.add_parser("full-mode", help="every notebook with its default parameters; keeps the results that the "
                                          "reference answers quote in answers/full_mode/")
    p.add_argument("--out", default="output/full", help="folder for the executed notebooks")
    p.add_argument("--checkpoint", default=str(REPO / "checkpoints"))
    p.add_argument("--device", default="auto")
    p.set_defaults(run=_full_mode)

    p = sub.add_parser("export", help="questions, answers, figures and derivations of executed notebooks -> one PDF")
    p.add_argument("--notebooks", default="output/notebooks", help="folder of executed NN_*.ipynb (./kit course)")
    p.add_argument("--out", default="answers/answers.pdf")
    p.add_argument("--title", default="The Stable Diffusion course: answers")
    p.add_argument("--no-derivations", action="store_true", help="leave out answers/derivations.md")
    p.add_argument("--format", choices=("auto", "pdf", "html"), default="auto",
                   help="auto (default): the PDF, or one HTML page with the same content where xelatex or pandoc "
                        "is missing; pdf: the PDF or an error; html: the HTML page")
    p.set_defaults(run=_export)

    p = sub.add_parser("release", help="the student edition: reference answers replaced, outputs cleared")
    p.add_argument("--out", help="folder for the student edition (the notebooks)")
    p.add_argument("--zip", help="write the whole student kit (notebooks, code, checkpoints, set-up) to this .zip")
    p.add_argument("--notebooks", default=str(REPO / "notebooks"), help="the course notebooks (with answers)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    p.set_defaults(run=_release)

    p = sub.add_parser("grade", help="execute and check a folder of submissions (one subfolder per student)")
    p.add_argument("submissions", help="folder with one subfolder of notebooks per student")
    p.add_argument("--out", required=True, help="folder for grades.csv, summary.html and per-student results")
    p.add_argument("--jobs", type=int, default=2, help="notebooks executed at the same time")
    p.add_argument("--timeout", type=float, default=600, help="seconds per notebook (and per cell) before it is killed")
    p.add_argument("--memory-gb", type=float, default=8, help="address-space limit per process, GiB")
    p.add_argument("--disk-gb", type=float, default=2,
                   help="what one run may write (its folder; /tmp, which is memory; any one file), GiB")
    p.add_argument("--max-processes", type=int, default=64, help="processes one run may have at once")
    p.add_argument("--notebook", action="append", help="grade only this notebook (e.g. 01_forward_diffusion.ipynb); "
                                                       "repeatable")
    p.add_argument("--reference", default=str(REPO / "notebooks"), help="the reference notebooks (with answers)")
    p.add_argument("--no-pdf", action="store_true", help="skip the per-student answers PDF")
    p.add_argument("--scores", default=None, help="your scores of the written answers (CSV: student, question, "
                                                  "points_possible, points, comment); default OUT/scores.csv, written "
                                                  "as a template when missing and never replaced")
    p.add_argument("--hidden-tests", default=str(REPO / "grading" / "hidden_tests.py"),
                   help="the hidden cases of the code exercises")
    p.add_argument("--no-hidden-tests", action="store_true", help="score the visible exercise checks only")
    p.add_argument("--no-shared-runs", action="store_true",
                   help="train every student's runs (default: a training notebook runs once as the reference, and "
                        "students who kept its default settings reuse its runs)")
    p.set_defaults(run=_grade)

    sub.add_parser("bench-grading", help="time grading a class: N answered submissions through grade "
                                         "(python -m coursekit bench-grading --help)")

    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench-grading"]:  # its own options (coursekit/bench_grading.py)
        from .bench_grading import main as bench_grading

        return bench_grading(argv[1:])
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
