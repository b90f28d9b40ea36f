"""quantnoise::noisy_linear (fused Quant-Noise + linear) against F.linear on the reference noised weight."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from devices import device_params
from tolerances import assert_close_in_dtype

from quantnoise_kernels import ops, reference

DEVICES = device_params()
P = 0.3


def _chunk_rows(in_features: int, element_size: int) -> int:
    """Rows of W per chunk of the CPU kernel: chunk_rows() of csrc/cpu/noisy_linear.cpp (1 MiB)."""
    return (1 << 20) // (in_features * element_size)


# in=968 with blocks of 8: 121 blocks per row, and for every dtype (541, 270 or 135 rows per chunk)
# the second chunk starts in the middle of a Philox group of 4 blocks (asserted below).
CHUNKED_IN = 968
# (input shape, weight shape, block_size): batch dims, one row, several chunks, empty.
CASES = [
    ((5, 32), (16, 32), 8),
    ((2, 3, 24), (7, 24), 4),
    ((1, CHUNKED_IN), (600, CHUNKED_IN), 8),
    ((0, 16), (8, 16), 4),
]


# (element size, out_features) of the chunked cases: every dtype at 600 rows, float32 at 300 (gradients).
@pytest.mark.parametrize("element_size,out_features", [(2, 600), (4, 600), (8, 600), (4, 300)])
def test_chunked_cases_start_a_chunk_mid_group(element_size, out_features):
    """The chunked cases cross a chunk boundary that splits a group of four Philox lanes."""
    rows = _chunk_rows(CHUNKED_IN, element_size)
    assert rows < out_features, "one chunk only"
    assert rows * (CHUNKED_IN // 8) % 4 != 0, "the second chunk starts on a group boundary"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("x_shape,w_shape,block_size", CASES)
@pytest.mark.parametrize("with_bias", [True, False])
def test_matches_linear_on_reference_noise(device, dtype, x_shape, w_shape, block_size, with_bias):
    x = torch.randn(x_shape, dtype=dtype, device=device)
    w = torch.randn(w_shape, dtype=dtype, device=device)
    b = torch.randn(w_shape[0], dtype=dtype, device=device) if with_bias else None
    out = ops.noisy_linear(x, w, b, P, block_size, 77, offset=2)
    noised = reference.block_noise(w, P, block_size, 77, offset=2)
    expected = F.linear(x.double(), noised.double(), None if b is None else b.double())
    assert out.shape == expected.shape and out.dtype == dtype
    magnitude = F.linear(x.double().abs(), noised.double().abs(), None if b is None else b.double().abs())
    assert_close_in_dtype(out, expected, F.linear(x, noised, b), magnitude, w_shape[1] + 1)


@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous_inputs(device):
    x = torch.randn(32, 6, device=device).t()  # [6, 32], transposed strides
    w = torch.randn(32, 16, device=device).t()  # [16, 32] non-contiguous
    out = ops.noisy_linear(x, w, None, P, 8, 1)
    torch.testing.assert_close(out, F.linear(x, reference.block_noise(w, P, 8, 1)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("straight_through", [True, False])
@pytest.mark.parametrize("rescale", [True, False])
def test_gradients_match_autograd_through_reference(device, straight_through, rescale):
    x = torch.randn(3, 5, CHUNKED_IN, device=device, requires_grad=True)
    w = torch.randn(300, CHUNKED_IN, device=device, requires_grad=True)
    b = torch.randn(300, device=device, requires_grad=True)
    g = torch.randn(3, 5, 300, device=device)
    ops.noisy_linear(x, w, b, P, 8, 5, rescale=rescale, straight_through=straight_through).backward(g)

    xr, wr, br = (t.detach().clone().requires_grad_() for t in (x, w, b))
    noised = reference.block_noise(wr, P, 8, 5, rescale=rescale)  # dropout-style: autograd masks
    if straight_through:  # the paper's estimator: s*W + stopgrad(noised - s*W)
        s = 1 / (1 - P) if rescale else 1.0
        noised = s * wr + (noised - s * wr).detach()
    F.linear(xr, noised, br).backward(g)
    for ours, ref in ((x.grad, xr.grad), (w.grad, wr.grad), (b.grad, br.grad)):
        torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)


def test_gradcheck_float64_dropout_style():
    x = torch.randn(3, 8, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, 8, dtype=torch.float64, requires_grad=True)
    b = torch.randn(5, dtype=torch.float64, requires_grad=True)
    seed = torch.tensor(4)

    def fn(x, w, b):
        return ops.noisy_linear(x, w, b, 0.4, 4, seed, straight_through=False)

    assert torch.autograd.gradcheck(fn, (x, w, b))


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    for requires_grad in (False, True):
        x = torch.randn(4, 3, 16, device=device, requires_grad=requires_grad)
        w = torch.randn(8, 16, device=device, requires_grad=requires_grad)
        b = torch.randn(8, device=device, requires_grad=requires_grad)
        for bias in (b, None):
            args = (x, w, bias, torch.tensor(3), 0.25, 4, 0, True, True)
            torch.library.opcheck(torch.ops.quantnoise.noisy_linear.default, args)
        args = (x.detach(), w.detach().t().contiguous(), torch.tensor(3), 0.25, 4, 0, True)
        torch.library.opcheck(torch.ops.quantnoise.noisy_linear_backward_input.default, args)


def test_torch_compile_fullgraph():
    x, w, b = torch.randn(4, 16), torch.randn(8, 16, requires_grad=True), torch.randn(8)
    fn = torch.compile(lambda x, w, b, s: ops.noisy_linear(x, w, b, 0.25, 4, s).relu(), fullgraph=True)
    out = fn(x, w, b, torch.tensor(6))
    torch.testing.assert_close(out, F.linear(x, reference.block_noise(w.detach(), 0.25, 4, 6), b).relu())
    out.sum().backward()
    # the gradient values of autograd through the reference (straight-through: s*W + stopgrad(noised - s*W))
    wr = w.detach().clone().requires_grad_()
    noised = wr / 0.75 + (reference.block_noise(w.detach(), 0.25, 4, 6) - wr / 0.75).detach()
    F.linear(x, noised, b).relu().sum().backward()
    torch.testing.assert_close(w.grad, wr.grad, rtol=1e-5, atol=1e-5)


def test_bad_input_names_argument_and_value():
    w = torch.randn(8, 16)
    with pytest.raises(ValueError, match=r"noisy_linear: input must have shape \[\.\.\., 16\].*got \[4, 12\]"):
        ops.noisy_linear(torch.randn(4, 12), w, None, P, 4, 1)
    with pytest.raises(TypeError, match=r"noisy_linear: input must have weight's dtype Float, got Double"):
        ops.noisy_linear(torch.randn(4, 16, dtype=torch.float64), w, None, P, 4, 1)
    with pytest.raises(ValueError, match=r"noisy_linear: bias must have shape \[8\].*got shape \[7\]"):
        ops.noisy_linear(torch.randn(4, 16), w, torch.randn(7), P, 4, 1)
    with pytest.raises(ValueError, match=r"noisy_linear: weight must have shape \[out, in\], got \[8, 4, 4\]"):
        ops.noisy_linear(torch.randn(4, 16), w.view(8, 4, 4), None, P, 4, 1)
    with pytest.raises(ValueError, match=r"noisy_linear: block_size must divide the row length of weight \(16"):
        ops.noisy_linear(torch.randn(4, 16), w, None, P, 5, 1)
