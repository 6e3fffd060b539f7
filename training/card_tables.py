"""Print the model card's quality tables (Markdown) from the measurements of `training/ship_run.sh`.

    python training/card_tables.py [checkpoints/metrics] [--ladder-png checkpoints/ladder.png]

Reads the evaluate JSON files the shipment wrote, so that the card's numbers are copied by a program,
not by hand: the final model per sampler and guidance scale with both floors, the goals of the model
card against those numbers, and the epoch ladder.
"""

import argparse
import json
import sys
from pathlib import Path

SAMPLER_NAMES = {"dpmsolver++": "DPM-Solver++(2M)", "ddim": "DDIM (eta 0)", "ddpm": "DDPM"}


def load(metrics: Path, name: str) -> dict | None:
    path = metrics / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def row(cells: list) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def floor_row(name: str, f: dict) -> str:
    return row([name, "", "", f"{f['num_images']:,}", f"{f['fid']:.3f}", f"{f['kid']:.4f}", f"{f['accuracy']:.3f}"])


def result_row(r: dict, best: bool) -> str:
    fid = f"**{r['fid']:.3f}**" if best else f"{r['fid']:.3f}"
    return row([SAMPLER_NAMES.get(r["sampler"], r["sampler"]), r["steps"], f"{r['guidance']:g}", f"{r['num_images']:,}",
                fid, f"{r['kid']:.4f}", f"{r['accuracy']:.3f}"])


def quality_table(metrics: Path) -> tuple[str, dict | None]:
    """The final model's table; returns it and the DPM-Solver++ 20 result of lowest FID."""
    head = [row(["sampler", "steps", "guidance", "images", "FID-FMNIST", "KID", "conditional accuracy"]),
            row(["---"] * 7)]
    lines, best = [], None
    main = load(metrics, "dpmsolver++_20")
    if main:
        lines.append(floor_row("real data (floor)", main["real_floor"]))
        if "autoencoder_floor" in main:
            lines.append(floor_row("autoencoder reconstructions (latent floor)", main["autoencoder_floor"]))
        best = min(main["results"], key=lambda r: r["fid"])
        lines += [result_row(r, r is best) for r in main["results"]]
    for name in ("ddim_50", "dpmsolver++_20_at_ddpm_size", "ddpm_1000"):
        measured = load(metrics, name)
        if measured and name == "dpmsolver++_20_at_ddpm_size":  # the smaller sample gets its own floor
            lines.append(floor_row("real data (floor)", measured["real_floor"]))
        lines += [result_row(r, False) for r in measured["results"]] if measured else []
    return "\n".join(head + lines), best


def goals(metrics: Path, best: dict | None) -> str:
    if best is None:
        return "(no DPM-Solver++ 20 measurement yet)"
    main = load(metrics, "dpmsolver++_20")
    real, ae = main["real_floor"], main.get("autoencoder_floor")
    out = [f"- conditional accuracy at guidance {best['guidance']:g} (lowest FID): {best['accuracy']:.1%} (goal >= 95%)",
           f"- FID-FMNIST {best['fid']:.3f} = {best['fid'] / real['fid']:.2f}x the real-data floor {real['fid']:.3f} "
           f"(goal <= 2x, stretch 1.3x)"]
    if ae:
        out.append(f"- the same FID = {best['fid'] / ae['fid']:.2f}x the autoencoder floor {ae['fid']:.3f}")
    ddpm, dpm = load(metrics, "ddpm_1000"), load(metrics, "dpmsolver++_20_at_ddpm_size")
    if ddpm and dpm:
        a, b = dpm["results"][0], ddpm["results"][0]
        small = dpm["real_floor"]
        out.append(f"- at {a['num_images']:,} images: FID-FMNIST {a['fid']:.3f} = {a['fid'] / small['fid']:.2f}x the "
                   f"real-data floor {small['fid']:.3f} at that size")
        out.append(f"- DPM-Solver++ 20 / DDPM 1000 FID at {a['num_images']:,} images, guidance {a['guidance']:g}: "
                   f"{a['fid']:.3f} / {b['fid']:.3f} = {a['fid'] / b['fid']:.3f} (goal <= 1.10); sampling "
                   f"{a['sampling_seconds']:.0f} s vs {b['sampling_seconds']:.0f} s")
    return "\n".join(out)


LADDER_GUIDANCE = 3.0  # the model card's ladder; other scales are measured beside it


def ladders(metrics: Path) -> dict[float, dict[int, dict]]:
    """``{guidance: {epoch: result}}`` of every measured rung, the final model the last rung of each scale.

    A rung's epoch is read off the snapshot its file measured (``"denoiser": "denoiser_epoch010"``);
    the card's guidance 3 comes first.
    """
    from diffusion_lib.train_state import SNAPSHOT_PATTERN  # the snapshot names the trainer writes: denoiser_epochEEE

    found: dict[float, dict[int, dict]] = {}
    for path in metrics.glob("ladder_*.json"):
        measured = json.loads(path.read_text())
        rung = SNAPSHOT_PATTERN.match(measured["denoiser"])
        if rung is None:
            sys.exit(f"{path} measured {measured['denoiser']!r}, not a ladder snapshot (denoiser_epochEEE); "
                     "measure the rung again with training/ship_run.sh")
        for r in measured["results"]:
            found.setdefault(r["guidance"], {})[int(rung.group(1))] = r
    main = load(metrics, "dpmsolver++_20")
    log = metrics.parent / "train_log.jsonl"
    if main and log.exists():
        # the final model is the last rung: the epoch its training log ends at
        last = json.loads(log.read_text().splitlines()[-1])["epoch"]
        for r in main["results"]:
            if r["guidance"] in found:
                found[r["guidance"]][last] = r
    return {g: dict(sorted(found[g].items())) for g in sorted(found, key=lambda g: (g != LADDER_GUIDANCE, g))}


def ladder_table(metrics: Path) -> str:
    """One block of rows (FID, KID, accuracy) per guidance scale, the epochs as columns."""
    measured = {g: rungs for g, rungs in ladders(metrics).items() if len(rungs) >= 2}
    if not measured:
        return "(the ladder is not measured yet)"
    epochs = sorted({e for rungs in measured.values() for e in rungs})
    lines = [row(["epoch"] + epochs), row(["---"] * (len(epochs) + 1))]
    for g, rungs in measured.items():
        for name, key, digits in (("FID-FMNIST", "fid", 3), ("KID", "kid", 4), ("accuracy", "accuracy", 3)):
            lines.append(row([f"{name}, guidance {g:g}"]
                             + [f"{rungs[e][key]:.{digits}f}" if e in rungs else "" for e in epochs]))
    return "\n".join(lines)


def plot(metrics: Path, path: Path) -> None:
    """ladder.png: FID and accuracy against epochs, a line per guidance scale, with both floors of the
    final model's measurement."""
    from diffusion_lib.plotting import plot_ladder

    main = load(metrics, "dpmsolver++_20")
    plot_ladder(ladders(metrics), main["real_floor"], path, main.get("autoencoder_floor"))
    print(f"wrote {path}")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("metrics", nargs="?", default="checkpoints/metrics", type=Path)
    parser.add_argument("--ladder-png", type=Path, help="also draw the ladder plot there")
    parser.add_argument("--best-guidance", action="store_true",
                        help="print only the DPM-Solver++ 20 guidance scale of lowest FID")
    args = parser.parse_args(argv)
    if not args.metrics.is_dir():
        sys.exit(f"{args.metrics} is not a folder of evaluate JSON files; run training/ship_run.sh first")
    if args.best_guidance:
        _, best = quality_table(args.metrics)
        print(f"{best['guidance']:g}" if best else sys.exit(f"{args.metrics} has no dpmsolver++_20.json yet"))
        return 0
    table, best = quality_table(args.metrics)
    print(table, "", goals(args.metrics, best), "", ladder_table(args.metrics), sep="\n")
    if args.ladder_png:
        plot(args.metrics, args.ladder_png)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
