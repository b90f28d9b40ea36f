"""quantnoise::block_noise_backward (the fused weight gradient of every noise kind) against plain-PyTorch
formulas, on every CPU path of its Philox draw (QUANTNOISE_CPU_ISA) and the emulated CUDA kernel.
Time budget: ~5 s."""

from __future__ import annotations

import platform

import pytest
import torch
from devices import device_params

import quantnoise_kernels as qn
from quantnoise_kernels import _C, ops, reference
from quantnoise_kernels import scalar as sq

DEVICES = device_params()


@pytest.fixture(params=["avx2", "portable"])
def isa(request, monkeypatch):
    """The CPU path under test (the AVX2 path draws eight Philox groups at once); skipped where the CPU lacks it."""
    missing = _C.cpu_isa_missing(request.param)
    if missing:
        pytest.skip(f"{request.param} path not run: this CPU ({platform.machine()}) lacks {missing}")
    monkeypatch.setenv("QUANTNOISE_CPU_ISA", request.param)
    assert qn.cpu_isa() == request.param
    return request.param


def _mask(n_blocks: int, p: float, seed: int, block_size: int, like: torch.Tensor) -> torch.Tensor:
    return reference.block_noise_mask(n_blocks, p, seed).repeat_interleave(block_size).view_as(like).to(like.device)


# Block sizes: 1 (one Philox lane per entry), the unrolled 8, a generic 3; rows not a multiple of 32 blocks.
@pytest.mark.parametrize("block_size", [1, 8, 3])
@pytest.mark.parametrize("straight_through", [True, False])
def test_drop_matches_formula(isa, block_size, straight_through):
    p, seed = 0.3, 12345
    w, g = torch.randn(37, 24), torch.randn(37, 24)
    out = ops.block_noise(w, p, block_size, seed)  # forward on the same path: the reference mask
    assert torch.equal(out, reference.block_noise(w, p, block_size, seed))
    got = torch.ops.quantnoise.block_noise_backward(g, w, torch.tensor(seed), p, block_size, 0, True, straight_through)
    expected = g / (1 - p)
    if not straight_through:
        expected = expected.masked_fill(_mask(w.numel() // block_size, p, seed, block_size, w), 0)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("straight_through", [True, False])
def test_fake_quant_block_1_is_grad_times_clamp_mask(device, straight_through):
    p, seed = 0.25, 99
    w = torch.randn(40, 36, device=device) * 3
    qp = sq.observe(w * 0.5, sq.QuantGrid(4, "channel"))  # a narrow grid: entries outside it
    g = torch.randn(40, 36, device=device)
    kind = ("fake_quant", None, qp.scale, qp.zero_point, qp.quant_min, qp.quant_max)
    got = torch.ops.quantnoise.block_noise_backward(g, w, torch.tensor(seed), p, 1, 0, True, straight_through, *kind)
    inside = reference.fake_quant_clamp_mask(w, qp.scale, qp.zero_point, qp.quant_min, qp.quant_max)
    assert 0 < int((~inside).sum()) < inside.numel()
    expected = torch.where(inside, g, torch.zeros(()))
    if not straight_through:
        expected = expected.masked_fill(_mask(w.numel(), p, seed, 1, w), 0)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_fake_quant_avx2_and_portable_agree(monkeypatch):
    """A 4096-wide weight: many 32-block Philox batches, split between threads."""
    w = torch.randn(64, 4096)
    qp = sq.observe(w, sq.QuantGrid(8, "channel"))
    outs = []
    for isa in ("portable", "avx2"):
        if _C.cpu_isa_missing(isa):
            pytest.skip(f"{isa} path not run: this CPU lacks {_C.cpu_isa_missing(isa)}")
        monkeypatch.setenv("QUANTNOISE_CPU_ISA", isa)
        outs.append(sq.fake_quant_noise(w, 0.1, qp, seed=torch.tensor(7)))
    assert torch.equal(outs[0], outs[1])
    ref = reference.block_noise_fake_quant(w, 0.1, 1, 7, qp.scale, qp.zero_point, qp.quant_min, qp.quant_max)
    assert torch.equal(outs[1], ref)


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    for requires_grad in (False, True):
        w = torch.randn(12, 16, device=device)
        g = torch.randn(12, 16, device=device, requires_grad=requires_grad)
        qp = sq.observe(w, sq.QuantGrid(8, "tensor"))
        for tail in [("drop",), ("fake_quant", None, qp.scale, qp.zero_point, 0, 255)]:
            args = (g, w, torch.tensor(3), 0.25, 4, 1, True, False, *tail)
            torch.library.opcheck(torch.ops.quantnoise.block_noise_backward.default, args)


def test_bad_grad_names_the_argument():
    w = torch.randn(8, 8)
    with pytest.raises(ValueError, match="grad must have weight's shape"):
        torch.ops.quantnoise.block_noise_backward(torch.randn(8, 4), w, torch.tensor(1), 0.1, 4)
    with pytest.raises(TypeError, match="grad must have weight's dtype"):
        torch.ops.quantnoise.block_noise_backward(torch.randn(8, 8, dtype=torch.float64), w, torch.tensor(1), 0.1, 4)
