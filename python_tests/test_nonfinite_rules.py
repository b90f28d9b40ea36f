"""The documented rules for NaN, infinity, magnitudes past float32's range and empty features (issue 13), on every
device and every CPU path:

- ``kmeans_assign``: a NaN score never wins (a NaN centroid is never chosen); a point with a NaN coordinate gets
  code 0 and distance NaN; scores that could overflow float32 (|x| and |c| around 1e19 and beyond) are ranked in
  float64, so huge data gets the nearest centroid, never a silent code 0.
- centroid noise (``block_noise(noise="centroid")``): the same rule for its nearest-centroid search.
- ``pq_linear(act_bits=8)``: a NaN in ``x`` makes its tensor's range NaN (per-token: its row's), so every output
  of that tensor (row) is NaN, forward and centroid gradient alike, as ``reference.act_fake_quant`` computes.
- ``noisy_linear`` / ``pq_linear`` with ``in_features = 0``: the bias broadcast, as ``F.linear``, and gradients.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from devices import device_params

from quantnoise_kernels import ops, reference

NAN, INF = float("nan"), float("inf")


def _assign_f64(x, c):
    """Codes by ``0.5*||c||^2 - x.c`` in float64, NaN never winning: the ranking of exact distances, without the
    ``||x||^2`` term that swamps the differences when |x| is 1e30 and |c| is 1 (direct float64 distances then tie)."""
    x, c = x.double(), c.double()
    scores = 0.5 * (c * c).sum(-1)[:, None, :] - x @ c.transpose(1, 2)  # [B, N, K]
    return torch.where(torch.isnan(scores), torch.inf, scores).min(-1).indices


@pytest.mark.parametrize("device", device_params())
def test_kmeans_assign_nan_rules(device, isa):
    x = torch.randn(2, 40, 8, device=device)
    c = torch.randn(2, 20, 8, device=device)
    x[0, 3, 5] = NAN  # a NaN point
    c[0, 0, 1] = NAN  # a NaN centroid in front: must not capture every point
    c[1, 7] = NAN
    codes, dist = ops.kmeans_assign(x, c)
    assert codes[0, 3] == 0 and torch.isnan(dist[0, 3])
    others = torch.ones(2, 40, dtype=torch.bool)
    others[0, 3] = False
    assert not (codes[0] == 0)[others[0]].any() and not (codes[1] == 7).any()
    assert torch.equal(codes[others], _assign_f64(x, c)[others])
    assert torch.isfinite(dist[others]).all()


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("scale_x,scale_c", [(1e20, 1e20), (1e30, 1.0), (1.0, 1e25), (3e38, 3e38)])
def test_kmeans_assign_magnitudes_past_float32(device, isa, scale_x, scale_c):
    torch.manual_seed(0)
    x = (torch.randn(1, 300, 8) * scale_x).to(device)
    c = (torch.randn(1, 50, 8) * scale_c).to(device)
    c[0, 4] = x[0, 10]  # an exact hit
    codes, _ = ops.kmeans_assign(x, c)
    assert codes[0, 10] == 4
    expected = _assign_f64(x, c)
    assert (codes == expected).float().mean() > 0.99, "float64 ranks them: the nearest centroid, not code 0"


@pytest.mark.parametrize("device", device_params())
def test_kmeans_assign_mixed_magnitudes_keep_normal_points_bitwise(device, isa):
    """Huge points are re-ranked one by one; the ordinary points keep the float32 codes they always had."""
    x = torch.randn(1, 500, 8, device=device)
    c = torch.randn(1, 64, 8, device=device)
    plain, _ = ops.kmeans_assign(x, c)
    x2 = x.clone()
    x2[0, ::50] *= 1e36
    codes, _ = ops.kmeans_assign(x2, c)
    normal = torch.ones(500, dtype=torch.bool)
    normal[::50] = False
    assert torch.equal(codes[0, normal], plain[0, normal])
    assert torch.equal(codes[0, ~normal], _assign_f64(x2, c)[0, ~normal])


@pytest.mark.parametrize("device", device_params())
def test_centroid_noise_nan_and_overflow_rules(device):
    weight = torch.randn(6, 8, device=device)
    weight[1, 0] = NAN  # block 2 (row 1, first 4): every distance NaN -> centroid 0
    weight[4] *= 1e20  # blocks 8 and 9: float32 distances overflow -> ranked in float64
    centroids = torch.randn(5, 4, device=device)
    centroids[0, 2] = NAN  # never chosen by a finite block
    centroids[3] = weight[4, :4]
    out = ops.block_noise(weight, 1.0, 4, 0, noise="centroid", centroids=centroids)
    expected = reference.block_noise_centroid(weight, 1.0, 4, 0, centroids)
    torch.testing.assert_close(out, expected, rtol=0, atol=0, equal_nan=True)
    assert torch.equal(out[4, :4], centroids[3])
    finite_blocks = torch.isfinite(weight.reshape(-1, 4)).all(1)
    assert not torch.isnan(out.reshape(-1, 4)[finite_blocks]).any()


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("granularity", ["tensor", "token"])
def test_pq_linear_act_quant_nan_rule(device, granularity, isa):
    x = torch.randn(4, 16, device=device, requires_grad=True)
    with torch.no_grad():
        x[2, 5] = NAN
    codes = torch.randint(0, 8, (6, 4), dtype=torch.uint8, device=device)
    centroids = torch.randn(8, 4, device=device, requires_grad=True)
    y = ops.pq_linear(x, codes, centroids, act_bits=8, act_granularity=granularity)
    c_ref = centroids.detach().clone().requires_grad_()
    y_ref = reference.pq_linear(x.detach(), codes, c_ref, act_bits=8, act_granularity=granularity)
    nan_rows = torch.tensor([True] * 4 if granularity == "tensor" else [False, False, True, False])
    assert torch.isnan(y[nan_rows]).all() and not torch.isnan(y[~nan_rows]).any()
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5, equal_nan=True)
    g = torch.randn_like(y)
    (grad_c,) = torch.autograd.grad((y * g).sum(), centroids)
    (grad_ref,) = torch.autograd.grad((y_ref * g).sum(), c_ref)
    torch.testing.assert_close(grad_c, grad_ref, rtol=1e-4, atol=1e-4, equal_nan=True)


@pytest.mark.parametrize("device", device_params())
def test_pq_linear_backward_skips_empty_bins(device, isa):
    """A (block, centroid) pair no code selects adds nothing: not 0 * NaN, as in the dense product."""
    codes = torch.tensor([[0, 2], [1, 3], [0, 3], [1, 2], [0, 2], [1, 3]], dtype=torch.uint8, device=device)
    centroids = torch.randn(5, 4, device=device)
    centroids[4] = NAN  # a centroid no code selects
    x = torch.randn(3, 8, device=device)
    x[0, 6] = NAN  # only block 1, whose codes are 2 and 3
    for xi, expect_nan in ((x.nan_to_num(0.0), []), (x, [2, 3])):
        xi = xi.clone().requires_grad_()
        c = centroids.clone().requires_grad_()
        g = torch.randn(3, 6, device=device)
        gx, gc = torch.autograd.grad((ops.pq_linear(xi, codes, c) * g).sum(), (xi, c))
        x_ref, c_ref = xi.detach().clone().requires_grad_(), c.detach().clone().requires_grad_()
        gx_ref, gc_ref = torch.autograd.grad((reference.pq_linear(x_ref, codes, c_ref) * g).sum(), (x_ref, c_ref))
        torch.testing.assert_close(gx, gx_ref, rtol=1e-5, atol=1e-5, equal_nan=True)
        torch.testing.assert_close(gc, gc_ref, rtol=1e-5, atol=1e-5, equal_nan=True)
        assert torch.isfinite(gx).all() and torch.isfinite(gc[[0, 1, 4]]).all()
        assert gc[4].eq(0).all() and torch.isnan(gc[expect_nan, 2]).all()  # x[0, 6] is d = 2 of block 1


@pytest.mark.parametrize("device", device_params())
def test_zero_in_features_is_the_bias(device):
    x = torch.randn(3, 0, device=device, requires_grad=True)
    bias = torch.randn(5, device=device, requires_grad=True)
    weight = torch.randn(5, 0, device=device, requires_grad=True)
    y = ops.noisy_linear(x, weight, bias, 0.5, 1, 0)
    torch.testing.assert_close(y, F.linear(x, weight, bias))
    y.sum().backward()
    assert x.grad.shape == (3, 0) and weight.grad.shape == (5, 0)
    torch.testing.assert_close(bias.grad, torch.full((5,), 3.0, device=device))
    codes = torch.zeros(5, 0, dtype=torch.uint8, device=device)
    centroids = torch.randn(4, 4, device=device, requires_grad=True)
    for path in ("auto", "lut", "tile"):
        y = ops.pq_linear(x, codes, centroids, bias, path=path)
        torch.testing.assert_close(y, bias.detach().expand(3, 5))
    y.sum().backward()
    torch.testing.assert_close(centroids.grad, torch.zeros(4, 4, device=device))
    assert ops.pq_linear(torch.randn(0, 8, device=device), codes[:, :0].new_zeros(5, 2), centroids).shape == (0, 5)
