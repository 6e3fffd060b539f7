"""The benchmark runs (how fast is measured by the command itself, never by a test)."""

import subprocess
import sys

import pytest

from diffusion_lib.bench import cpu_peak_gflops, diffusers_peer, format_rows, run_bench
from diffusion_lib.denoiser import Denoiser, default_denoiser_config


def test_peer_has_the_same_shape_as_ours():
    pytest.importorskip("diffusers")
    ours = Denoiser(default_denoiser_config())
    peer = diffusers_peer(ours)
    n_ours = sum(p.numel() for p in ours.unet.parameters())
    n_peer = sum(p.numel() for p in peer.parameters())
    # same widths, depth, attention placement and context: parameter counts within 2%
    assert abs(n_ours - n_peer) / n_ours < 0.02


def test_tiny_bench_runs_every_measurement():
    pytest.importorskip("diffusers")
    rows, comparison = run_bench("cpu", vs_diffusers=True, tiny=True, options=True)
    names = [r.name for r in rows]
    # the two training steps timed interleaved: one time per round for each, the ratio per round
    assert len(comparison.ours_s) == len(comparison.peer_s) == 2 and all(r > 0 for r in comparison.ratios)
    table = format_rows(rows, comparison, "cpu")
    assert "interleaved rounds" in table and "x median, range" in table
    if cpu_peak_gflops() is not None:  # AVX2 with FMA, or AVX-512
        assert "of the CPU's estimated peak" in table
    assert names[0] == "denoiser training (ours)" and "diffusers" in names[1]
    # each CPU option alone and all together, against none of them (x1.00 by definition)
    options = [n for n in names if n.strip().startswith("options:")]
    assert len(options) == 7 and options[0].endswith("(x1.00)") and "all five" in options[-1]
    assert any(n.startswith("autoencoder") for n in names)
    assert sum(n.startswith("sample") for n in names) == 3
    assert all(r.value > 0 for r in rows)
    assert rows[0].gflop > 0 and rows[0].params > 0


@pytest.mark.slow
def test_bench_command_prints_the_table():
    proc = subprocess.run([sys.executable, "-m", "diffusion_lib", "bench", "--tiny"], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "device: cpu" in proc.stdout and "denoiser training (ours)" in proc.stdout
