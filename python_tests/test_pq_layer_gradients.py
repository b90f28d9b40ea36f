"""PQ layers' gradient options compared by VALUE with autograd through the plain-PyTorch reference:
PQEmbedding's padding_idx, scale_grad_by_freq, max_norm and grad_reduction, PQLinear's
grad_reduction. Every centroid gradient is checked, so a padding row leaking into it, an inverted
frequency scale or a wrong mean divisor changes the result."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from devices import device_params

from quantnoise_kernels import reference
from quantnoise_kernels.pq import PQEmbedding, PQLinear

DEVICES = device_params()
ROWS, DIM, BS, K = 40, 16, 4, 32
PAD = 3


def _codebook(rows: int, row_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes that leave centroid K-1 empty (its mean gradient must be exactly 0) and float32 centroids."""
    codes = torch.randint(0, K - 1, (rows, row_len // BS), dtype=torch.uint8)
    return codes, torch.randn(K, BS)


def _mean_divisor(codes: torch.Tensor) -> torch.Tensor:
    """Blocks per centroid over the whole layer, empty clusters counted as 1 (their gradient is 0)."""
    return torch.bincount(codes.reshape(-1).long(), minlength=K).clamp(min=1).unsqueeze(1).float()


def _reference_embedding(idx, codes, c, padding_idx, max_norm, scale_grad_by_freq):
    """Decode, look up (torch's padding_idx and scale_grad_by_freq), renormalise the looked-up rows
    with a detached norm (PQEmbedding's documented max_norm: the codebook is not modified)."""
    w = reference.pq_decode(codes, c, (ROWS, DIM))
    out = F.embedding(idx, w, padding_idx=padding_idx, scale_grad_by_freq=scale_grad_by_freq)
    if max_norm is not None:
        norms = out.detach().norm(dim=-1, keepdim=True)
        out = out * torch.where(norms > max_norm, max_norm / (norms + 1e-7), torch.ones_like(norms))
    return out


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("grad_reduction", ["sum", "mean"])
@pytest.mark.parametrize("max_norm", [None, 4.0])
@pytest.mark.parametrize("scale_grad_by_freq", [False, True])
@pytest.mark.parametrize("padding_idx", [None, PAD])
def test_pqembedding_gradient_options(device, padding_idx, scale_grad_by_freq, max_norm, grad_reduction):
    codes, c0 = _codebook(ROWS, DIM)
    # Repeated indices (frequencies 1..3), the padding row twice; rows' norms straddle max_norm=4.
    idx = torch.tensor([[1, PAD, 7, 7, 12], [PAD, 2, 1, 1, 30]])
    pq = PQEmbedding(c0, codes, ROWS, DIM, padding_idx=padding_idx, max_norm=max_norm,
                     scale_grad_by_freq=scale_grad_by_freq, grad_reduction=grad_reduction).to(device)  # fmt: skip
    g = torch.randn(2, 5, DIM)
    out = pq(idx.to(device))
    out.backward(g.to(device))

    c = c0.clone().requires_grad_()
    expected = _reference_embedding(idx, codes, c, padding_idx, max_norm, scale_grad_by_freq)
    expected.backward(g)
    grad = c.grad / _mean_divisor(codes) if grad_reduction == "mean" else c.grad
    torch.testing.assert_close(out.cpu(), expected.detach(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(pq.centroids.grad.cpu(), grad, rtol=1e-5, atol=1e-6)
    assert torch.equal(pq.centroids.grad[K - 1].cpu(), torch.zeros(BS)), "empty cluster"
    assert torch.equal(pq.centroids.detach().cpu(), c0), "the forward must not modify the codebook"
    if max_norm is not None:  # the case must renormalise some rows and not others
        norms = reference.pq_decode(codes, c0, (ROWS, DIM))[idx].norm(dim=-1)
        assert (norms > max_norm).any() and (norms <= max_norm).any()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("padding_idx", [0, -ROWS])
def test_pqembedding_padding_idx_zero(device, padding_idx):
    """padding_idx = 0 (falsy) and its negative spelling: row 0 gets no gradient, by value."""
    codes, c0 = _codebook(ROWS, DIM)
    idx = torch.tensor([[0, 5, 0, 9], [2, 0, 5, 1]])
    pq = PQEmbedding(c0, codes, ROWS, DIM, padding_idx=padding_idx).to(device)
    g = torch.randn(2, 4, DIM)
    pq(idx.to(device)).backward(g.to(device))
    c = c0.clone().requires_grad_()
    _reference_embedding(idx, codes, c, 0, None, False).backward(g)
    torch.testing.assert_close(pq.centroids.grad.cpu(), c.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("grad_reduction", ["sum", "mean"])
def test_pqlinear_grad_reduction(device, grad_reduction):
    out_f, in_f = 24, 32
    codes, c0 = _codebook(out_f, in_f)
    b0 = torch.randn(out_f)
    pq = PQLinear(c0, codes, b0, in_f, out_f, grad_reduction=grad_reduction).to(device)
    x, g = torch.randn(5, in_f), torch.randn(5, out_f)
    pq(x.to(device)).backward(g.to(device))

    c, b = c0.clone().requires_grad_(), b0.clone().requires_grad_()
    reference.pq_linear(x, codes, c, b).backward(g)
    grad = c.grad / _mean_divisor(codes) if grad_reduction == "mean" else c.grad
    torch.testing.assert_close(pq.centroids.grad.cpu(), grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(pq.bias.grad.cpu(), b.grad, rtol=1e-6, atol=1e-6)
    assert torch.equal(pq.centroids.grad[K - 1].cpu(), torch.zeros(BS)), "empty cluster"
