"""The ``fake_quant`` noise kind (issue 8 item 2): ``block_noise``, its gradient and ``noisy_linear``.

Oracles: ``reference.block_noise_fake_quant`` (plain PyTorch, the kernels' rule written out) and
PyTorch's own ``torch.fake_quantize_per_{tensor,channel}_affine`` (at p = 1). The grids are built
here from min/max with plain tensor arithmetic, independently of the code under test.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from devices import device_params

from quantnoise_kernels import ops, reference

DEVICES = device_params()
FLOAT_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
# (shape, block_size): fairseq's per-weight noise, iPQ blocks, a k x k conv, a generic block size.
SHAPES = [((64, 32), 1), ((97, 12), 4), ((33, 16, 3, 3), 9), ((16, 24), 3), ((1, 8), 8)]


def _grid(w: torch.Tensor, bits: int = 8, per_channel: bool = False, symmetric: bool = False) -> dict:
    """Min/max grid of ``w`` as op keyword arguments (scale, zero_point, quant_min, quant_max)."""
    flat = w.detach().float().reshape(w.shape[0], -1)
    lo = (flat.amin(1) if per_channel else flat.amin().reshape(1)).clamp(max=0)
    hi = (flat.amax(1) if per_channel else flat.amax().reshape(1)).clamp(min=0)
    if symmetric:
        qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        scale = torch.maximum(-lo, hi) / ((qmax - qmin) / 2)
        zp = torch.zeros_like(scale, dtype=torch.int32)
    else:
        qmin, qmax = 0, 2**bits - 1
        scale = (hi - lo) / (qmax - qmin)
        zp = torch.clamp(qmin - torch.round(lo / scale.clamp(min=1e-12)), qmin, qmax).to(torch.int32)
    scale = scale.clamp(min=1e-8).to(w.device)
    return {"scale": scale, "zero_point": zp.to(w.device), "quant_min": qmin, "quant_max": qmax}


def _ref(w, p, block_size, seed, grid, offset=0):
    return reference.block_noise_fake_quant(
        w, p, block_size, seed, grid["scale"], grid["zero_point"], grid["quant_min"], grid["quant_max"], offset
    )


GRIDS = [(False, False, 8), (True, False, 4), (True, True, 8), (False, True, 2)]  # per_channel, symmetric, bits


def _reference_cases() -> list:
    """Every dtype x shape x grid on the CPU (and a GPU); a cross-section of 16 under the emulator (~1000x slower),
    which still covers every dtype, shape and grid."""
    cases = []
    for dev in DEVICES:
        emu = getattr(dev, "id", None) == "cuda-emu"
        value, marks, dev_id = (dev.values[0], dev.marks, dev.id) if emu or hasattr(dev, "values") else (dev, (), dev)
        for i, dtype in enumerate(FLOAT_DTYPES):
            for j, (shape, bs) in enumerate(SHAPES):
                for k, grid in enumerate(GRIDS):
                    if emu and (i + j + k) % 5:
                        continue
                    case_id = f"{dev_id}-{str(dtype)[6:]}-{'x'.join(map(str, shape))}/{bs}-{k}"
                    cases.append(pytest.param(value, dtype, shape, bs, *grid, marks=marks, id=case_id))
    return cases


@pytest.mark.parametrize("device,dtype,shape,block_size,per_channel,symmetric,bits", _reference_cases())
def test_matches_reference(device, dtype, shape, block_size, per_channel, symmetric, bits):
    w = torch.randn(shape, dtype=dtype, device=device) * 2
    grid = _grid(w, bits, per_channel, symmetric)
    grid["scale"] = grid["scale"] * 0.7  # a grid narrower than the weight: kept entries get clamped
    w_before = w.clone()
    seed = int(torch.randint(0, 2**62, ()))
    out = ops.block_noise(w, 0.3, block_size, seed, offset=2, noise="fake_quant", **grid)
    assert out.shape == w.shape and out.dtype == dtype and out.is_contiguous()
    torch.testing.assert_close(out, _ref(w, 0.3, block_size, seed, grid, offset=2), rtol=0, atol=0)
    assert torch.equal(w, w_before), "the input weight must never be written"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("per_channel", [False, True])
def test_p1_is_pytorch_fake_quantize(device, per_channel):
    w = torch.randn(48, 40, device=device)
    grid = _grid(w, 8, per_channel)
    out = ops.block_noise(w, 1.0, 1, 5, noise="fake_quant", **grid)
    if per_channel:
        expected = torch.fake_quantize_per_channel_affine(w, grid["scale"], grid["zero_point"], 0, 0, 255)
    else:
        expected = torch.fake_quantize_per_tensor_affine(w, grid["scale"], grid["zero_point"], 0, 255)
    assert torch.equal(out, expected)


@pytest.mark.parametrize("device", DEVICES)
def test_int4_has_16_levels_and_noise_from_the_clamped_weight(device):
    w = torch.randn(256, 64, device=device)
    grid = _grid(w, 4)
    grid["scale"] = grid["scale"] * 0.5  # half the range: a quarter of the weights lie outside
    out = ops.block_noise(w, 1.0, 1, 5, noise="fake_quant", **grid)
    assert out.unique().numel() == 16
    lo, hi = reference.fake_quant_bounds(grid["scale"], grid["zero_point"], 0, 15)
    outliers = w > hi.item()
    assert outliers.any()
    # fairseq#2968: fairseq gave clamp(w) + Q(w) - w for an outlier; a noised outlier is the grid's top level here
    assert torch.equal(out[outliers], torch.full_like(out[outliers], hi.item()))
    kept = ops.block_noise(w, 0.0, 1, 5, noise="fake_quant", **grid)
    torch.testing.assert_close(kept, w.clamp(lo.item(), hi.item()), rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("straight_through", [True, False])
@pytest.mark.parametrize("per_channel", [False, True])
def test_gradient_is_straight_through_times_clamp_mask(device, straight_through, per_channel):
    p, bs = 0.4, 4
    w = (torch.randn(32, 48, device=device) * 2).requires_grad_()
    grid = _grid(w, 8, per_channel)
    grid["scale"] = grid["scale"] * 0.6
    g = torch.randn(32, 48, device=device)
    ops.block_noise(w, p, bs, 7, straight_through=straight_through, noise="fake_quant", **grid).backward(g)
    inside = reference.fake_quant_clamp_mask(w.detach(), grid["scale"], grid["zero_point"], 0, 255)
    assert 0 < (~inside).sum() < inside.numel()
    expected = g * inside
    if not straight_through:
        noised = reference.block_noise_mask(w.numel() // bs, p, 7).repeat_interleave(bs).view_as(w)
        expected = expected.masked_fill(noised.to(device), 0)
    torch.testing.assert_close(w.grad, expected, rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_nan_weight_stays_nan(device):
    w = torch.randn(8, 16, device=device)
    grid = _grid(w)
    w[3, 5] = float("nan")
    out = ops.block_noise(w, 1.0, 1, 1, noise="fake_quant", **grid)
    assert out[3, 5].isnan() and out.isnan().sum() == 1


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    for requires_grad in (False, True):
        w = torch.randn(24, 16, device=device, requires_grad=requires_grad)
        for per_channel in (False, True):
            grid = _grid(w, 4, per_channel)
            kind = ("fake_quant", None, grid["scale"], grid["zero_point"], 0, 15)
            args = (w, torch.tensor(3), 0.25, 4, 1, True, True, *kind)
            torch.library.opcheck(torch.ops.quantnoise.block_noise.default, args)


def test_torch_compile_fullgraph():
    w = torch.randn(64, 32, requires_grad=True)
    grid = _grid(w, 8, per_channel=True)

    @torch.compile(fullgraph=True, backend="inductor")
    def step(weight, seed):
        return ops.block_noise(weight, 0.25, 1, seed, noise="fake_quant", **grid).sum(dim=0)

    out = step(w, torch.tensor(123))
    torch.testing.assert_close(out, _ref(w.detach(), 0.25, 1, 123, grid).sum(dim=0), rtol=1e-5, atol=1e-5)
    out.sum().backward()
    inside = reference.fake_quant_clamp_mask(w.detach(), grid["scale"], grid["zero_point"], 0, 255)
    torch.testing.assert_close(w.grad, inside.float())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("straight_through", [True, False])
def test_noisy_linear_fake_quant(device, straight_through):
    x = torch.randn(5, 3, 64, device=device, requires_grad=True)
    w = (torch.randn(48, 64, device=device) * 2).requires_grad_()
    b = torch.randn(48, device=device, requires_grad=True)
    grid = _grid(w, 8, per_channel=True)
    grid["scale"] = grid["scale"] * 0.6
    kw = {"straight_through": straight_through, "noise": "fake_quant", **grid}
    y = ops.noisy_linear(x, w, b, 0.3, 1, 41, offset=2, **kw)
    w_ref = w.detach().clone().requires_grad_()
    x_ref, b_ref = x.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
    y_ref = F.linear(x_ref, ops.block_noise(w_ref, 0.3, 1, 41, offset=2, **kw), b_ref)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(y)
    y.backward(g)
    y_ref.backward(g)
    for got, want in ((x.grad, x_ref.grad), (w.grad, w_ref.grad), (b.grad, b_ref.grad)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_noisy_linear_opcheck(device):
    x, w = torch.randn(3, 16, device=device, requires_grad=True), torch.randn(8, 16, device=device, requires_grad=True)
    grid = _grid(w, 8)
    kind = ("fake_quant", None, grid["scale"], grid["zero_point"], 0, 255)
    torch.library.opcheck(
        torch.ops.quantnoise.noisy_linear.default, (x, w, None, torch.tensor(4), 0.5, 2, 0, True, True, *kind)
    )
    g = torch.randn(3, 8, device=device)
    args = (g, w.detach(), torch.tensor(4), 0.5, 2, 0, True, *kind)
    torch.library.opcheck(torch.ops.quantnoise.noisy_linear_backward_input.default, args)


def _bad(w, **over):
    grid = _grid(w) | over
    return lambda: ops.block_noise(w, 0.3, 1, 1, noise="fake_quant", **grid)


@pytest.mark.parametrize(
    "over,exc,match",
    [
        ({"quant_min": 0, "quant_max": 2}, ValueError, r"quant_min and quant_max must span 2 to 8 bits .*got \[0, 2\]"),
        ({"quant_min": 0, "quant_max": 511}, ValueError, r"span 2 to 8 bits \(4 to 256 levels\), got \[0, 511\]"),
        ({"quant_min": 0, "quant_max": 256}, ValueError, r"span 2 to 8 bits \(4 to 256 levels\), got \[0, 256\]"),
        ({"quant_min": -128, "quant_max": 128}, ValueError, r"span 2 to 8 bits .*got \[-128, 128\]"),
        ({"scale": torch.tensor([0.0])}, ValueError, r"scale must be positive and finite, got values in \[0, 0\]"),
        ({"scale": torch.tensor([-1.0])}, ValueError, r"scale must be positive and finite"),
        ({"scale": torch.tensor([0.1], dtype=torch.float64)}, TypeError, r"scale must be float32, got dtype Double"),
        ({"scale": torch.ones(3)}, ValueError, r"scale must have shape \[1\] \(per tensor\) or \[8\]"),
        ({"zero_point": torch.tensor([300], dtype=torch.int32)}, ValueError, r"zero_point must be in \[quant_min=0"),
        ({"zero_point": torch.tensor([3])}, TypeError, r"zero_point must be int32, got dtype Long"),
    ],
)
def test_bad_grid_names_the_argument(over, exc, match):
    with pytest.raises(exc, match=match):
        _bad(torch.randn(8, 16), **over)()


def test_bad_kind_arguments():
    w = torch.randn(8, 16)
    with pytest.raises(ValueError, match=r"scale and zero_point must be given for noise='fake_quant'"):
        ops.block_noise(w, 0.3, 1, 1, noise="fake_quant")
    with pytest.raises(ValueError, match=r"scale and zero_point apply to noise='fake_quant' only, got noise='drop'"):
        ops.block_noise(w, 0.3, 1, 1, **_grid(w))
    with pytest.raises(ValueError, match=r"p must be in \[0, 1\], got 1.5"):
        ops.block_noise(w, 1.5, 1, 1, noise="fake_quant", **_grid(w))
