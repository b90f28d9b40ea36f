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


@pytest.mark.parametrize("block_size", [1, 4, 8, 3])
def test_matches_reference_on_every_cpu_path(isa, block_size):
    """Each CPU path's Philox draws (the AVX2 one of the avx2 and avx512 paths, the portable one)
    and block loops: the fixed block sizes 1, 4, 8 and a generic 3, an offset, seeds whose two 32-bit
    words both matter, 300 x 24 entries (tasks of whole 32-block batches and a partial last one)."""
    w = torch.randn(300, 24)
    for seed in (int(torch.randint(2**32, 2**62, ())), 7):
        out = ops.block_noise(w, 0.4, block_size, seed, offset=3)
        torch.testing.assert_close(out, reference.block_noise(w, 0.4, block_size, seed, offset=3), rtol=0, atol=0)


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
        ({"p": -0.1}, r"p must be in \[0, 1\], got -0.1"),
        ({"p": 1.0}, r"p must be in \[0, 1\) when rescale=True.*got 1"),
        ({"p": 1.5, "rescale": False}, r"p must be in \[0, 1\], got 1.5"),
        ({"p": float("nan")}, r"p must be in \[0, 1\], got nan"),
        ({"block_size": 0}, r"block_size must be positive, got 0"),
        ({"block_size": -4}, r"block_size must be positive, got -4"),
        ({"block_size": 5}, r"block_size must divide the row length of weight \(32.*got block_size=5"),
        ({"noise": "shuffle"}, r"noise must be one of \{'drop', 'fake_quant', 'centroid'\}, got 'shuffle'"),
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


# ---------------------------------------------------------------------------------------------
# noise="centroid": each noised block becomes its nearest centroid of a given codebook (s = 1).


def _codebook(k, block_size, dtype, device):
    return torch.randn(k, block_size, dtype=dtype, device=device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shape,block_size", SHAPES)
@pytest.mark.parametrize("contiguous", [True, False])
def test_centroid_matches_reference(device, dtype, shape, block_size, contiguous):
    w = _weight(shape, dtype, device, contiguous=contiguous)
    w_before = w.clone()
    c = _codebook(37, block_size, dtype, device)
    seed = int(torch.randint(0, 2**62, ()))
    out = ops.block_noise(w, 0.4, block_size, seed, offset=3, noise="centroid", centroids=c)
    expected = reference.block_noise_centroid(w, 0.4, block_size, seed, c, offset=3)
    assert out.shape == w.shape and out.dtype == dtype and out.device == w.device and out.is_contiguous()
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    assert torch.equal(w, w_before), "the input weight must never be written"


@pytest.mark.parametrize("device", DEVICES)
def test_centroid_noise_semantics(device):
    """Noised blocks are rows of the codebook, kept blocks are unscaled copies, the mask is drop's."""
    p, bs = 0.5, 8
    w = torch.randn(64, 32, device=device)
    c = _codebook(256, bs, torch.float32, device)
    out = ops.block_noise(w, p, bs, 7, noise="centroid", centroids=c).view(-1, bs)
    mask = reference.block_noise_mask(out.shape[0], p, 7, device=device)
    assert torch.equal(out[~mask], w.view(-1, bs)[~mask]), "kept blocks are copied, rescale ignored"
    # A noised block is its nearest centroid: no centroid is strictly closer.
    d_chosen = ((out[mask] - w.view(-1, bs)[mask]) ** 2).sum(1)
    d_all = ((w.view(-1, bs)[mask].double()[:, None, :] - c.double()[None]) ** 2).sum(-1)
    assert (d_chosen.double() <= d_all.min(dim=1).values + 1e-4).all()
    assert (out[mask][:, None, :] == c[None]).all(-1).any(1).all(), "noised blocks are codebook rows"
    # Same mask as noise="drop" for the same seed.
    dropped = ops.block_noise(w, p, bs, 7, rescale=False).view(-1, bs)
    assert torch.equal((dropped == 0).all(1), mask)


@pytest.mark.parametrize("device", DEVICES)
def test_centroid_ties_go_to_the_lowest_index(device):
    bs = 4
    c = torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0], [1.0, 0, 0, 0], [0, 0, 0, 1.0]], device=device)
    # Each block is equidistant from centroids 0 and 2 (equal) and from 0 and 1.
    w = torch.full((8, 8), 0.5, device=device) * torch.tensor([1.0, 1, 0, 0, 1, 1, 0, 0], device=device)
    out = ops.block_noise(w, 1.0, bs, 1, noise="centroid", centroids=c).view(-1, bs)
    assert torch.equal(out, c[0].expand_as(out))


@pytest.mark.parametrize("device", DEVICES)
def test_centroid_p_edges(device):
    w = torch.randn(16, 32, device=device)
    c = _codebook(16, 8, torch.float32, device)
    same = ops.block_noise(w, 0.0, 8, 1, noise="centroid", centroids=c)
    assert torch.equal(same, w) and same.data_ptr() != w.data_ptr()
    # p = 1 (full quantization) is allowed with the default rescale=True: s = 1 for centroid noise.
    full = ops.block_noise(w, 1.0, 8, 1, noise="centroid", centroids=c)
    codes = reference.nearest_centroid(w.reshape(-1, 8), c)
    torch.testing.assert_close(full, c[codes].view_as(w), rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(0, 8), (4, 0)])
def test_centroid_empty_weight(device, shape):
    w = torch.randn(shape, device=device, requires_grad=True)
    out = ops.block_noise(w, 0.5, 4, 1, noise="centroid", centroids=_codebook(3, 4, torch.float32, device))
    assert out.shape == w.shape
    out.sum().backward()
    assert w.grad.shape == w.shape


@pytest.mark.parametrize("device", DEVICES)
def test_centroid_straight_through_gradient(device):
    """The paper's estimator W + stopgrad(m * (phi(W) - W)) with s = 1: grad to every entry."""
    p, bs = 0.3, 8
    w = torch.randn(32, 48, device=device, requires_grad=True)
    c = _codebook(16, bs, torch.float32, device)
    g = torch.randn(32, 48, device=device)
    out = ops.block_noise(w, p, bs, 5, noise="centroid", centroids=c)
    out.backward(g)
    w_ref = w.detach().clone().requires_grad_()
    noised = reference.block_noise_centroid(w_ref.detach(), p, bs, 5, c)
    (w_ref + (noised - w_ref).detach()).backward(g)
    torch.testing.assert_close(w.grad, w_ref.grad, rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_centroid_dropout_style_gradient(device):
    """Dropout-style: the gradient of the reference's block-wise selection (0 on noised blocks)."""
    p, bs = 0.3, 8
    w = torch.randn(32, 48, device=device, requires_grad=True)
    c = _codebook(16, bs, torch.float32, device)
    g = torch.randn(32, 48, device=device)
    ops.block_noise(w, p, bs, 5, straight_through=False, noise="centroid", centroids=c).backward(g)
    w_ref = w.detach().clone().requires_grad_()
    mask = reference.block_noise_mask(w.numel() // bs, p, 5, device=device).repeat_interleave(bs).view_as(w)
    noised = reference.block_noise_centroid(w_ref.detach(), p, bs, 5, c)
    torch.where(mask, noised, w_ref).backward(g)
    torch.testing.assert_close(w.grad, w_ref.grad, rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("straight_through", [True, False])
def test_centroid_opcheck(device, straight_through):
    for requires_grad in (False, True):
        for shape, block_size in SHAPES[:4]:
            w = torch.randn(shape, device=device, requires_grad=requires_grad)
            c = torch.randn(8, block_size, device=device)
            args = (w, torch.tensor(3), 0.25, block_size, 1, True, straight_through, "centroid", c)
            torch.library.opcheck(torch.ops.quantnoise.block_noise.default, args)


def test_centroid_gradcheck_float64():
    """Dropout-style centroid noise is piecewise: identity on kept blocks, constant on noised ones."""
    w = torch.randn(6, 8, dtype=torch.float64, requires_grad=True)
    c = torch.randn(5, 4, dtype=torch.float64)
    seed = torch.tensor(9)
    assert torch.autograd.gradcheck(
        lambda x: ops.block_noise(x, 0.4, 4, seed, straight_through=False, noise="centroid", centroids=c), (w,)
    )


def test_centroid_torch_compile_fullgraph():
    w = torch.randn(64, 32, requires_grad=True)
    c = torch.randn(16, 8)
    seed = torch.tensor(123)

    @torch.compile(fullgraph=True, backend="inductor")
    def step(weight, s, codebook):
        return ops.block_noise(weight, 0.25, 8, s, noise="centroid", centroids=codebook) * 2

    out = step(w, seed, c)
    torch.testing.assert_close(out, reference.block_noise_centroid(w.detach(), 0.25, 8, 123, c) * 2, rtol=0, atol=0)
    out.sum().backward()
    torch.testing.assert_close(w.grad, torch.full_like(w, 2.0))


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        ({"noise": "centroid"}, ValueError, r"centroids must be given for noise='centroid'"),
        ({"centroids": torch.randn(4, 8)}, ValueError, r"centroids apply to noise='centroid' only, got noise='drop'"),
        (
            {"noise": "centroid", "centroids": torch.randn(4, 4)},
            ValueError,
            r"centroids must have shape \[K, block_size=8\] with K > 0, got shape \[4, 4\]",
        ),
        (
            {"noise": "centroid", "centroids": torch.randn(0, 8)},
            ValueError,
            r"centroids must have shape \[K, block_size=8\] with K > 0, got shape \[0, 8\]",
        ),
        (
            {"noise": "centroid", "centroids": torch.randn(4, 8, dtype=torch.float64)},
            TypeError,
            r"centroids must have weight's dtype Float, got Double",
        ),
    ],
)
def test_centroid_bad_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        ops.block_noise(torch.randn(4, 32), 0.2, 8, 1, **kwargs)
