"""The CPU shortcuts for tiny maps compute what the textbook kernels compute.

``Conv3x3`` runs a 3x3 convolution on a map of at most 2x2 pixels as one matrix
product, and attention over at most 256 query-key pairs is computed explicitly
instead of by the fused kernel. Each is checked against ``reference_kernels()``
(forward and gradients), and the FLOP counter shows which path really ran.
"""

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from diffusion_lib.attention import Attention
from diffusion_lib.denoiser import Denoiser, default_denoiser_config
from diffusion_lib.layers import Conv3x3, reference_kernels


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
    # the explicit path shows in the FLOP count (QK^T and AV); the fused kernel counts 0 on the CPU
    explicit = queries * keys <= Attention.explicit_max_entries
    extra = 2 * 2 * 3 * 4 * queries * keys * 8 if explicit else 0
    assert counted_flops(lambda: module(*inputs)) == fused_flops + extra


class _Wrap(torch.nn.Module):
    def __init__(self, inner: torch.nn.Module, fn):
        super().__init__()
        self.inner, self.fn = inner, fn

    def forward(self, *args):
        return self.fn(*args)


def test_denoiser_with_shortcuts_and_distinct_prompts_equals_the_reference():
    torch.manual_seed(0)
    model = Denoiser(default_denoiser_config())
    for p in model.parameters():  # fresh models zero their last layers; give every path a value
        torch.nn.init.normal_(p, std=0.05)
    prompts = model.encode_prompts(["a photo of a bag", "a coat", ""])  # (P=3, L)
    index = torch.tensor([0, 2, 1, 1, 0, 2])
    x, t = torch.randn(6, 4, 8, 8), torch.randint(0, 1000, (6,))

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
