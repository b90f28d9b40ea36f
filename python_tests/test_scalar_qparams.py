"""Quantization parameters from torchao's observers, on the real int-N grid (issue 8 item 3)."""

from __future__ import annotations

import pytest
import torch

from quantnoise_kernels.scalar.qparams import QParamsCache, QuantGrid, observe


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("method", ["tensor", "histogram", "channel"])
@pytest.mark.parametrize("symmetric", [False, True])
def test_grid_has_2_to_the_bits_levels(bits, method, symmetric):
    w = torch.randn(64, 128)
    qp = observe(w, QuantGrid(bits, method, symmetric))
    assert (qp.quant_min, qp.quant_max) == (
        (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if symmetric else (0, 2**bits - 1)
    )
    assert qp.scale.dtype == torch.float32 and qp.zero_point.dtype == torch.int32
    assert qp.scale.shape == ((64,) if method == "channel" else (1,))
    assert bool((qp.scale > 0).all())
    if symmetric:
        assert bool((qp.zero_point == 0).all())
    q = qp.fake_quantize(w).reshape(64, -1)  # PyTorch's fake_quantize_per_{tensor,channel}_affine
    codes = torch.round(q / qp.scale.reshape(-1, 1)) + qp.zero_point.reshape(-1, 1)
    assert codes.min() >= qp.quant_min and codes.max() <= qp.quant_max
    for row in codes if method == "channel" else [codes]:
        assert row.unique().numel() <= 2**bits
    if method == "tensor" and not symmetric and bits <= 4:
        assert codes.unique().numel() == 2**bits  # fairseq: 6 levels for bits=4 (fairseq#3858)


@pytest.mark.parametrize("bits", [4, 8])
def test_relative_mse_on_gaussian_near_theory(bits):
    """Uniform rounding error is scale^2/12: relative MSE = scale^2 / (12 E[w^2]) (min/max grid: no
    clipping). fairseq's int4 gave a relative MSE of 8.7 (its grid was anchored at 8-bit qparams)."""
    w = torch.randn(512, 512)
    qp = observe(w, QuantGrid(bits, "tensor"))
    q = qp.fake_quantize(w)
    rel_mse = float(((q - w) ** 2).mean() / (w**2).mean())
    theory = qp.scale.item() ** 2 / 12 / float((w**2).mean())
    assert rel_mse == pytest.approx(theory, rel=0.05)
    if bits == 4:
        assert q.unique().numel() == 16
        assert rel_mse < 0.05  # fairseq: 8.7


def test_per_channel_is_along_dim0():
    w = torch.randn(16, 3, 4, 4)
    w[3] *= 100  # one output channel with a large range
    qp = observe(w, QuantGrid(8, "channel"))
    flat = w.reshape(16, -1)
    expected = (flat.amax(1).clamp_min(0) - flat.amin(1).clamp_max(0)) / 255
    torch.testing.assert_close(qp.scale, expected, rtol=1e-6, atol=0)
    assert qp.scale[3] > 50 * qp.scale[2]


def test_nan_or_empty_input_is_a_clear_error():
    w = torch.randn(8, 8)
    w[2, 3] = float("nan")
    with pytest.raises(ValueError, match=r"weight holds 1 NaN/inf"):
        observe(w, QuantGrid(8, "tensor"), name="weight")
    with pytest.raises(ValueError, match="must not be empty"):
        observe(torch.empty(0, 4), QuantGrid(8, "tensor"))


@pytest.mark.parametrize("kwargs", [{"bits": 1}, {"bits": 9}, {"bits": 8.0}, {"method": "minmax"}])
def test_bad_grid_names_the_argument(kwargs):
    name = next(iter(kwargs))
    with pytest.raises(ValueError, match=f"{name} must"):
        QuantGrid(**kwargs)


def test_cache_refreshes_every_update_step_calls():
    cache = QParamsCache(QuantGrid(8, "tensor"), update_step=3)
    w = torch.randn(8, 8)
    first = cache(w)
    assert cache(w * 10) is first and cache(w * 10) is first  # calls 2 and 3 reuse it
    fourth = cache(w * 10)  # call 4: counter 3 % 3 == 0, refreshed
    assert fourth is not first and fourth.scale.item() == pytest.approx(first.scale.item() * 10, rel=1e-5)
    with pytest.raises(ValueError, match="update_step must be a positive int"):
        QParamsCache(QuantGrid(), 0)
