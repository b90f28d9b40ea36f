"""Activation-aware k-means (issue 10): Lloyd's EM under ``(x - c)^T H (x - c)``, on ``ops.kmeans_*_weighted``;
what :func:`.clustering.kmeans` runs when given ``h``.

"And the bit goes down" (Stock et al., 2020, section 3.1) and GPTQ/AQLM-style calibration: clustering a layer's
weight blocks to preserve its *outputs* on real inputs weights each block by ``H_j``, the second moment of the
block's input dimensions. Same batching, seeding (the same initial centroids as plain k-means for a seed: ``random``
draws or plain k-means++), distribution and empty-cluster repair.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import ops
from .clustering import _Lloyd, _objective

__all__ = ["weighted_centroids", "check_h", "WeightedLloyd"]


def check_h(x: Tensor, h: Tensor) -> Tensor:
    """``h`` as float32 ``[B, G, D(, D)]`` on ``x``'s device; shape errors name ``h`` (values: the ops check)."""
    if not isinstance(h, Tensor) or not h.is_floating_point():
        kind = f"dtype {h.dtype}" if isinstance(h, Tensor) else type(h).__name__
        raise TypeError(f"kmeans: h must be a float tensor, got {kind}")
    batched = h if x.dim() == 3 else h[None]
    dim = x.shape[-1]
    ok = batched.dim() in (3, 4) and batched.shape[2] == dim and (batched.dim() == 3 or batched.shape[3] == dim)
    if not ok or batched.shape[0] != (x.shape[0] if x.dim() == 3 else 1):
        raise ValueError(
            f"kmeans: h must be [G, D, D] or [G, D] ([B, G, ...] for a 3-D x) with D={dim}, "
            f"got shape {tuple(h.shape)} for x of shape {tuple(x.shape)}"
        )
    out = batched.detach().to(device=x.device, dtype=torch.float32).contiguous()
    if out.dim() == 4 and out.numel() and bool(torch.isfinite(out).all()):
        # An indefinite H makes "distances" negative and the EM diverge; the ops check the rest.
        eig = torch.linalg.eigvalsh(0.5 * (out + out.transpose(-1, -2)).double())
        low, high = float(eig.min()), float(eig.abs().max())
        if low < -1e-6 * high:
            raise ValueError(f"kmeans: h must be positive semi-definite, got an eigenvalue {low:.4g}")
    elif out.dim() == 3 and bool((out < 0).any()):
        raise ValueError(f"kmeans: h must be non-negative (a diagonal), got {float(out.min()):.4g}")
    return out


def weighted_centroids(stats: tuple[Tensor, ...], previous: Tensor) -> Tensor:
    """The activation-aware M-step from ``ops.kmeans_update_weighted``'s (all-reduced) statistics.

    ``c_k = (sum H)^-1 (sum H x)`` by a Cholesky solve in fp64. The rule where that is undefined: a cluster
    whose summed ``H`` is not positive definite (its blocks' inputs never span every direction: Cholesky fails;
    for a diagonal ``H``, per coordinate whose weight is 0) takes the plain mean of its blocks there; an empty
    cluster keeps ``previous`` (the caller splits it, as plain k-means does).
    """
    h_sums, hx_sums, sums, counts = stats
    filled = (counts > 0)[..., None]
    means = sums / counts.clamp(min=1)[..., None].float()
    if h_sums.dim() == hx_sums.dim():  # diagonal H
        ok = h_sums > 0
        solved = torch.where(ok, hx_sums / torch.where(ok, h_sums, 1.0), means)
    else:
        chol, info = torch.linalg.cholesky_ex(h_sums.double())
        solved = torch.cholesky_solve(hx_sums.double()[..., None], chol)[..., 0].float()
        solved = torch.where((info == 0)[..., None], solved, means)
    return torch.where(filled, solved, previous)


class WeightedLloyd(_Lloyd):
    """:class:`_Lloyd` with the weighted assignment and M-step."""

    def __init__(self, x: Tensor, h: Tensor, centroids: Tensor, *args) -> None:
        self.h = h
        super().__init__(x, centroids, *args)

    def _assign(self) -> None:
        self.codes, dist = ops.kmeans_assign_weighted(self.x, self.centroids, self.h)
        self.objective.append(_objective(dist, self.comm))

    def _update(self) -> Tensor:
        stats = ops.kmeans_update_weighted(self.x, self.codes, self.h, self.k)
        for t in stats:
            self.comm.sum_(t)
        self.centroids = weighted_centroids(stats, self.centroids)
        return stats[3]
