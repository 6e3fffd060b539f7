"""``python -m diffusion_lib sample``: a sampling job of any size, checked before it starts.

Before any image is drawn the job

1. checks the output path: a supported extension (``.png`` grid, ``.npz`` arrays), not a
   folder, a folder that exists or can be created, writable, and not an existing file
   unless ``overwrite``;
2. estimates its time (one guided U-Net pass on one batch is timed, then multiplied by
   the batches and steps) and its memory, and refuses a job over ``max_hours`` or a PNG
   grid too large to be a picture, saying how to proceed.

Then it samples batch after batch under ONE progress bar over the whole job. An
``.npz`` is written as it goes (the ``images`` array streamed into the archive), so
memory stays that of one batch whatever the number of images; the file appears under
its name only when complete (written beside it, then renamed).
"""

from __future__ import annotations

import io
import os
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .atomic import atomic_write_bytes
from .device import synchronize

SUFFIXES = (".png", ".npz")
MAX_PNG_IMAGES = 10_000  # a 100 x 100 grid of 28-pixel images: beyond that a picture shows nothing
IMAGE_BYTES = 28 * 28  # uint8 per image in the output
# peak memory per image of a batch: sampling with guidance, then decoding (measured on the CPU: a batch of
# 500 raised the peak resident memory by 345 MB)
BATCH_BYTES_PER_IMAGE = 720 * 2**10


class JobError(ValueError):
    """A sampling job that cannot or should not run as asked."""


def check_writable(out: Path, overwrite: bool, option: str = "--out") -> Path:
    """Refuse a file path that is a folder, exists (unless ``overwrite``) or cannot be created."""
    if out.is_dir():
        raise JobError(f"{option} {out} is a folder; give a file name such as {out / ('results' + out.suffix)}")
    if out.exists() and not overwrite:
        raise JobError(f"{option} {out} already exists; pass --overwrite to replace it, or choose another name")
    parent = out.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise JobError(f"{option} {out} cannot be created: {parent} is a file, not a folder")
    # a real write, not a permission check: root passes every check, yet cannot write in /proc
    try:
        fd, probe = tempfile.mkstemp(dir=parent, prefix=".write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise JobError(f"{option} {out} cannot be written: {parent} does not accept new files ({err.strerror})") \
            from None
    return out


def check_output(out: Path, overwrite: bool) -> Path:
    """Refuse an output path that cannot be written, before any work (see the module docstring)."""
    if out.suffix.lower() not in SUFFIXES:
        raise JobError(f"--out must end in .png (a grid) or .npz (arrays), got {out.name!r}")
    return check_writable(out, overwrite)


@dataclass
class Plan:
    """What a job will cost, estimated before it starts."""

    images: int
    batches: int
    seconds: float
    peak_bytes: int
    output_bytes: int

    def describe(self) -> str:
        return (f"{self.images:,} images in {self.batches:,} batches: about {_duration(self.seconds)}, "
                f"{self.peak_bytes / 2**30:.1f} GiB of memory at most, an output of about "
                f"{self.output_bytes / 2**20:,.0f} MiB")


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def plan_job(pipe, total: int, batch_size: int, steps: int, sampler: str, guided: bool, png: bool) -> Plan:
    """Time one U-Net pass on one batch and scale it to the job (DDPM, DDIM and DPM-Solver++ all take
    one pass per step; guidance doubles the batch of each pass)."""
    b = min(total, batch_size)
    shape = pipe.latent_shape(2 * b if guided else b)
    x = torch.zeros(shape, device=pipe.device)
    t = torch.full((shape[0],), pipe.schedule.num_train_timesteps // 2, dtype=torch.long, device=pipe.device)
    table = pipe.denoiser.encode_prompts(["", pipe.class_names[0]])
    rows = torch.zeros(shape[0], dtype=torch.long, device=pipe.device)
    with torch.no_grad():
        pipe.denoiser(x, t, table, rows)  # warm-up
        start = time.perf_counter()
        pipe.denoiser(x, t, table, rows)
        synchronize(pipe.device)
        per_pass = time.perf_counter() - start
    batches = -(-total // batch_size)
    seconds = per_pass * steps * (total / b)
    held = total * IMAGE_BYTES * (2 if png else 1)  # a PNG needs all images and the grid at once
    peak = b * BATCH_BYTES_PER_IMAGE + held
    return Plan(total, batches, seconds, peak, total * IMAGE_BYTES // (1 if png else 3))


def check_plan(plan: Plan, max_hours: float, png: bool) -> None:
    """Refuse a job past ``max_hours`` or a PNG too large to look at, before it starts."""
    if png and plan.images > MAX_PNG_IMAGES:
        raise JobError(f"a PNG grid of {plan.images:,} images is too large to look at (at most {MAX_PNG_IMAGES:,}); "
                       "write .npz for large jobs")
    if plan.seconds > max_hours * 3600:
        raise JobError(f"this job would take {_duration(plan.seconds)} ({plan.describe()}), more than "
                       f"--max-hours {max_hours:g}. Ask for fewer images or steps, or pass a larger --max-hours "
                       "if you mean it.")


class NpzStream:
    """An ``.npz`` with ``images`` (uint8, N x 28 x 28) and ``labels`` (int64, N), images written batch by batch.

    ``numpy.load`` reads it as it reads ``np.savez_compressed``'s files.
    """

    def __init__(self, path: Path, total: int):
        self.path, self.total, self.count = path, total, 0
        self.tmp = path.with_name(f".{path.name}.partial")
        self.zip = zipfile.ZipFile(self.tmp, "w", compression=zipfile.ZIP_DEFLATED)
        self.member = self.zip.open("images.npy", "w", force_zip64=True)
        header = {"descr": "|u1", "fortran_order": False, "shape": (total, 28, 28)}
        np.lib.format.write_array_header_2_0(self.member, header)
        self.labels: list[np.ndarray] = []

    def write(self, images: np.ndarray, labels: np.ndarray) -> None:
        self.member.write(np.ascontiguousarray(images, dtype=np.uint8).tobytes())
        self.labels.append(labels.astype(np.int64))
        self.count += len(images)

    def close(self) -> None:
        self.member.close()
        buffer = io.BytesIO()
        np.lib.format.write_array(buffer, np.concatenate(self.labels))
        self.zip.writestr("labels.npy", buffer.getvalue())
        self.zip.close()
        if self.count != self.total:
            raise RuntimeError(f"wrote {self.count} images, expected {self.total}")
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        try:
            self.zip.close()
        except Exception:  # the archive is being thrown away; nothing to save
            pass
        self.tmp.unlink(missing_ok=True)


def run_job(pipe, prompts: list[str], num_images: int, out: Path, *, batch_size: int, progress: bool,
            **sampling) -> int:
    """Sample ``num_images`` per prompt in batches and write them to ``out``; returns the number written.

    The noise is drawn from one generator in the same order as one ``pipe(prompts, num_images, ...)``
    call, so the images are those of that call, whatever the batch size of the writing.
    """
    from tqdm.auto import tqdm

    all_prompts = [p for p in prompts for _ in range(num_images)]
    total = len(all_prompts)
    generator = torch.Generator().manual_seed(sampling.pop("seed"))
    png = out.suffix.lower() == ".png"
    out.parent.mkdir(parents=True, exist_ok=True)
    stream = None if png else NpzStream(out, total)
    kept = []
    batches = range(0, total, batch_size)
    # one bar for the whole job; a job of one batch shows the sampler's steps instead
    bar = tqdm(total=total, unit="img", desc="sample", disable=not progress or len(batches) == 1)
    try:
        for start in batches:
            chunk = all_prompts[start : start + batch_size]
            result = pipe(chunk, num_images=1, generator=generator, batch_size=batch_size,
                          progress=progress and len(batches) == 1, **sampling)
            if png:
                kept.append(result.images)
            else:
                stream.write(result.images.numpy(), result.labels.numpy())
            bar.update(len(chunk))
        if png:
            from .plotting import encode_png, image_grid

            atomic_write_bytes(out, encode_png(image_grid(torch.cat(kept), nrow=num_images, upscale=2)))
        else:
            stream.close()
    except BaseException:
        if stream is not None:
            stream.abort()
        raise
    finally:
        bar.close()
    return total
