"""Submissions as they really arrive, turned into one folder per student with the course's file names.

Recognised, in any mix:

* a folder per student, notebooks anywhere inside it (nested folders are searched);
* a ZIP per student (``ada.zip``), unpacked with limits (no links, no paths out of the archive,
  at most :data:`MAX_ZIP_BYTES` unpacked);
* the flat bulk downloads of learning platforms, one folder of files prefixed with the student:
  Moodle (``Ada Lovelace_123456_assignsubmission_file_01_forward_diffusion.ipynb``), Canvas
  (``lovelaceada_12345_67890_01_forward_diffusion.ipynb``, ``..._LATE_...``) or plainly
  ``ada_01_forward_diffusion.ipynb``; a prefixed ZIP is unpacked for that student;
* browser renames of a download (``01_forward_diffusion (1).ipynb``, ``01_forward_diffusion-2.ipynb``).

Everything else is a *shape problem* naming the file (a stray file, two copies of one notebook,
a notebook name the course does not have), reported beside the grades; a student's PDF
(derivations) is kept with their results but not graded.
"""

from __future__ import annotations

import json
import re
import shutil
import stat
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

MAX_ZIP_BYTES = 500 * 2**20
MAX_ZIP_FILES = 2000
MARKER = ".coursekit-submissions"
RENAMED = re.compile(r"^(?P<stem>.+?)(?:\s*\(\d+\)|-\d+|_\d+)?$")  # "name (1)", "name-2", "name_3"
MOODLE = re.compile(r"^(?P<student>.+?)_\d+_assignsubmission_(?:file|onlinetext)_?$")
CANVAS = re.compile(r"^(?P<student>.+?)(?:_LATE)?_(?P<user>\d+)_\d+(?:_)?$")


@dataclass
class Collected:
    students: dict[str, Path] = field(default_factory=dict)   # student -> normalised folder
    problems: list[str] = field(default_factory=list)         # shape problems, each naming a file
    kept: list[str] = field(default_factory=list)             # files kept but not graded (PDFs)


def course_name(file_name: str, course: list[str]) -> str | None:
    """The course notebook a file is (``01_forward_diffusion (1).ipynb`` -> ``01_forward_diffusion.ipynb``)."""
    if not file_name.lower().endswith(".ipynb"):
        return None
    stem = file_name[: -len(".ipynb")].strip()
    stems = {c[: -len(".ipynb")]: c for c in course}
    if stem in stems:
        return stems[stem]
    match = RENAMED.match(stem)
    return stems.get(match.group("stem").strip()) if match else None


def split_prefixed(file_name: str, course: list[str]) -> tuple[str, str] | None:
    """(student, course notebook) of a bulk-download file name, or None."""
    for notebook in sorted(course, key=len, reverse=True):
        stem = notebook[: -len(".ipynb")]
        index = file_name.find(stem)
        if index <= 0 or course_name(file_name[index:], course) != notebook:
            continue
        prefix = file_name[:index].rstrip("_- ")
        for pattern in (MOODLE, CANVAS):
            match = pattern.match(prefix + "_") or pattern.match(prefix)
            if match:
                student = match.group("student")
                return (f"{student}_{match.group('user')}" if pattern is CANVAS else student).strip(), notebook
        return prefix.strip(), notebook
    return None


def student_of_archive(file_name: str) -> str:
    """The student a ZIP belongs to: a platform prefix if there is one, else the file's stem."""
    stem = file_name[: -len(".zip")]
    for pattern in (MOODLE, CANVAS):
        match = re.match(pattern.pattern.replace("$", ""), stem + "_")
        if match:
            return match.group("student").strip()
    return stem.strip()


def safe_unzip(archive: Path, target: Path) -> list[str]:
    """Unpack ``archive`` into ``target``; returns problems (members refused). Links, absolute paths, ``..``
    and archives unpacking to more than MAX_ZIP_BYTES or MAX_ZIP_FILES files are refused."""
    problems = []
    try:
        with zipfile.ZipFile(archive) as z:
            members = z.infolist()
            if len(members) > MAX_ZIP_FILES or sum(m.file_size for m in members) > MAX_ZIP_BYTES:
                return [f"{archive.name}: the archive unpacks to more than {MAX_ZIP_FILES} files or "
                        f"{MAX_ZIP_BYTES // 2**20} MB; not unpacked"]
            for m in members:
                name = m.filename
                if stat.S_ISLNK(m.external_attr >> 16):
                    problems.append(f"{archive.name}: {name} is a link; skipped")
                    continue
                parts = Path(name).parts
                if name.startswith("/") or ".." in parts or (parts and ":" in parts[0]):
                    problems.append(f"{archive.name}: {name} points outside the archive; skipped")
                    continue
                if m.is_dir() or "__MACOSX" in parts:
                    continue
                destination = target / name
                destination.parent.mkdir(parents=True, exist_ok=True)
                with z.open(m) as source, destination.open("wb") as out:
                    shutil.copyfileobj(source, out)
    except (zipfile.BadZipFile, OSError, RuntimeError) as err:  # corrupt, encrypted, truncated
        problems.append(f"{archive.name}: not a readable ZIP ({err}); not unpacked")
    return problems


def _normalise(folder: Path, student: str, course: list[str], result: Collected) -> None:
    """Inside one student's staged folder: unpack ZIPs, find every notebook of the course anywhere (browser
    renames too) and put the newest copy of each at the top under its course name."""
    for i, archive in enumerate(sorted(p for p in folder.rglob("*.zip") if not p.is_symlink())):
        result.problems += [f"{student}: {p}" for p in safe_unzip(archive, folder / f".unpacked-{i}")]
        archive.unlink()
    found: dict[str, list[Path]] = {}
    for path in sorted(folder.rglob("*.ipynb")):
        if path.is_symlink() or ".ipynb_checkpoints" in path.parts or "__MACOSX" in path.parts:
            continue
        notebook = course_name(path.name, course)
        if notebook:
            found.setdefault(notebook, []).append(path)
        else:
            result.problems.append(f"{student}: {path.relative_to(folder)} is not a notebook of this course "
                                   f"(expected one of {', '.join(course)})")
    for notebook, paths in sorted(found.items()):
        exact = folder / notebook
        chosen = max(paths, key=lambda p: (p.stat().st_mtime, p == exact, str(p)))
        if len(paths) > 1:
            result.problems.append(f"{student}: {len(paths)} files for {notebook} ("
                                   + ", ".join(str(p.relative_to(folder)) for p in paths)
                                   + f"); graded the newest, {chosen.relative_to(folder)}")
        if chosen != exact:
            if exact.exists():
                exact.rename(exact.with_name(exact.name + ".older"))
            shutil.copyfile(chosen, exact)
    for pdf in sorted(folder.rglob("*.pdf")):
        result.kept.append(f"{student}: {pdf.relative_to(folder)} (kept, not graded)")


def _student_folder(staging: Path, student: str) -> Path:
    name = student.replace("/", "_").strip() or "unnamed"
    return staging / name


def collect(submissions: Path, course: list[str], staging: Path) -> Collected:
    """Normalise ``submissions`` into ``staging/STUDENT/`` (their files, the course notebooks at the top under
    their course names); ``staging`` must be new or an earlier one of ours. The submissions are only read."""
    if staging.exists():
        if not (staging / MARKER).is_file():
            raise ValueError(f"{staging} exists and was not written by grade; move it away first")
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    (staging / MARKER).write_text(json.dumps({"written_by": "python -m coursekit grade", "from": str(submissions)}))
    result = Collected()
    students: set[str] = set()
    for entry in sorted(submissions.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_symlink():
            result.problems.append(f"{entry.name}: a symbolic link; submit the files themselves")
        elif entry.is_dir():
            # the whole folder (links copied as links, so the grader can refuse them), then normalised
            shutil.copytree(entry, _student_folder(staging, entry.name), symlinks=True)
            students.add(entry.name)
        elif entry.suffix.lower() == ".zip":
            student = student_of_archive(entry.name)
            target = _student_folder(staging, student)
            result.problems += [f"{student}: {p}" for p in safe_unzip(entry, target / f".unpacked-{entry.stem}")]
            students.add(student)
        elif entry.suffix.lower() in (".ipynb", ".pdf"):
            split = split_prefixed(entry.stem + ".ipynb" if entry.suffix.lower() == ".pdf" else entry.name, course)
            if split is None and entry.suffix.lower() == ".pdf" and "_" in entry.stem:
                split = (entry.stem.split("_")[0], "")
            if split is None:
                result.problems.append(f"{entry.name}: a file at the top level without a student's name in front "
                                       "of it; put it in a folder named after the student, or keep the platform's "
                                       "name prefix")
                continue
            # each file in a folder of its own: two copies of one notebook are compared by _normalise
            target = _student_folder(staging, split[0]) / f".flat-{len(result.students) + len(students)}-{entry.stem}"
            target.mkdir(parents=True, exist_ok=True)
            shutil.copy2(entry, target / (split[1] if entry.suffix.lower() == ".ipynb" else entry.name))
            students.add(split[0])
        else:
            result.problems.append(f"{entry.name}: not a student folder, a ZIP, or a notebook or PDF with a student's "
                                   "name in front; not graded")
    for student in sorted(students):
        folder = _student_folder(staging, student)
        folder.mkdir(parents=True, exist_ok=True)
        _normalise(folder, student, course, result)
        result.students[student] = folder
    return result
