"""The command line of the denoiser's trainer: ``python -m diffusion_lib train --out DIR --epochs N ...``.

Options map one to one onto :class:`~diffusion_lib.train.TrainConfig`; ``--resume`` takes the
saved run's settings unless an option is given again.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .atomic import CheckpointError
from .data import DATASETS
from .denoiser import AUTOENCODER_SHA256, DENOISER_PREDICTION_TYPES
from .train import TrainConfig, TrainingError, train
from .train_state import STATE


def _parse_value(text: str) -> Any:
    """``32`` -> 32, ``true`` -> True, ``1,2,2`` -> [1, 2, 2], ``[1, 2]`` -> [1, 2], else the string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        if "," in text:
            return [_parse_value(part) for part in text.split(",") if part]
        return text


def _key_values(items: list[str] | None, flag: str) -> dict[str, Any]:
    out = {}
    for item in items or []:
        if "=" not in item:
            raise TrainingError(f"{flag} expects KEY=VALUE (e.g. {flag} base_channels=32), got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip().replace("-", "_")] = _parse_value(value)
    return out


# the settings that shape a run; on the command line, --resume takes each one that is not given from the
# saved run (so that "--out RUN --epochs 100 --resume" continues RUN exactly as it was started)
RUN_SETTINGS = ("batch_size", "lr", "weight_decay", "warmup_steps", "lr_schedule", "ema_decay", "grad_clip",
                "cond_drop_prob", "seed", "limit", "dataset", "snapshot_epochs")


def saved_run_settings(out_dir: Path | str) -> dict[str, Any]:
    """The :data:`RUN_SETTINGS` of the run saved in ``out_dir`` ({} when there is none to read)."""
    meta_file = Path(out_dir) / f"{STATE}.json"
    try:
        saved = json.loads(meta_file.read_text())["train_config"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}  # the trainer says what is wrong with the run folder
    return {name: saved[name] for name in RUN_SETTINGS if name in saved}


def add_train_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the options of ``python -m diffusion_lib train`` to ``parser``.

    The options of :data:`RUN_SETTINGS` default to None here: "not given", filled in by
    :func:`config_from_args` from the saved run (``--resume``) or from :class:`TrainConfig`.
    """
    d = TrainConfig(out_dir="", epochs=1)
    p = parser
    p.add_argument("--out", required=True, help="folder for checkpoints and train_log.jsonl")
    p.add_argument("--epochs", type=int, required=True, help="train until this many epochs are complete")
    p.add_argument("--resume", action="store_true", help="continue the run in --out after its last complete epoch")
    p.add_argument("--overwrite", action="store_true", help="start over even if --out holds a trained run")
    p.add_argument("--batch-size", type=int, help=f"images per step, all processes together ({d.batch_size})")
    p.add_argument("--lr", type=float, help=f"peak learning rate of AdamW ({d.lr})")
    p.add_argument("--weight-decay", type=float, help=f"AdamW weight decay ({d.weight_decay})")
    p.add_argument("--warmup-steps", type=int, help=f"linear learning-rate warm-up steps ({d.warmup_steps})")
    p.add_argument("--lr-schedule", choices=("constant", "cosine"), help=f"after the warm-up ({d.lr_schedule})")
    p.add_argument("--ema-decay", type=float, help=f"EMA decay of the weights ({d.ema_decay})")
    p.add_argument("--grad-clip", type=float, help=f"max gradient norm, 0 = off ({d.grad_clip})")
    p.add_argument("--cond-drop-prob", type=float,
                   help=f"probability of training with the empty prompt, for guidance ({d.cond_drop_prob})")
    p.add_argument("--seed", type=int, help=f"seed of the weights and of every random draw ({d.seed})")
    p.add_argument("--device", default=d.device, help="auto, cpu or cuda")
    p.add_argument("--vae-dir", default=d.vae_dir,
                   help="folder with the frozen autoencoder (vae.safetensors); --resume uses the run's own copy")
    p.add_argument("--limit", type=int, help="use only the first N training images (all)")
    p.add_argument("--dataset", choices=DATASETS, help=f"({d.dataset})")
    p.add_argument("--prediction-type", choices=DENOISER_PREDICTION_TYPES, default=None,
                   help="what the model predicts (default: the model config's, epsilon)")
    p.add_argument("--schedule", default=None, help="noise schedule: scaled_linear, linear, cosine, sigmoid")
    p.add_argument("--zero-terminal-snr", action="store_true", default=None,
                   help="rescale the schedule to zero terminal SNR (use with --prediction-type v_prediction)")
    p.add_argument("--denoiser-config", default=None, help="JSON file with a full denoiser config")
    p.add_argument("--unet", action="append", metavar="KEY=VALUE", help="U-Net setting, e.g. --unet base_channels=32")
    p.add_argument("--prompt", action="append", metavar="KEY=VALUE", help="prompt encoder setting, e.g. depth=1")
    p.add_argument("--snapshot-epochs",
                   help=f"comma-separated epochs that keep an fp16 snapshot, '' for none "
                        f"({','.join(map(str, d.snapshot_epochs))})")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--num-threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    p.add_argument("--compile", action="store_true", help="torch.compile the denoiser")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="channels_last memory order (default: on the CPU only)")
    p.epilog = ("With --resume, every training setting that is not given (learning rate and its schedule, "
                "seed, batch size, ...) is the saved run's, and the saved model is used.")
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The :class:`TrainConfig` for parsed ``add_train_arguments`` options."""
    denoiser = None
    if args.denoiser_config:
        path = Path(args.denoiser_config)
        if not path.is_file():
            raise TrainingError(f"--denoiser-config {path}: no such file")
        try:
            denoiser = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise TrainingError(f"--denoiser-config {path} cannot be read as JSON ({err})") from err
        if not isinstance(denoiser, dict):
            raise TrainingError(f"--denoiser-config {path} must hold a JSON object of settings")
        denoiser.pop(AUTOENCODER_SHA256, None)  # a checkpoint's denoiser.json works as a config too
    given = {name: getattr(args, name) for name in RUN_SETTINGS if getattr(args, name) is not None}
    if "snapshot_epochs" in given:
        given["snapshot_epochs"] = tuple(int(e) for e in str(given["snapshot_epochs"]).split(",") if e.strip())
    defaults = {name: getattr(TrainConfig(out_dir=args.out, epochs=args.epochs), name) for name in RUN_SETTINGS}
    # given > the saved run's (when resuming) > the defaults
    settings = {**defaults, **(saved_run_settings(args.out) if args.resume else {}), **given}
    return TrainConfig(
        out_dir=args.out,
        epochs=args.epochs,
        **settings,
        device=args.device,
        vae_dir=args.vae_dir,
        prediction_type=args.prediction_type,
        schedule=args.schedule,
        rescale_zero_terminal_snr=args.zero_terminal_snr,
        denoiser=denoiser,
        unet=_key_values(args.unet, "--unet"),
        prompt=_key_values(args.prompt, "--prompt"),
        resume=args.resume,
        overwrite=args.overwrite,
        progress=not args.no_progress,
        num_threads=args.num_threads,
        compile=args.compile,
        channels_last=args.channels_last,
    )


def run_from_args(args: argparse.Namespace) -> int:
    """Run ``train`` for parsed options; the exit code: 0 done, 1 error, 130 interrupted (Ctrl-C)."""
    try:
        train(config_from_args(args))
    except KeyboardInterrupt:
        return 130
    except (TrainingError, CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m diffusion_lib.train", description=__doc__.split("\n\n")[0])
    add_train_arguments(parser)
    return run_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
