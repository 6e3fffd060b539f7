"""training/card_tables.py: the model card's tables are read off the measurement files, not typed."""

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "training" / "card_tables.py"
spec = importlib.util.spec_from_file_location("card_tables", SCRIPT)
card_tables = importlib.util.module_from_spec(spec)
spec.loader.exec_module(card_tables)


def result(sampler, steps, guidance, fid, accuracy, n=10000, seconds=10.0):
    return {"fid": fid, "kid": fid / 100, "kid_std": 0.001, "accuracy": accuracy, "num_images": n,
            "sampler": sampler, "steps": steps, "guidance": guidance, "sampling_seconds": seconds}


def floor(fid, n=10000):
    return {"fid": fid, "kid": 0.0, "kid_std": 0.001, "accuracy": 0.96, "num_images": n}


def write(metrics: Path, name: str, results: list, real: dict, **extra):
    (metrics / f"{name}.json").write_text(json.dumps({"real_floor": real, "results": results, **extra}))


def shipment(tmp_path) -> Path:
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    (tmp_path / "train_log.jsonl").write_text("".join(json.dumps({"epoch": e}) + "\n" for e in range(1, 101)))
    write(metrics, "dpmsolver++_20", [result("dpmsolver++", 20, g, fid, acc) for g, fid, acc in
                                       [(0.0, 3.0, 0.1), (2.0, 1.0, 0.97), (3.0, 1.5, 0.99)]],
          floor(0.2), autoencoder_floor=floor(0.5))
    write(metrics, "ddpm_1000", [result("ddpm", 1000, 2, 1.6, 0.97, n=1000, seconds=1500)], floor(0.7, 1000))
    write(metrics, "dpmsolver++_20_at_ddpm_size", [result("dpmsolver++", 20, 2, 1.7, 0.97, n=1000, seconds=30)],
          floor(0.7, 1000))
    for epoch, fid in [(1, 40.0), (50, 2.0)]:
        write(metrics, f"ladder_epoch{epoch:03d}", [result("dpmsolver++", 20, 3, fid, 0.9)], floor(0.2),
              denoiser=f"denoiser_epoch{epoch:03d}")
    # a second guidance scale, measured on one rung only
    write(metrics, "ladder_epoch050_guidance2", [result("dpmsolver++", 20, 2, 1.8, 0.85)], floor(0.2),
          denoiser="denoiser_epoch050")
    return metrics


def test_goals_are_computed_from_the_best_guidance(tmp_path):
    metrics = shipment(tmp_path)
    table, best = card_tables.quality_table(metrics)
    assert best["guidance"] == 2
    assert "| DPM-Solver++(2M) | 20 | 2 | 10,000 | **1.000** |" in table
    assert "| autoencoder reconstructions (latent floor) |  |  | 10,000 | 0.500 |" in table
    assert "| DDPM | 1000 | 2 | 1,000 | 1.600 |" in table
    goals = card_tables.goals(metrics, best)
    assert "97.0% (goal >= 95%)" in goals
    assert "5.00x the real-data floor 0.200" in goals and "2.00x the autoencoder floor" in goals
    assert "1.700 / 1.600 = 1.062 (goal <= 1.10)" in goals
    assert "at 1,000 images: FID-FMNIST 1.700 = 2.43x the real-data floor 0.700" in goals


def test_ladder_ends_at_the_final_model(tmp_path):
    lines = card_tables.ladder_table(shipment(tmp_path)).splitlines()
    assert lines[0] == "| epoch | 1 | 50 | 100 |"
    # the card's guidance 3 first; the final model's result at each scale is the last rung
    assert lines[2] == "| FID-FMNIST, guidance 3 | 40.000 | 2.000 | 1.500 |"
    assert lines[4] == "| accuracy, guidance 3 | 0.900 | 0.900 | 0.990 |"
    # guidance 2 has no epoch-1 rung: its cell stays empty
    assert lines[5] == "| FID-FMNIST, guidance 2 |  | 1.800 | 1.000 |"
    assert len(lines) == 8


def test_ladder_epoch_is_read_off_the_snapshot_measured(tmp_path):
    metrics = shipment(tmp_path)
    (metrics / "ladder_epoch050_guidance2.json").rename(metrics / "ladder_rung.json")
    measured = card_tables.ladders(metrics)
    assert list(measured) == [3.0, 2.0]  # the card's guidance 3 first
    assert sorted(measured[2.0]) == [50, 100]


def test_a_ladder_file_of_the_final_model_is_refused(tmp_path):
    metrics = shipment(tmp_path)
    write(metrics, "ladder_epoch100", [result("dpmsolver++", 20, 3, 1.5, 0.99)], floor(0.2), denoiser="denoiser")
    with pytest.raises(SystemExit, match="not a ladder snapshot"):
        card_tables.ladders(metrics)


def test_ladder_not_measured_yet(tmp_path):
    metrics = shipment(tmp_path)
    for rung in metrics.glob("ladder_*.json"):
        rung.unlink()
    assert card_tables.ladder_table(metrics) == "(the ladder is not measured yet)"


def test_main_prints_the_tables_and_draws_the_ladder(tmp_path, capsys):
    from PIL import Image

    metrics = shipment(tmp_path)
    assert card_tables.main([str(metrics), "--ladder-png", str(tmp_path / "ladder.png")]) == 0
    out = capsys.readouterr().out
    assert "| epoch | 1 | 50 | 100 |" in out and "(goal >= 95%)" in out
    assert Image.open(tmp_path / "ladder.png").size == (990, 352)


def test_best_guidance_alone(tmp_path, capsys):
    assert card_tables.main([str(shipment(tmp_path)), "--best-guidance"]) == 0
    assert capsys.readouterr().out == "2\n"
