"""Command line: ``python -m diffusion_lib COMMAND ...`` (``--help`` on each command).

    train-vae         train the autoencoder (pixels <-> 4x8x8 latents)
    train-classifier  train the evaluator's Fashion-MNIST classifier
    train             train the denoiser (prompt encoder + U-Net) on cached latents
    sample            generate images from a checkpoint folder (PNG grid or NPZ)
    evaluate          FID-FMNIST, KID and conditional accuracy, beside the real-data floor
    bench             training and sampling speed, optionally beside diffusers' U-Net
    checksums         record the SHA-256 of a checkpoint folder's files in SHA256SUMS
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .atomic import CheckpointError

SMALL_SAMPLE = 1000  # evaluate warns below this many images


def _add_common_sampling(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", default="checkpoints", help="folder with vae + denoiser (default: checkpoints)")
    p.add_argument("--denoiser", default="denoiser", help="denoiser file name, e.g. denoiser_epoch010 for a ladder rung")
    p.add_argument("--steps", type=int, default=20, help="sampling steps")
    p.add_argument("--sampler", default="dpmsolver++", help="ddpm, ddim or dpmsolver++")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM stochasticity (0 = deterministic)")
    p.add_argument("--spacing", default="trailing", help="timestep spacing: leading, trailing or linspace")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto (CUDA, else MPS, else CPU), cpu, cuda, cuda:N or mps")
    p.add_argument("--batch-size", type=int, default=500, help="images per sampler call")
    p.add_argument("--no-progress", action="store_true")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m diffusion_lib", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n")[1])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train-vae", help="train the autoencoder")
    p.add_argument("--out", required=True)
    p.add_argument("--epochs", type=int, required=True)
    p.add_argument("--batch-size", type=int, default=16, help="small batches train this autoencoder best on a CPU")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--limit", type=int, default=None, help="use only the first N training images")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an autoencoder already in --out (a denoiser trained on it will then refuse to load)")
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("train-classifier", help="train the evaluator's classifier")
    p.add_argument("--out", required=True)
    p.add_argument("--epochs", type=int, required=True)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--overwrite", action="store_true", help="replace a classifier already in --out")
    p.add_argument("--no-progress", action="store_true")

    from .train_cli import add_train_arguments

    add_train_arguments(sub.add_parser("train", help="train the denoiser"))

    p = sub.add_parser("sample", help="generate images")
    _add_common_sampling(p)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--prompt", action="append", help="a prompt such as 'a photo of a sneaker' ('' = unconditional); repeatable")
    what.add_argument("--all-classes", action="store_true", help="N images for each of the 10 classes, in class order")
    p.add_argument("--num-images", type=int, default=8, help="images per prompt (per class with --all-classes)")
    p.add_argument("--guidance", type=float, default=3.0, help="classifier-free guidance scale (0 = unconditional)")
    p.add_argument("--out", required=True, help="FILE.png (a grid, one row per prompt) or FILE.npz (images, labels)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--max-hours", type=float, default=1.0,
                   help="refuse a job estimated to take longer than this (default 1 hour)")

    p = sub.add_parser("evaluate", help="measure sample quality against the test set")
    _add_common_sampling(p)
    p.add_argument("--num-images", type=int, default=1000, help="generated images in all, split evenly over the 10 classes")
    p.add_argument("--guidance", type=float, nargs="+", default=[3.0], help="one or more guidance scales")
    p.add_argument("--evaluator", default=None, help="folder with classifier.safetensors (default: --checkpoint, else checkpoints)")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    p.add_argument("--overwrite", action="store_true", help="replace the --json file if it exists")
    p.add_argument("--autoencoder-floor", action="store_true",
                   help="also measure the autoencoder's reconstructions of the real-data images (the floor latent "
                        "diffusion cannot beat)")

    p = sub.add_parser("bench", help="measure training and sampling speed")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps")
    p.add_argument("--vs-diffusers", action="store_true", help="also time diffusers' UNet2DConditionModel of the same shape")
    p.add_argument("--iters", type=int, default=10, help="timed iterations per measurement (median reported)")
    p.add_argument("--rounds", type=int, default=11,
                   help="with --vs-diffusers: interleaved rounds of 3 steps of each model (median and range reported)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="channels_last memory order for training (default: as the trainer, on the CPU only)")
    p.add_argument("--options", action="store_true",
                   help="also time our training step with each CPU option alone and all together")
    p.add_argument("--compile", action="store_true", help="torch.compile the denoisers")
    p.add_argument("--tiny", action="store_true", help="tiny sizes: checks that everything runs, in seconds")

    p = sub.add_parser("checksums", help="record SHA-256 sums of a checkpoint folder")
    p.add_argument("directory")

    return parser


# ------------------------------------------------------------------------ commands
def cmd_train_vae(args) -> int:
    from .device import resolve_device
    from .train_vae import train_vae

    metrics = train_vae(args.out, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                        device=resolve_device(args.device), limit=args.limit, progress=not args.no_progress,
                        overwrite=args.overwrite)
    print(json.dumps(metrics, indent=2, default=str))
    return 0


def cmd_train_classifier(args) -> int:
    from .device import resolve_device
    from .train_classifier import train_classifier

    metrics = train_classifier(args.out, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                               device=str(resolve_device(args.device)), limit=args.limit, progress=not args.no_progress,
                               overwrite=args.overwrite)
    print(json.dumps(metrics, indent=2, default=str))
    return 0


def cmd_train(args) -> int:
    from .train_cli import run_from_args

    return run_from_args(args)


def check_sampling_args(args) -> None:
    """The sampling options, checked (with the names the user typed) before anything is loaded."""
    from . import checks

    checks.integer("--steps", args.steps, 1)
    checks.integer("--num-images", args.num_images, 1)
    checks.integer("--batch-size", args.batch_size, 1)
    checks.seed("--seed", args.seed)
    checks.eta("--eta", args.eta)
    for g in args.guidance if isinstance(args.guidance, list) else [args.guidance]:
        checks.guidance_scale("--guidance", g)


def check_json_output(path: Path, overwrite: bool) -> None:
    """An output file that can be written and replaces nothing unasked, checked before the work."""
    from .sampling_job import check_writable

    if path.suffix.lower() != ".json":
        raise ValueError(f"--json must name a .json file, got {path.name!r}")
    check_writable(path, overwrite, "--json")


def cmd_sample(args) -> int:
    from .pipeline import Pipeline
    from .sampling_job import check_output, check_plan, plan_job, run_job

    out = check_output(Path(args.out), args.overwrite)
    check_sampling_args(args)
    if not args.max_hours > 0 or args.max_hours == float("inf"):  # NaN fails the first test
        raise ValueError(f"--max-hours must be a finite number > 0, got {args.max_hours}")
    pipe = Pipeline.from_pretrained(args.checkpoint, args.device, args.denoiser)
    prompts = list(pipe.class_names) if args.all_classes else args.prompt
    pipe.check_request(prompts, num_images=args.num_images, num_inference_steps=args.steps, sampler=args.sampler,
                       guidance_scale=args.guidance, eta=args.eta, timestep_spacing=args.spacing)
    png = out.suffix.lower() == ".png"
    plan = plan_job(pipe, len(prompts) * args.num_images, args.batch_size, args.steps, args.sampler,
                    args.guidance not in (0, 1), png)
    check_plan(plan, args.max_hours, png)
    if plan.batches > 1 and not args.no_progress:
        print(plan.describe(), file=sys.stderr)
    written = run_job(pipe, prompts, args.num_images, out, batch_size=args.batch_size, progress=not args.no_progress,
                      num_inference_steps=args.steps, guidance_scale=args.guidance, sampler=args.sampler,
                      seed=args.seed, eta=args.eta, timestep_spacing=args.spacing)
    print(f"wrote {written} images to {out}")
    return 0


def cmd_evaluate(args) -> int:
    from .data import TRAIN_IMAGES
    from .evaluator import Evaluator, format_table, run_evaluation
    from .pipeline import Pipeline

    check_sampling_args(args)
    if args.json:
        check_json_output(Path(args.json), args.overwrite)
    pipe = Pipeline.from_pretrained(args.checkpoint, args.device, args.denoiser)
    ev_dir = args.evaluator or (args.checkpoint if (Path(args.checkpoint) / "classifier.safetensors").exists() else "checkpoints")
    evaluator = Evaluator.from_pretrained(ev_dir, device=str(pipe.device))
    rows = [run_evaluation(pipe, evaluator, args.num_images, g, args.steps, args.sampler, args.seed, args.eta,
                           args.spacing, not args.no_progress, args.batch_size) for g in args.guidance]
    # the floor at the same number of images: FID is biased upwards for small samples
    n = min(rows[0]["num_images"], TRAIN_IMAGES)
    if n < SMALL_SAMPLE:
        print(f"note: {n} images are too few for a stable FID or KID (each is biased and noisy below ~"
              f"{SMALL_SAMPLE}); compare only with the floor measured at the same number, as below.", file=sys.stderr)
    floor = evaluator.real_floor(n=n)
    # the same real images through the autoencoder: what a perfect latent model would give
    autoencoder_floor = evaluator.autoencoder_floor(pipe.vae, n=n) if args.autoencoder_floor else None
    print(format_table(rows, floor, autoencoder_floor))
    if args.json:
        from .atomic import atomic_write_text

        result = {"checkpoint": args.checkpoint, "denoiser": args.denoiser, "real_floor": floor, "results": rows}
        if autoencoder_floor:
            result["autoencoder_floor"] = autoencoder_floor
        atomic_write_text(args.json, json.dumps(result, indent=2) + "\n")
    return 0


def cmd_bench(args) -> int:
    from .bench import environment, format_rows, run_bench

    if args.iters < 1:
        raise ValueError(f"--iters must be an integer >= 1, got {args.iters}")
    if args.tiny and args.iters != 10:
        print(f"note: --tiny times 2 iterations; --iters {args.iters} is ignored", file=sys.stderr)
    if args.rounds < 1:
        raise ValueError(f"--rounds must be an integer >= 1, got {args.rounds}")
    rows, comparison = run_bench(args.device, args.vs_diffusers, args.tiny, args.iters, args.threads,
                                 args.channels_last, args.compile, args.options, args.rounds)
    print(environment(args.device, args.channels_last, args.compile))
    print(format_rows(rows, comparison, args.device))
    return 0


def cmd_checksums(args) -> int:
    from .atomic import update_checksums

    directory = Path(args.directory)
    if not directory.is_dir():
        raise ValueError(f"{directory} is not a folder; give the checkpoint folder whose files to record")
    names = sorted(p.name for p in directory.iterdir() if p.suffix in (".safetensors", ".json"))
    if not names:
        raise ValueError(f"{directory} holds no .safetensors or .json files")
    update_checksums(directory, names)
    print(f"recorded {len(names)} files in {directory / 'SHA256SUMS'}")
    return 0


COMMANDS = {
    "train-vae": cmd_train_vae,
    "train-classifier": cmd_train_classifier,
    "train": cmd_train,
    "sample": cmd_sample,
    "evaluate": cmd_evaluate,
    "bench": cmd_bench,
    "checksums": cmd_checksums,
}


def main(argv: list[str] | None = None) -> int:
    from .data import DataNotFoundError

    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (CheckpointError, DataNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
