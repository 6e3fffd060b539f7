"""The CPU shortcuts for tiny maps compute what the textbook kernels compute.

``Conv3x3`` runs a 3x3 convolution on a map of at most 2x2 pixels as one matrix
product, ``layers.linear`` runs large matrix products as oneDNN 1x1 convolutions
(x86-64), and attention over at most 256 query-key pairs is computed explicitly
instead of by the fused kernel. Each is checked against ``reference_kernels()``
(forward and gradients), and the FLOP counter shows which path really ran.
"""

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from diffusion_lib.attention import Attention
from diffusion_lib.denoiser import Denoiser, default_denoiser_config
from diffusion_lib import layers
from diffusion_lib.layers import Conv3x3, Linear, linear, reference_kernels


def forward_and_grads(module: torch.nn.Module, *inputs: torch.Tensor):
    """Output, input gradients and parameter gradients for a fixed random output gradient."""
    inputs = [x.detach().clone().requires_grad_() for x in inputs]
    module.zero_grad(set_to_none=True)
    out = module(*inputs)
    out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(1)))
    return out.detach(), [x.grad for x in inputs], {n: p.grad.clone() for n, p in module.named_parameters()}


def assert_same(a, b, tol=1e-4):
    torch.testing.assert_close(a[0], b[0], rtol=tol, atol=tol)
    for ga, gb in zip(a[1], b[1]):
        torch.testing.assert_close(ga, gb, rtol=tol, atol=tol)
    assert a[2].keys() == b[2].keys()
    for name in a[2]:
        torch.testing.assert_close(a[2][name], b[2][name], rtol=tol, atol=tol, msg=name)


def counted_flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


@pytest.mark.parametrize("size", [(1, 1), (1, 2), (2, 1), (2, 2), (4, 4), (3, 5)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_conv3x3_equals_the_convolution(size, channels_last):
    torch.manual_seed(0)
    conv = Conv3x3(6, 5)
    x = torch.randn(3, 6, *size)
    if channels_last:
        conv, x = conv.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    with reference_kernels():
        reference = forward_and_grads(conv, x)
    torch.testing.assert_close(reference[0], F.conv2d(x, conv.weight, conv.bias, padding=1), rtol=1e-5, atol=1e-5)
    assert_same(forward_and_grads(conv, x), reference)


def test_conv3x3_takes_the_matrix_path_on_tiny_maps_only():
    conv, b, c, o = Conv3x3(8, 4), 2, 8, 4
    for (h, w), dense in (((2, 2), True), ((1, 2), True), ((4, 4), False)):
        x, p = torch.randn(b, c, h, w), h * w
        with reference_kernels():
            as_convolution = counted_flops(lambda: conv(x))
        # the convolution: 9 multiply-adds per (output pixel, input channel, output channel)
        assert as_convolution == 2 * b * p * 9 * c * o
        # the matrix, built as (O*C, 9) @ (9, P*P), then (B, C*P) @ (C*P, O*P): zero padding taps not multiplied
        matrix = 2 * (o * c) * 9 * (p * p) + 2 * b * (c * p) * (o * p)
        assert counted_flops(lambda: conv(x)) == (matrix if dense else as_convolution)


def test_conv3x3_has_the_weights_of_a_conv2d():
    conv, plain = Conv3x3(4, 7), torch.nn.Conv2d(4, 7, 3, padding=1)
    assert {k: v.shape for k, v in conv.state_dict().items()} == {k: v.shape for k, v in plain.state_dict().items()}
    plain.load_state_dict(conv.state_dict())
    x = torch.randn(2, 4, 2, 2)
    torch.testing.assert_close(conv(x), plain(x), rtol=1e-5, atol=1e-5)


class _OpNames(TorchDispatchMode):
    """Records the names of the ATen ops that run (forward and backward)."""

    def __init__(self):
        super().__init__()
        self.names: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.add(func.__name__.split(".")[0])
        return func(*args, **(kwargs or {}))


def _run_ops(fn) -> set[str]:
    """The names of the ATen ops ``fn()`` runs."""
    ops = _OpNames()
    with ops:
        fn()
    return ops.names


@pytest.mark.parametrize("shape, out_features, bias, as_convolution", [
    ((64, 16, 64), 512, True, True),  # 1,024 rows x 64 x 512 = 33.6M multiply-adds: a oneDNN convolution
    ((4096, 256), 64, True, True),  # rows given as a matrix
    ((64, 16, 64), 512, False, True),  # no bias
    ("transposed", 512, True, True),  # rows not contiguous: copied first
    ((32, 8, 64), 64, True, False),  # 1.0M multiply-adds: too small to gain
    ((255, 3, 64), 512, True, False),  # 765 rows: not a multiple of 16 images
])
def test_linear_equals_the_matrix_product(shape, out_features, bias, as_convolution):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 64, 16, generator=g).transpose(1, 2) if shape == "transposed" else torch.randn(*shape, generator=g)
    k = x.shape[-1]
    w, b = torch.randn(out_features, k, generator=g) / k**0.5, torch.randn(out_features, generator=g) if bias else None
    grad = torch.randn(*x.shape[:-1], out_features, generator=g)
    results = []
    for fn in (F.linear, linear):
        inputs = [t.clone().requires_grad_() for t in (x, w, b) if t is not None]
        ops = _OpNames()
        with ops:
            out = fn(*inputs)
            grads = torch.autograd.grad(out, inputs, grad)
        results.append((out, grads, ops.names))
    (out_a, grads_a, _), (out_b, grads_b, names) = results
    assert out_b.shape == out_a.shape and out_b.is_contiguous()
    torch.testing.assert_close(out_b, out_a, rtol=1e-4, atol=1e-4)
    for grad_a, grad_b in zip(grads_a, grads_b):
        torch.testing.assert_close(grad_b, grad_a, rtol=1e-4, atol=1e-3)
    # the oneDNN path runs where it was measured (x86-64 with oneDNN), and only for large products
    assert ("convolution" in names) == (as_convolution and layers.ONEDNN_X86)
    # the architecture's FLOPs do not depend on the path
    with reference_kernels():
        assert "convolution" not in _run_ops(lambda: linear(x, w, b))
        reference = counted_flops(lambda: linear(x, w, b))
    assert counted_flops(lambda: linear(x, w, b)) == reference == 2 * x[..., 0].numel() * k * out_features


def test_reference_kernels_turns_off_each_kind_alone():
    x, w = torch.randn(64, 16, 64), torch.randn(512, 64)
    with reference_kernels(tiny_maps=False):  # the linear layers' textbook kernel; the tiny-map shortcuts stay
        assert layers.shortcuts_enabled(x) and not layers.shortcuts_enabled(x, "linear")
        assert "convolution" not in _run_ops(lambda: linear(x, w))
        with reference_kernels():  # nested: everything off, and back to the outer setting after
            assert not layers.shortcuts_enabled(x) and not layers.shortcuts_enabled(x, "linear")
        assert layers.shortcuts_enabled(x) and not layers.shortcuts_enabled(x, "linear")
    with reference_kernels(linear=False):  # the tiny maps' textbook kernels; the oneDNN linear layers stay
        assert not layers.shortcuts_enabled(x) and layers.shortcuts_enabled(x, "linear")
        assert ("convolution" in _run_ops(lambda: linear(x, w))) == layers.ONEDNN_X86
    assert layers.shortcuts_enabled(x) and layers.shortcuts_enabled(x, "linear")


def test_linear_has_the_weights_of_an_nn_linear():
    layer, plain = Linear(64, 512), torch.nn.Linear(64, 512)
    assert isinstance(layer, torch.nn.Linear) and repr(layer) == repr(plain)
    assert {k: v.shape for k, v in layer.state_dict().items()} == {k: v.shape for k, v in plain.state_dict().items()}
    plain.load_state_dict(layer.state_dict())
    x = torch.randn(64, 16, 64)
    torch.testing.assert_close(layer(x), plain(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("queries, keys, cross", [(16, 16, False), (4, 4, False), (16, 8, True), (64, 64, False)])
def test_small_attention_equals_the_fused_kernel(queries, keys, cross):
    torch.manual_seed(0)
    attn = Attention(32, 24 if cross else None, heads=4, head_dim=8)
    x = torch.randn(3, queries, 32)
    if cross:
        context = torch.randn(3, keys, 24)
        # padding: the last two context positions of example 0 may not be looked at
        mask = torch.ones(3, keys, dtype=torch.bool)
        mask[0, -2:] = False

        def run(xx, cc):
            return attn(xx, cc, key_mask=mask)

        module, inputs = _Wrap(attn, run), (x, context)
    else:
        module, inputs = attn, (x,)
    with reference_kernels():
        reference = forward_and_grads(module, *inputs)
        fused_flops = counted_flops(lambda: module(*inputs))
    assert_same(forward_and_grads(module, *inputs), reference)
    # without the C kernels (fused.py), the explicit path shows in the FLOP count (QK^T and AV); the fused
    # kernels, PyTorch's and ours, count 0 on the CPU
    with reference_kernels(tiny_maps=False, linear=False):
        assert_same(forward_and_grads(module, *inputs), reference)
        explicit = queries * keys <= Attention.explicit_max_entries
        extra = 2 * 2 * 3 * 4 * queries * keys * 8 if explicit else 0
        assert counted_flops(lambda: module(*inputs)) == fused_flops + extra


class _Wrap(torch.nn.Module):
    def __init__(self, inner: torch.nn.Module, fn):
        super().__init__()
        self.inner, self.fn = inner, fn

    def forward(self, *args):
        return self.fn(*args)


@pytest.mark.parametrize("batch", [6, 64])  # 64: the feed-forward products are large enough for oneDNN
def test_denoiser_with_shortcuts_and_distinct_prompts_equals_the_reference(batch):
    torch.manual_seed(0)
    model = Denoiser(default_denoiser_config())
    for p in model.parameters():  # fresh models zero their last layers; give every path a value
        torch.nn.init.normal_(p, std=0.05)
    prompts = model.encode_prompts(["a photo of a bag", "a coat", ""])  # (P=3, L)
    index = torch.arange(batch) * 7 % 3
    x, t = torch.randn(batch, 4, 8, 8), torch.randint(0, 1000, (batch,))

    def full(xx):
        return model(xx, t, prompts[index])

    def distinct(xx):
        return model(xx, t, prompts, index)

    with reference_kernels():
        reference = forward_and_grads(_Wrap(model, full), x)
    assert_same(forward_and_grads(_Wrap(model, distinct), x), reference, tol=2e-4)
    assert_same(forward_and_grads(_Wrap(model, full), x), reference, tol=2e-4)


@pytest.mark.parametrize("keys", [4, 8, 16])
def test_keys_major_attention_equals_the_formula(keys):
    from diffusion_lib.attention import attention, attention_keys_major

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, 4, n, 8, generator=g, requires_grad=True) for n in (16, keys, keys))
    mask = torch.ones(3, 1, 1, keys, dtype=torch.bool)
    mask[0, ..., -2:] = False  # padding: example 0 may not look at its last two keys
    grad = torch.randn(3, 4, 16, 8, generator=g)
    results = []
    for fn in (attention, attention_keys_major):
        out, weights = fn(q, k, v, mask)
        inputs = (q, k, v)
        results.append((out, weights, torch.autograd.grad(out, inputs, grad)))
    (out_a, w_a, g_a), (out_b, w_b, g_b) = results
    torch.testing.assert_close(out_b, out_a, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(w_b, w_a, rtol=1e-5, atol=1e-6)
    assert w_b.shape == (3, 4, 16, keys) and torch.all(w_b[0, ..., -2:] == 0)
    for a, b in zip(g_a, g_b):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
