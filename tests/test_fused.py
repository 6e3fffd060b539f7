"""The fused C kernels (diffusion_lib/kernels.c via fused.py) against the PyTorch ops they replace.

Each kernel is compared in value and gradient with the same formula run by PyTorch in float64
(``layers.reference_kernels()`` turns the kernels off), on the U-Net's sizes and on odd ones that
take the general loops. The build is checked too: cached, atomic, never flushing denormals for
the process, and a clear reason (with the PyTorch ops running instead) where it cannot happen.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys

import pytest
import torch

from diffusion_lib import fused, native
from diffusion_lib.attention import Attention
from diffusion_lib.layers import reference_kernels

pytestmark = pytest.mark.skipif(native.library() is None, reason=f"no fused kernels: {native.unavailable_reason()}")


def _compare(run, inputs: list[torch.Tensor], tol: float = 2e-5) -> None:
    """``run(*inputs)`` with the kernels in float32 against the PyTorch ops in float64: values and gradients."""
    ours = [t.detach().clone().requires_grad_(t.is_floating_point()) for t in inputs]
    out = run(*ours)
    grad = torch.randn_like(out)
    out.backward(grad)
    exact = [t.detach().double().requires_grad_(t.is_floating_point()) if t.is_floating_point() else t
             for t in inputs]
    with reference_kernels():
        expected = run(*exact)
    expected.backward(grad.double())
    torch.testing.assert_close(out.double(), expected.detach(), rtol=tol, atol=tol)
    for a, b in zip(ours, exact):
        if a.is_floating_point():
            torch.testing.assert_close(a.grad.double(), b.grad, rtol=tol, atol=tol)


@pytest.mark.parametrize("queries, keys, head_dim", [(16, 16, 16), (4, 4, 16), (16, 8, 16), (4, 8, 16),
                                                       (9, 5, 8), (1, 3, 16)])
def test_attention_kernel_equals_the_formula(queries, keys, head_dim):
    torch.manual_seed(0)
    width = 4 * head_dim
    q, kv = torch.randn(6, queries, width), torch.randn(6, keys, 2 * width)
    qkv = torch.randn(6, queries, 3 * width)
    assert fused.attention_rows_applies(q, queries, keys)
    # cross-attention: Q and [K | V]
    _compare(lambda q, kv: fused.attention_rows(q, kv, 4)[0], [q, kv])
    # self-attention: one packed [Q | K | V]
    _compare(lambda qkv: fused.attention_rows(qkv, None, 4)[0], [qkv])


def test_attention_kernel_reads_shared_rows_by_index():
    """Samples that share a prompt read the same keys and values; their gradients add up in the shared row."""
    torch.manual_seed(0)
    q, kv = torch.randn(12, 16, 64), torch.randn(3, 8, 128)
    index = torch.tensor([0, 2, 2, 1, 0, 0, 2, 1, 1, 0, 2, 2])
    _compare(lambda q, kv: fused.attention_rows(q, kv, 4, index)[0], [q, kv])
    out, weights = fused.attention_rows(q, kv, 4, index)
    expected, expected_weights = fused.attention_rows(q, kv[index], 4)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    torch.testing.assert_close(weights, expected_weights, rtol=0, atol=0)


def test_attention_weights_are_the_softmax_and_can_be_recorded():
    torch.manual_seed(0)
    q, kv = torch.randn(2, 16, 64), torch.randn(2, 8, 128)
    _, weights = fused.attention_rows(q, kv, 4)
    assert weights.shape == (2, 4, 16, 8) and not weights.requires_grad
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 4, 16))
    with reference_kernels():
        _, expected = fused.attention_rows(q, kv, 4)
    torch.testing.assert_close(weights, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cross", [False, True])
def test_attention_module_on_the_kernel_equals_the_reference(cross):
    """Attention's fused path (Q, K, V as one packed product) against its own textbook path, weights included."""
    torch.manual_seed(0)
    attn = Attention(64, 48 if cross else None, heads=4, head_dim=16)
    for p in attn.parameters():
        torch.nn.init.normal_(p, std=0.2)
    reference = copy.deepcopy(attn).double()
    x, context = torch.randn(8, 16, 64, requires_grad=True), torch.randn(8, 8, 48, requires_grad=True)
    inputs = (x, context) if cross else (x,)
    out = attn(*inputs)
    grad = torch.randn_like(out)
    out.backward(grad)
    exact = [t.detach().double().requires_grad_() for t in inputs]
    with reference_kernels():
        expected = reference(*exact)
    expected.backward(grad.double())
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)
    for a, b in zip(inputs, exact):
        torch.testing.assert_close(a.grad.double(), b.grad, rtol=1e-4, atol=1e-5)
    for (name, a), b in zip(attn.named_parameters(), reference.parameters()):
        torch.testing.assert_close(a.grad.double(), b.grad, rtol=1e-4, atol=1e-4, msg=name)


@pytest.mark.parametrize("size, channels", [(8, 32), (8, 96), (4, 64), (2, 64), (1, 64), (3, 24)])
@pytest.mark.parametrize("silu, shifted", [(True, False), (False, False), (True, True)])
def test_group_norm_kernel_equals_the_formula(size, channels, silu, shifted):
    torch.manual_seed(0)
    norm = torch.nn.GroupNorm(8, channels)
    torch.nn.init.normal_(norm.weight)
    torch.nn.init.normal_(norm.bias)
    x = (torch.randn(5, channels, size, size) * 3 + 1).contiguous(memory_format=torch.channels_last)
    shift = torch.randn(5, channels) * 2

    # weight and bias enter as leaves of their own so that their gradients are compared too
    ours = [t.detach().clone().requires_grad_() for t in (x, shift, norm.weight, norm.bias)]
    layer = copy.deepcopy(norm)
    layer.weight, layer.bias = torch.nn.Parameter(ours[2]), torch.nn.Parameter(ours[3])
    out = fused.group_norm(layer, ours[0], silu, ours[1] if shifted else None)
    assert out.is_contiguous(memory_format=torch.channels_last)
    grad = torch.randn_like(out)
    out.backward(grad)
    exact = [t.detach().double().requires_grad_() for t in (x, shift, norm.weight, norm.bias)]
    reference = copy.deepcopy(norm).double()
    reference.weight, reference.bias = torch.nn.Parameter(exact[2]), torch.nn.Parameter(exact[3])
    with reference_kernels():
        expected = fused.group_norm(reference, exact[0], silu, exact[1] if shifted else None)
    expected.backward(grad.double())
    torch.testing.assert_close(out.double(), expected.detach(), rtol=2e-5, atol=2e-5)
    torch.testing.assert_close(ours[0].grad.double(), exact[0].grad, rtol=2e-5, atol=2e-5)
    torch.testing.assert_close(layer.weight.grad.double(), reference.weight.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(layer.bias.grad.double(), reference.bias.grad, rtol=1e-4, atol=1e-4)
    if shifted:
        torch.testing.assert_close(ours[1].grad.double(), exact[1].grad, rtol=1e-4, atol=1e-4)


def test_group_norm_keeps_the_pytorch_ops_where_the_kernel_does_not_apply():
    """Contiguous (B, C, H, W) maps, float64 and a shift that broadcasts take the PyTorch ops, same results."""
    torch.manual_seed(0)
    norm = torch.nn.GroupNorm(4, 16)
    x = torch.randn(3, 16, 4, 4)
    expected = torch.nn.functional.silu(norm(x + 1.5))
    torch.testing.assert_close(fused.group_norm(norm, x, True, torch.full((3, 16), 1.5)), expected)
    torch.testing.assert_close(fused.group_norm(norm.double(), x.double(), False),
                               norm.double()(x.double()))


@pytest.mark.parametrize("rows, features", [(4096, 256), (7, 5)])
def test_geglu_kernel_equals_the_formula(rows, features):
    torch.manual_seed(0)
    _compare(fused.geglu, [torch.randn(rows, 2 * features) * 2])


def test_kernels_give_the_same_bits_at_any_thread_count():
    """Work is split over samples and every sum has a fixed order: 1 and 2 threads agree exactly, so a resumed
    run on another thread count still retraces the same numbers."""
    torch.manual_seed(0)
    norm = torch.nn.GroupNorm(8, 64)
    x = torch.randn(32, 64, 8, 8).contiguous(memory_format=torch.channels_last).requires_grad_()
    qkv = torch.randn(32, 16, 192, requires_grad=True)
    h = torch.randn(512, 512, requires_grad=True)
    grads = torch.randn(32, 64, 8, 8).contiguous(memory_format=torch.channels_last), torch.randn(32, 16, 64), \
        torch.randn(512, 256)
    results = []
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            for t in (x, qkv, h):
                t.grad = None
            norm.zero_grad()
            outs = fused.group_norm(norm, x, True), fused.attention_rows(qkv, None, 4)[0], fused.geglu(h)
            torch.autograd.backward(outs, grads)
            results.append([*(o.detach() for o in outs), x.grad, qkv.grad, h.grad, norm.weight.grad, norm.bias.grad])
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(*results):
        assert torch.equal(a, b)


def _python(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **env})


BUILD = """
import torch
from diffusion_lib import native
tiny = torch.tensor([1e-39])  # a denormal float32
lib = native.library()
print("LOADED", lib is not None, native.unavailable_reason())
print("DENORMALS", (tiny * 0.5).item() != 0.0)
"""


def test_the_build_is_cached_atomic_and_leaves_denormals_alone(tmp_path):
    cache = tmp_path / "kernels"
    first = _python(BUILD, DIFFUSION_KERNEL_CACHE=str(cache))
    assert first.returncode == 0, first.stderr
    assert "LOADED True None" in first.stdout
    # linking with -ffast-math would set flush-to-zero for the whole process when the library loads
    assert "DENORMALS True" in first.stdout
    built = sorted(p.name for p in cache.iterdir())
    assert len(built) == 1 and built[0].startswith("kernels-") and built[0].endswith(".so")  # no temporary left
    stamp = (cache / built[0]).stat().st_mtime_ns
    second = _python(BUILD, DIFFUSION_KERNEL_CACHE=str(cache))
    assert "LOADED True None" in second.stdout and (cache / built[0]).stat().st_mtime_ns == stamp


def test_without_a_compiler_the_reason_is_given_and_the_model_still_runs(tmp_path):
    code = BUILD + """
from diffusion_lib.denoiser import Denoiser, default_denoiser_config
model = Denoiser(default_denoiser_config()).to(memory_format=torch.channels_last)
x = torch.randn(2, 4, 8, 8).contiguous(memory_format=torch.channels_last)
out = model(x, torch.tensor([3, 500]), model.encode_prompts(["a shirt", ""]))
out.square().sum().backward()
print("RAN", tuple(out.shape))
"""
    done = _python(code, DIFFUSION_KERNEL_CACHE=str(tmp_path / "kernels"), CC=str(tmp_path / "no-such-cc"))
    assert done.returncode == 0, done.stderr
    assert "LOADED False" in done.stdout and "could not be built" in done.stdout and "RAN (2, 4, 8, 8)" in done.stdout
    assert not any((tmp_path / "kernels").glob("*.so"))
    off = _python(BUILD, DIFFUSION_FUSED_KERNELS="0")
    assert "LOADED False turned off by DIFFUSION_FUSED_KERNELS=0" in off.stdout


def test_a_relative_cache_folder_is_refused(tmp_path):
    done = subprocess.run([sys.executable, "-c", BUILD], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env={**os.environ, "DIFFUSION_KERNEL_CACHE": "relative/kernels"})
    assert "LOADED False" in done.stdout and "DIFFUSION_KERNEL_CACHE" in done.stdout
    assert not (tmp_path / "relative").exists()


def test_packings_that_do_not_fit_are_refused_before_the_kernel_reads_memory():
    q, kv = torch.randn(4, 16, 64), torch.randn(2, 8, 128)
    with pytest.raises(IndexError, match="kv_index holds rows 0..2, but keys_values has 2"):
        fused.attention_rows(q, kv, 4, torch.tensor([0, 1, 2, 0]))
    with pytest.raises(IndexError, match="rows -1"):
        fused.attention_rows(q, kv, 4, torch.tensor([0, 1, -1, 0]))
    with pytest.raises(ValueError, match="do not fit"):
        fused.attention_rows(q, kv, 4)  # 4 queries' samples, 2 rows of keys and no index
    with pytest.raises(ValueError, match="do not fit"):
        fused.attention_rows(torch.randn(2, 16, 32), kv, 4)
    with pytest.raises(ValueError, match="packed"):
        fused.attention_rows(torch.randn(2, 16, 100), None, 4)
