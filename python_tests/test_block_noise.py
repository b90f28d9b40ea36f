"""quantnoise::block_noise against the plain-PyTorch reference, plus its statistics and contracts."""

from __future__ import annotations

import math

import pytest
import torch
from devices import device_params

from quantnoise_kernels import ops, reference

DEVICES = device_params()
FLOAT_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
# (shape, block_size): Linear, awkward sizes, Conv1d/Conv2d 1x1 and k x k, a single block.
SHAPES = [((64, 32), 8), ((97, 12), 4), ((1, 8), 8), ((33, 16, 3, 3), 9), ((8, 16, 1, 1), 4), ((5, 6, 7), 21)]


def _weight(shape, dtype, device, *, contiguous=True):
    if contiguous:
        return torch.randn(shape, dtype=dtype, device=device)
    # A transposed view of the same shape: non-contiguous strides, same values layout rules.
    return torch.randn(tuple(reversed(shape)), dtype=dtype, device=device).permute(*reversed(range(len(shape))))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shape,block_size", SHAPES)
@pytest.mark.parametrize("contiguous", [True, False])
def test_matches_reference(device, dtype, shape, block_size, contiguous):
    w = _weight(shape, dtype, device, contiguous=contiguous)
    w_before = w.clone()
    seed = int(torch.randint(0, 2**62, ()))
    out = ops.block_noise(w, 0.3, block_size, seed, offset=5)
    expected = reference.block_noise(w, 0.3, block_size, seed, offset=5)
    assert out.shape == w.shape and out.dtype == dtype and out.device == w.device and out.is_contiguous()
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    assert torch.equal(w, w_before), "the input weight must never be written"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("rescale", [True, False])
def test_rescale_option(device, rescale):
    w = torch.randn(32, 64, device=device)
    out = ops.block_noise(w, 0.5, 8, 3, rescale=rescale)
    torch.testing.assert_close(out, reference.block_noise(w, 0.5, 8, 3, rescale=rescale), rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_mask_constant_within_blocks_and_survivors_rescaled(device):
    p, block_size = 0.4, 8
    w = torch.rand(256, 128, device=device) + 0.5  # no zeros: a zero output means dropped
    out = ops.block_noise(w, p, block_size, 11).view(-1, block_size)
    dropped = out == 0
    assert torch.equal(dropped.all(dim=1), dropped.any(dim=1)), "a block is dropped whole or not at all"
    kept = ~dropped.any(dim=1)
    w_blocks = w.view(-1, block_size)
    # Survivors are W scaled by 1/(1-p) in the weight's precision ...
    assert torch.equal(out[kept], w_blocks[kept] * (1.0 / (1.0 - p)))
    # ... which is W/(1-p) up to one rounding.
    torch.testing.assert_close(out[kept], w_blocks[kept] / (1.0 - p), rtol=2**-23, atol=0)


@pytest.mark.parametrize("p", [0.05, 0.3, 0.9])
def test_dropped_fraction_within_4_sigma(p):
    n_blocks = 4096 * 64
    out = ops.block_noise(torch.ones(4096, 64 * 4), p, 4, 2024)
    fraction = (out.view(-1, 4)[:, 0] == 0).double().mean().item()
    sigma = math.sqrt(p * (1 - p) / n_blocks)
    assert abs(fraction - p) < 4 * sigma, f"dropped {fraction:.5f}, expected {p} +- {4 * sigma:.5f}"


@pytest.mark.parametrize("device", DEVICES)
def test_seed_and_offset_determine_the_mask(device):
    w = torch.randn(64, 64, device=device)
    a = ops.block_noise(w, 0.5, 4, 7)
    assert torch.equal(a, ops.block_noise(w, 0.5, 4, 7)), "same seed, same result"
    assert torch.equal(a, ops.block_noise(w, 0.5, 4, torch.tensor(7))), "int and tensor seeds agree"
    assert not torch.equal(a, ops.block_noise(w, 0.5, 4, 8)), "different seeds differ"
    assert not torch.equal(a, ops.block_noise(w, 0.5, 4, 7, offset=1)), "different offsets differ"


@pytest.mark.parametrize("device", DEVICES)
def test_p_edges(device):
    w = torch.randn(16, 32, device=device)
    same = ops.block_noise(w, 0.0, 8, 1)
    assert torch.equal(same, w) and same.data_ptr() != w.data_ptr(), "p=0: an equal copy, not an alias"
    assert torch.equal(ops.block_noise(w, 1.0, 8, 1, rescale=False), torch.zeros_like(w)), "p=1: all dropped"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(0, 8), (4, 0), (0, 4, 3, 3)])
def test_empty_weight(device, shape):
    w = torch.randn(shape, device=device, requires_grad=True)
    out = ops.block_noise(w, 0.5, 4 if shape[1] else 1, 1) if shape != (0, 4, 3, 3) else ops.block_noise(w, 0.5, 9, 1)
    assert out.shape == w.shape
    out.sum().backward()
    assert w.grad.shape == w.shape


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("rescale", [True, False])
def test_straight_through_gradient(device, rescale):
    p = 0.3
    w = torch.randn(32, 48, device=device, requires_grad=True)
    g = torch.randn(32, 48, device=device)
    ops.block_noise(w, p, 8, 5, rescale=rescale).backward(g)
    # The paper's estimator: W + stopgrad(m * (phi(W) - W)), times s.
    w_ref = w.detach().clone().requires_grad_()
    s = 1 / (1 - p) if rescale else 1.0
    noised = reference.block_noise(w_ref.detach(), p, 8, 5, rescale=rescale)
    (s * w_ref + (noised - s * w_ref).detach()).backward(g)
    torch.testing.assert_close(w.grad, w_ref.grad, rtol=1e-6, atol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("rescale", [True, False])
def test_dropout_style_gradient(device, rescale):
    p = 0.3
    w = torch.randn(32, 48, device=device, requires_grad=True)
    g = torch.randn(32, 48, device=device)
    ops.block_noise(w, p, 8, 5, rescale=rescale, straight_through=False).backward(g)
    # Autograd through the reference's masked_fill: s*g on kept blocks, 0 on dropped ones.
    w_ref = w.detach().clone().requires_grad_()
    reference.block_noise(w_ref, p, 8, 5, rescale=rescale).backward(g)
    torch.testing.assert_close(w.grad, w_ref.grad, rtol=1e-6, atol=0)


def test_gradcheck_float64():
    """The dropout-style backward is the true derivative: check it numerically, to second order."""
    w = torch.randn(6, 8, dtype=torch.float64, requires_grad=True)
    seed = torch.tensor(9)

    def fn(x):
        return ops.block_noise(x, 0.4, 4, seed, straight_through=False)

    assert torch.autograd.gradcheck(fn, (w,))
    assert torch.autograd.gradgradcheck(fn, (w,))


def test_gradgradcheck_straight_through_float64():
    """The straight-through backward is an estimator (not the numerical derivative), but the
    backward itself is differentiable, which gradgradcheck verifies."""
    w = torch.randn(6, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda x: ops.block_noise(x, 0.4, 4, 9), (w,))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("straight_through", [True, False])
def test_opcheck(device, straight_through):
    for requires_grad in (False, True):
        for shape, block_size in SHAPES[:4]:
            w = torch.randn(shape, device=device, requires_grad=requires_grad)
            args = (w, torch.tensor(3), 0.25, block_size, 1, True, straight_through, "drop")
            torch.library.opcheck(torch.ops.quantnoise.block_noise.default, args)


def test_torch_compile_fullgraph():
    w = torch.randn(64, 32, requires_grad=True)
    seed = torch.tensor(123)

    @torch.compile(fullgraph=True, backend="inductor")
    def step(weight, s):
        return (ops.block_noise(weight, 0.25, 8, s) * 2).sum(dim=0)

    out = step(w, seed)
    torch.testing.assert_close(out, (reference.block_noise(w.detach(), 0.25, 8, 123) * 2).sum(dim=0))
    out.sum().backward()
    torch.testing.assert_close(w.grad, torch.full_like(w, 2 / 0.75))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"p": -0.1}, r"p must be in \[0, 1\), got -0.1"),
        ({"p": 1.0}, r"p must be in \[0, 1\) when rescale=True.*got 1"),
        ({"p": 1.5, "rescale": False}, r"p must be in \[0, 1\), got 1.5"),
        ({"p": float("nan")}, r"p must be in \[0, 1\), got nan"),
        ({"block_size": 0}, r"block_size must be positive, got 0"),
        ({"block_size": -4}, r"block_size must be positive, got -4"),
        ({"block_size": 5}, r"block_size must divide the row length of weight \(32.*got block_size=5"),
        ({"noise": "shuffle"}, r"noise must be one of \{'drop'\}, got 'shuffle'"),
    ],
)
def test_bad_values_name_argument_and_value(kwargs, match):
    args = {"p": 0.2, "block_size": 8} | kwargs
    w = torch.randn(4, 32)
    with pytest.raises(ValueError, match=match):
        ops.block_noise(w, args.pop("p"), args.pop("block_size"), 1, **args)


def test_bad_tensors_name_argument_and_value():
    with pytest.raises(TypeError, match=r"weight must be float32, float16, bfloat16 or float64, got dtype Int"):
        ops.block_noise(torch.ones(4, 8, dtype=torch.int32), 0.1, 4, 1)
    with pytest.raises(ValueError, match=r"weight must have at least 2 dimensions \[out, \.\.\.\], got shape \[16\]"):
        ops.block_noise(torch.randn(16), 0.1, 4, 1)
    with pytest.raises(TypeError, match=r"seed must be an int64 tensor, got dtype Float"):
        ops.block_noise(torch.randn(4, 8), 0.1, 4, torch.tensor(1.0))
    with pytest.raises(ValueError, match=r"seed must hold exactly one element, got shape \[2\]"):
        ops.block_noise(torch.randn(4, 8), 0.1, 4, torch.tensor([1, 2]))
