"""The denoiser trainer: exact resume, NaN stop, Ctrl-C, files, snapshots, torchrun.

Every run here is tiny (a U-Net of ~60k parameters, 128 images, batch 32) on a
random, untrained autoencoder: the trainer's bookkeeping is under test, not
the quality of the model.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from diffusion_lib import train as train_module
from diffusion_lib import train_cli
from diffusion_lib.autoencoder import AutoencoderConfig, AutoencoderKL, load_autoencoder
from diffusion_lib.atomic import read_checksums
from diffusion_lib.checkpoint import load_component, save_component, verify_file
from diffusion_lib.denoiser import Denoiser, load_denoiser
from diffusion_lib.distributed import shard
from diffusion_lib.train import EMA, TrainConfig, TrainingError, build_denoiser_config, learning_rate, steps_per_epoch, train
from diffusion_lib.train_cli import add_train_arguments, config_from_args

import helpers

REPO = Path(__file__).resolve().parents[1]
# with dropout, so that exact resume covers the dropout layers' random masks (torch's global RNG)
TINY_UNET = {**helpers.TINY_UNET, "dropout": 0.1}


def tiny(out_dir: Path, vae_dir: Path, **overrides) -> TrainConfig:
    settings = dict(epochs=2, cond_drop_prob=0.25, unet=dict(TINY_UNET), snapshot_epochs=(1, 2, 5))
    return helpers.tiny_run(out_dir, vae_dir, **{**settings, **overrides})


@pytest.fixture(scope="module")
def two_epochs(vae_dir, tmp_path_factory) -> tuple[Path, list[dict]]:
    """An uninterrupted 2-epoch run: the reference every resumed run must reproduce."""
    out = tmp_path_factory.mktemp("two_epochs")
    return out, train(tiny(out, vae_dir, epochs=2))


@pytest.fixture(scope="module")
def one_epoch(vae_dir, tmp_path_factory) -> Path:
    """The same run stopped after epoch 1 (copy it before changing it)."""
    out = tmp_path_factory.mktemp("one_epoch")
    train(tiny(out, vae_dir, epochs=1))
    return out


def copy_run(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(src, dst)
    return dst


def file_bytes(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


def assert_same_state(a: Path, b: Path) -> None:
    """Bitwise equal raw weights, EMA weights, optimizer moments and RNG states."""
    sa, sb = load_file(a / "train_state.safetensors"), load_file(b / "train_state.safetensors")
    assert sorted(sa) == sorted(sb)
    assert any(k.startswith("ema.") for k in sa) and any(k.startswith("optimizer.") for k in sa)
    for key in sa:
        assert torch.equal(sa[key], sb[key]), f"{key} differs"
    da, db = load_file(a / "denoiser.safetensors"), load_file(b / "denoiser.safetensors")
    assert sorted(da) == sorted(db) and all(torch.equal(da[k], db[k]) for k in da)


# ------------------------------------------------------------------------------------ pieces
def test_learning_rate_warms_up_linearly_then_stays_or_decays():
    config = TrainConfig(out_dir="x", epochs=1, lr=1e-3, warmup_steps=4)
    assert [learning_rate(config, k, 100) for k in range(5)] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3])
    assert learning_rate(config, 99, 100) == 1e-3
    cosine = TrainConfig(out_dir="x", epochs=1, lr=1e-3, warmup_steps=4, lr_schedule="cosine")
    assert learning_rate(cosine, 4, 104) == pytest.approx(1e-3)
    assert learning_rate(cosine, 54, 104) == pytest.approx(0.5e-3)  # half way: cos(pi/2) = 0
    assert learning_rate(cosine, 104, 104) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("n, world", [(32, 1), (32, 2), (7, 2), (5, 3), (64, 4)])
def test_shards_cover_the_batch_disjointly(n, world):
    covered = [i for r in range(world) for i in range(n)[shard(n, r, world)]]
    assert covered == list(range(n))
    sizes = [len(range(n)[shard(n, r, world)]) for r in range(world)]
    assert max(sizes) - min(sizes) <= 1


def test_steps_per_epoch_keeps_the_partial_batch_when_every_rank_gets_some():
    assert steps_per_epoch(128, 32, 1) == 4
    assert steps_per_epoch(130, 32, 1) == 5  # 2 leftover images still make a step
    assert steps_per_epoch(129, 32, 2) == 4  # 1 leftover image cannot be shared by 2 ranks
    assert steps_per_epoch(10, 256, 1) == 1


def test_ema_warms_up_then_averages():
    model = torch.nn.Linear(2, 2)
    ema = EMA(model, decay=0.999)
    assert ema.decay_at(0) == pytest.approx(0.1) and ema.decay_at(10**6) == 0.999
    start = ema.shadow.weight.clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model, step=0)
    # theta_ema = d theta_ema + (1 - d) theta with d_0 = 0.1
    assert torch.allclose(ema.shadow.weight, 0.1 * start + 0.9 * model.weight)
    assert not ema.shadow.weight.requires_grad


def test_config_round_trip_and_overrides():
    config = TrainConfig(out_dir="run", epochs=3, unet={"base_channels": 16}, prompt={"dim": 32})
    assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    model = build_denoiser_config(config)
    assert model.unet.base_channels == 16
    assert model.unet.context_dim == model.prompt.dim == 32  # one of the pair sets both
    with pytest.raises(TrainingError, match="base_chanels"):
        build_denoiser_config(TrainConfig(out_dir="run", epochs=1, unet={"base_chanels": 16}))
    with pytest.raises(TrainingError, match="valid names"):
        build_denoiser_config(TrainConfig(out_dir="run", epochs=1, schedule="quadratic"))
    with pytest.raises(ValueError, match="unknown TrainConfig keys"):
        TrainConfig.from_dict({"out_dir": "x", "epochs": 1, "learning_rate": 1})
    with pytest.raises(TrainingError, match="cond_drop_prob"):
        TrainConfig(out_dir="x", epochs=1, cond_drop_prob=1.5).validate()


def test_command_line_options_become_a_config():
    parser = add_train_arguments(argparse.ArgumentParser())
    args = parser.parse_args(
        "--out run --epochs 3 --resume --lr 2e-4 --unet base_channels=16 --unet channel_mult=1,2,2 "
        "--prompt depth=2 --snapshot-epochs 1,3 --prediction-type v_prediction --schedule cosine "
        "--zero-terminal-snr --no-progress --limit 100".split()
    )
    config = config_from_args(args)
    assert (config.out_dir, config.epochs, config.resume, config.lr, config.limit) == ("run", 3, True, 2e-4, 100)
    assert config.unet == {"base_channels": 16, "channel_mult": [1, 2, 2]} and config.prompt == {"depth": 2}
    assert config.snapshot_epochs == (1, 3) and config.progress is False
    assert config.prediction_type == "v_prediction" and config.schedule == "cosine"
    assert config.rescale_zero_terminal_snr is True
    defaults = config_from_args(parser.parse_args(["--out", "run", "--epochs", "1"]))
    assert defaults == TrainConfig(out_dir="run", epochs=1)
    assert not defaults.has_model_options()


def test_resume_on_the_command_line_keeps_the_saved_settings(tmp_path):
    """"--out RUN --epochs N --resume" continues RUN as it was started; what is given still wins."""
    parser = add_train_arguments(argparse.ArgumentParser())
    started = TrainConfig(out_dir=str(tmp_path), epochs=100, lr=3e-4, lr_schedule="cosine", seed=7, limit=500,
                          batch_size=64, snapshot_epochs=(1, 50))
    (tmp_path / "train_state.json").write_text(json.dumps({"train_config": started.to_dict()}))

    resumed = config_from_args(parser.parse_args(["--out", str(tmp_path), "--epochs", "100", "--resume"]))
    for name in train_cli.RUN_SETTINGS:
        assert getattr(resumed, name) == getattr(started, name), name
    changed = config_from_args(parser.parse_args(
        ["--out", str(tmp_path), "--epochs", "120", "--resume", "--lr", "1e-4", "--snapshot-epochs", ""]))
    assert (changed.lr, changed.snapshot_epochs, changed.lr_schedule, changed.seed) == (1e-4, (), "cosine", 7)
    # without --resume the saved run is not consulted: the defaults
    fresh = config_from_args(parser.parse_args(["--out", str(tmp_path), "--epochs", "1"]))
    assert (fresh.lr, fresh.lr_schedule, fresh.seed) == (1e-3, "constant", 0)
    # nothing readable to resume from: the defaults, and the trainer says what is missing
    assert config_from_args(parser.parse_args(["--out", str(tmp_path / "none"), "--epochs", "1", "--resume"])).seed == 0


def test_resume_says_where_it_goes_on_and_what_changed(one_epoch, tmp_path, capsys):
    run = copy_run(one_epoch, tmp_path)
    train(tiny(run, run, epochs=1, resume=True))  # already done: nothing trains, but the run is read
    out = capsys.readouterr().out
    assert "after epoch 1 of 1 (seed 0, lr 0.001 constant, batch 32)" in out and "changed" not in out
    train(tiny(run, run, epochs=1, resume=True, lr=5e-4))
    assert "changed settings: lr: 0.001 -> 0.0005" in capsys.readouterr().out


def test_channels_last_trains_the_same_model(one_epoch, vae_dir, tmp_path):
    """The memory order changes how the numbers are stored, not what is computed."""
    model = Denoiser(build_denoiser_config(tiny(tmp_path, vae_dir))).eval()  # eval: no dropout
    for p in model.parameters():  # fresh models zero their last layers; give every path a value
        torch.nn.init.normal_(p, std=0.1)
    x, t = torch.randn(8, 4, 8, 8), torch.randint(0, 1000, (8,))
    tokens = model.encode_prompts(["a bag", "a coat", ""] * 2 + ["a bag"] * 2)
    grads = {}
    for flag in (False, True):
        fmt = torch.channels_last if flag else torch.contiguous_format
        model.to(memory_format=fmt).zero_grad(set_to_none=True)
        model(x.contiguous(memory_format=fmt), t, tokens).pow(2).mean().backward()
        grads[flag] = {n: p.grad.clone() for n, p in model.named_parameters()}
    for name, grad in grads[False].items():
        torch.testing.assert_close(grads[True][name], grad, rtol=1e-4, atol=1e-6, msg=name)
    # a whole epoch either way: the same losses (AdamW moves near-zero weights by ~lr whatever the sign of a
    # gradient at rounding level, so the weights themselves are not compared), and channels_last is the CPU default
    histories = {flag: train(tiny(tmp_path / f"cl_{flag}", vae_dir, epochs=1, channels_last=flag))
                 for flag in (False, True)}
    assert histories[False][0]["loss"] == pytest.approx(histories[True][0]["loss"], rel=1e-4)
    reference = load_file(one_epoch / "train_state.safetensors")
    state = load_file(tmp_path / "cl_True" / "train_state.safetensors")
    assert all(torch.equal(value, reference[key]) for key, value in state.items())


def test_cli_exit_codes(tmp_path, monkeypatch, capsys):
    # nothing to resume: exit code 1 and a message that says how to start
    code = train_cli.main(["--out", str(tmp_path / "empty"), "--epochs", "1", "--resume"])
    assert code == 1 and "leaving out --resume" in capsys.readouterr().err

    def interrupted(config):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_cli, "train", interrupted)
    assert train_cli.main(["--out", str(tmp_path / "x"), "--epochs", "1"]) == 130


# --------------------------------------------------------------------------------- full runs
def test_resume_reproduces_an_uninterrupted_run_bitwise(two_epochs, one_epoch, tmp_path, vae_dir):
    reference, reference_history = two_epochs
    run = copy_run(one_epoch, tmp_path)
    history = train(tiny(run, vae_dir, epochs=2, resume=True))
    assert_same_state(reference, run)
    assert [h["epoch"] for h in history] == [1, 2]
    assert [h["loss"] for h in history] == [h["loss"] for h in reference_history]
    assert [json.loads(line)["epoch"] for line in (run / "train_log.jsonl").read_text().splitlines()] == [1, 2]


@pytest.mark.parametrize("fused", [True, False])
def test_resume_with_either_optimizer_in_channels_last_is_bitwise_exact(vae_dir, tmp_path, monkeypatch, fused):
    """The fused AdamW (CUDA's and the CPU's default) walks a parameter and its moments in memory order. A
    resumed run loads the moments contiguous while channels_last parameters are not: they must be given the
    parameter's order (they were not, and the resumed run drifted by ~5e-3 in the weights). The foreach
    AdamW (MPS's) follows the strides; it is tested here on the CPU."""
    monkeypatch.setattr(train_module, "fused_optimizer", lambda device: fused)
    reference, run = tmp_path / "reference", tmp_path / "run"
    train(tiny(reference, vae_dir, epochs=2, channels_last=True))
    train(tiny(run, vae_dir, epochs=1, channels_last=True))
    train(tiny(run, vae_dir, epochs=2, channels_last=True, resume=True))
    assert_same_state(reference, run)


def test_the_run_folder_is_complete_and_checked(two_epochs):
    run, history = two_epochs
    assert [h["epoch"] for h in history] == [1, 2] and history[-1]["step"] == 8
    for h in history:
        assert h["images"] == 128 and h["images_per_s"] > 0 and h["wall_s"] > 0 and h["lr"] == pytest.approx(1e-3)
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert [entry["epoch"] for entry in log] == [1, 2]
    assert {"epoch", "loss", "lr", "images_per_s", "wall_s", "step"} <= set(log[0])

    # every file is listed in SHA256SUMS and matches it
    sums = read_checksums(run)
    for name in ("denoiser", "vae", "train_state", "denoiser_epoch001", "denoiser_epoch002"):
        for suffix in (".safetensors", ".json"):
            assert name + suffix in sums
            verify_file(run / (name + suffix))
        load_component(run, name)
    assert not (run / "denoiser_epoch005.safetensors").exists()  # only epochs that were reached

    # the pipeline's loaders rebuild both models from the folder alone
    denoiser = load_denoiser(run)
    state = load_file(run / "train_state.safetensors")
    for key, value in denoiser.state_dict().items():
        assert torch.equal(value, state[f"ema.{key}"]), f"denoiser.safetensors holds the EMA weights ({key})"
    assert denoiser.config.unet.base_channels == TINY_UNET["base_channels"]
    assert load_autoencoder(run).config.scale_factor == 2.0

    # snapshots: fp16 copies of the EMA weights at that epoch
    snapshot, _ = load_component(run, "denoiser_epoch002")
    assert all(v.dtype == torch.float16 for v in snapshot.values() if v.is_floating_point())
    for key, value in snapshot.items():
        assert torch.equal(value, state[f"ema.{key}"].half())
    load_denoiser(run, name="denoiser_epoch001")

    # training did something: the raw weights moved away from the EMA
    assert any(not torch.equal(state[k], state["ema" + k[5:]]) for k in state if k.startswith("model."))


def test_training_lowers_the_loss(vae_dir, tmp_path):
    """8 short epochs on 256 latents: the denoising loss falls well below its start (~1 = predicting 0)."""
    history = train(tiny(tmp_path / "run", vae_dir, epochs=8, limit=256, lr=2e-3, warmup_steps=5, snapshot_epochs=()))
    losses = [h["loss"] for h in history]
    assert losses[-1] < 0.7 * losses[0], losses


def test_v_prediction_on_a_zero_terminal_snr_schedule(vae_dir, tmp_path):
    run = tmp_path / "run"
    history = train(tiny(run, vae_dir, epochs=1, prediction_type="v_prediction", schedule="cosine",
                         rescale_zero_terminal_snr=True))
    assert 0 < history[0]["loss"] < 10
    model = load_denoiser(run)
    assert model.config.prediction_type == "v_prediction"
    assert model.config.schedule["name"] == "squaredcos_cap_v2" and model.config.schedule["rescale_zero_terminal_snr"]


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(one_epoch, tmp_path):
    run = copy_run(one_epoch, tmp_path)
    before = file_bytes(run)
    with pytest.raises(TrainingError, match=r"NaN/inf in epoch 2.*kept"):
        train(tiny(run, run, epochs=2, resume=True, lr=1e30, warmup_steps=0))
    assert file_bytes(run) == before


def test_ctrl_c_keeps_the_epoch_then_resume_matches(two_epochs, one_epoch, tmp_path, monkeypatch, capsys):
    run = copy_run(one_epoch, tmp_path)
    before = file_bytes(run)
    real = train_module.learning_rate

    def interrupt_at_step_6(config, step, total):
        if step == 6:  # the third step of epoch 2
            raise KeyboardInterrupt
        return real(config, step, total)

    monkeypatch.setattr(train_module, "learning_rate", interrupt_at_step_6)
    with pytest.raises(KeyboardInterrupt):
        train(tiny(run, run, epochs=2, resume=True))
    err = capsys.readouterr().err
    assert "epoch 1" in err and "--resume" in err
    assert file_bytes(run) == before

    monkeypatch.setattr(train_module, "learning_rate", real)
    # no model options: the saved model config is used; another --vae-dir: the run's own copy is used
    other_vae = tmp_path / "other_vae"
    config = AutoencoderConfig(channels=(8, 8, 8), norm_groups=4)
    save_component(other_vae, "vae", AutoencoderKL(config), config.to_dict())
    train(tiny(run, other_vae, epochs=2, resume=True, unet={}, prompt={}))
    assert "run's own copy" in capsys.readouterr().out
    assert_same_state(two_epochs[0], run)


def test_resume_refuses_what_cannot_work(one_epoch, vae_dir, tmp_path):
    with pytest.raises(TrainingError, match="nothing to resume.*leaving out --resume"):
        train(tiny(tmp_path / "new", vae_dir, resume=True))
    with pytest.raises(TrainingError, match=r"different model.*base_channels: 8 -> 16"):
        train(tiny(one_epoch, one_epoch, resume=True, unet={**TINY_UNET, "base_channels": 16}))
    with pytest.raises(TrainingError, match="already holds.*--resume.*--overwrite"):
        train(tiny(one_epoch, vae_dir, epochs=1))
    # the run's own copy of the autoencoder is what a resumed run encodes with
    broken = copy_run(one_epoch, tmp_path)
    config = AutoencoderConfig(channels=(8, 8, 8), norm_groups=4)
    save_component(broken, "vae", AutoencoderKL(config), config.to_dict())
    with pytest.raises(TrainingError, match="not the autoencoder the run"):
        train(tiny(broken, vae_dir, resume=True))
    # a run that is already long enough: nothing to do, the history comes back
    assert [h["epoch"] for h in train(tiny(one_epoch, one_epoch, epochs=1, resume=True))] == [1]
    # a run folder carried in pieces (train_state split into files of at most 16 MB): join, then resume
    pieces = copy_run(one_epoch, tmp_path / "pieces")
    state = (pieces / "train_state.safetensors").read_bytes()
    (pieces / "train_state.safetensors.part0").write_bytes(state[: len(state) // 2])
    (pieces / "train_state.safetensors.part1").write_bytes(state[len(state) // 2 :])
    (pieces / "train_state.safetensors").unlink()
    with pytest.raises(TrainingError, match=r"2 parts; join them first: cat .*part0 .*part1 > .*train_state"):
        train(tiny(pieces, vae_dir, epochs=2, resume=True))
    (pieces / "train_state.safetensors").write_bytes(b"".join(
        (pieces / f"train_state.safetensors.part{i}").read_bytes() for i in range(2)))
    assert [h["epoch"] for h in train(tiny(pieces, pieces, epochs=1, resume=True))] == [1]


# ------------------------------------------------------------------------------- torchrun
@pytest.mark.slow
def test_torchrun_two_processes_match_one(vae_dir, tmp_path):
    """2 ranks, each half of every batch, follow the 1-process run up to rounding."""
    config_file = tmp_path / "denoiser_config.json"
    # no dropout: its masks are drawn per rank, so they would differ from the single process's
    no_dropout = {**TINY_UNET, "dropout": 0.0}
    model = build_denoiser_config(tiny(tmp_path, vae_dir, unet=no_dropout))
    config_file.write_text(json.dumps(model.to_dict()))
    out = tmp_path / "ddp"
    args = [
        "--out", str(out), "--epochs", "1", "--vae-dir", str(vae_dir), "--limit", "64", "--batch-size", "32",
        "--warmup-steps", "1", "--cond-drop-prob", "0.25", "--denoiser-config", str(config_file),
        "--no-progress", "--num-threads", "1", "--device", "cpu", "--snapshot-epochs", "1",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "diffusion_lib.train", *args]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert len(log) == 1 and log[0]["world_size"] == 2 and log[0]["images"] == 64 and log[0]["step"] == 2
    load_denoiser(out)

    single = tmp_path / "single"
    train(tiny(single, vae_dir, epochs=1, limit=64, warmup_steps=1, snapshot_epochs=(1,), unet=no_dropout))
    a, b = load_file(out / "train_state.safetensors"), load_file(single / "train_state.safetensors")
    for key in a:
        if key.startswith(("model.", "ema.")):
            assert torch.allclose(a[key], b[key], atol=1e-5, rtol=1e-4), key
    assert log[0]["loss"] == pytest.approx(json.loads((single / "train_log.jsonl").read_text())["loss"], rel=1e-5)
