"""The initial centroids of :func:`~.clustering.kmeans`: ``K`` rows drawn uniformly, or k-means++ (D^2 sampling).

Over ranks (``torch.distributed``) a row is read where it lives and shared by a sum; k-means++ runs one step per
collective, the rule of ``kmeanspp.h`` applied first to the ranks' totals, then inside the rank that holds the draw.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from . import ops

if TYPE_CHECKING:
    from .clustering import _Comm, _Progress

__all__ = ["init_centroids"]


def init_centroids(
    x: Tensor, k: int, init: str, n_total: int, offset: int, gen: torch.Generator, comm: _Comm, progress: _Progress
) -> Tensor:
    """The ``[B, K, D]`` initial centroids: ``K`` vectors drawn uniformly with replacement, or k-means++."""
    if init == "random":
        idx = torch.randint(0, n_total, (x.shape[0], k), generator=gen).to(x.device)
        return _rows(x, idx, offset, comm)
    progress(f"k-means++ init: {k} centroids from {n_total} vectors of dimension {x.shape[-1]}")
    return _init_kmeanspp(x, k, n_total, offset, gen, comm)


def _rows(x: Tensor, idx: Tensor, offset: int, comm: _Comm) -> Tensor:
    """fp32 ``[B, M, D]``: rows ``idx [B, M]`` (global indices) of the vectors split over ranks."""
    n_local = x.shape[1]
    local = idx - offset
    mine = (local >= 0) & (local < n_local)
    rows = torch.gather(x, 1, local.clamp(0, max(n_local - 1, 0))[..., None].expand(-1, -1, x.shape[2]))
    rows = torch.where(mine[..., None], rows.float(), torch.zeros((), device=x.device))
    return comm.sum_(rows)


def _init_kmeanspp(x: Tensor, k: int, n_total: int, offset: int, gen: torch.Generator, comm: _Comm) -> Tensor:
    """k-means++ (D^2 sampling) of the B problems; every draw comes from ``gen`` on the CPU.

    The first point is ``torch.randint(0, N, (B,), generator=gen)``, then one float64 uniform per
    problem and step, ``torch.rand(K - 1, B, generator=gen)`` (the stream of K - 1 draws of B):
    the draws the Python loop of earlier versions made, so a seed gives the same centroids except
    where a uniform lands within float64 rounding of a boundary between two points. One process:
    one fused op (``ops.kmeanspp_init``). Over ranks: one step per collective, the rule of
    ``kmeanspp.h`` applied first to the ranks' totals, then inside the rank that holds the draw.
    """
    batch, _, dim = x.shape
    first = torch.randint(0, n_total, (batch,), generator=gen)
    uniforms = torch.rand(k - 1, batch, generator=gen, dtype=torch.float64).t()
    if comm.world == 1:
        idx = ops.kmeanspp_init(x, first.to(x.device), uniforms.contiguous().to(x.device))
        return torch.gather(x, 1, idx[..., None].expand(-1, -1, dim)).float()
    cents = [_rows(x, first[:, None].to(x.device), offset, comm)]
    dmin = torch.full(x.shape[:2], float("inf"), device=x.device)
    for s in range(k - 1):
        dmin, chunk_weights = ops.kmeanspp_step(x, dmin, cents[-1][:, 0])
        totals = comm.gather(
            chunk_weights.cpu().cumsum(1)[:, -1] if x.shape[1] else torch.zeros(batch, dtype=torch.float64)
        )
        picked = _draw_over_ranks(totals.cpu(), uniforms[:, s], n_total, offset, dmin, chunk_weights, comm)
        cents.append(_rows(x, picked[:, None].to(x.device), offset, comm))
    return torch.cat(cents, 1)


def _draw_over_ranks(
    totals: Tensor, u01: Tensor, n_total: int, offset: int, dmin: Tensor, chunk_weights: Tensor, comm: _Comm
) -> Tensor:
    """The global index of each problem's draw: the rank whose prefix of ``totals [world, B]`` holds
    ``u01 * sum`` (rounding past the end: the last rank of positive total), then that rank's point."""
    rank_end = totals.cumsum(0)  # [world, B]
    grand = rank_end[-1]
    target = u01 * grand
    positive = totals > 0
    last_positive = torch.where(positive, torch.arange(comm.world)[:, None], -1).amax(0)
    owner = torch.where(rank_end > target[None], torch.arange(comm.world)[:, None], comm.world).amin(0)
    owner = torch.where(owner < comm.world, owner, last_positive)
    before = torch.where(owner > 0, rank_end[(owner - 1).clamp(min=0), torch.arange(totals.shape[1])], 0.0)
    pick = torch.full((totals.shape[1],), -1, dtype=torch.int64)
    mine = (owner == comm.rank) & (grand > 0)
    if bool(mine.any()):
        local = ops.kmeanspp_sample(dmin, chunk_weights, (target - before).clamp(min=0).to(dmin.device)).cpu()
        pick = torch.where(mine, local + offset, pick)
    uniform = (u01 * n_total).long().clamp(max=n_total - 1)  # every weight 0: a uniform draw
    pick = torch.where((grand <= 0) & (comm.rank == 0), uniform, pick)
    # One rank owns each pick: share it as a max over ranks (others hold -1).
    return comm.gather(pick.to(dmin.device)).max(0).values
