"""Batched, distributed k-means (Lloyd's EM) on torch tensors, built on ``ops.kmeans_assign/update``.

B independent problems run in one call (many layers or sub-spaces at once); with a
``torch.distributed`` process group each rank holds a shard of the vectors, assigns it, and the
per-cluster sums and counts are all-reduced, so every rank ends with the same centroids.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from dataclasses import dataclass, field

import torch
from torch import Tensor

from . import ops
from ._blocks import MAX_CENTROIDS, SEED_HIGH
from ._progress import show_info
from .clustering_init import init_centroids

__all__ = ["KMeansResult", "kmeans", "MAX_CENTROIDS"]

logger = logging.getLogger(__name__)

_FLOATS = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


@dataclass
class KMeansResult:
    """Result of :func:`kmeans`.

    Attributes:
        centroids: float32 ``[B, K, D]`` (``[K, D]`` for a 2-D ``x``), identical on every rank.
        codes: int64 ``[B, N]`` (``[N]``): nearest centroid of each local vector, for ``centroids``.
        objective: sum of squared distances over all problems (and ranks), one entry per
            assignment pass: the initial centroids first, the returned ``centroids`` last.
        n_empty: clusters left empty by the final assignment (a warning says so when > 0).
    """

    centroids: Tensor
    codes: Tensor
    objective: list[float] = field(default_factory=list)
    n_empty: int = 0


class _Comm:
    """The collectives kmeans needs; no-ops without a process group."""

    def __init__(self, group, device: torch.device) -> None:
        self.group, self.device = group, device  # NCCL needs device tensors; gloo takes either
        if group is None:
            self.rank, self.world = 0, 1
        else:
            import torch.distributed as dist

            self.dist = dist
            self.rank, self.world = dist.get_rank(group), dist.get_world_size(group)

    def sum_(self, t: Tensor) -> Tensor:
        if self.world > 1:
            self.dist.all_reduce(t, op=self.dist.ReduceOp.SUM, group=self.group)
        return t

    def gather(self, t: Tensor) -> Tensor:
        """``[world, *t.shape]``: every rank's ``t``."""
        if self.world == 1:
            return t[None]
        out = [torch.empty_like(t) for _ in range(self.world)]
        self.dist.all_gather(out, t.contiguous(), group=self.group)
        return torch.stack(out)

    def broadcast_int(self, value: int) -> int:
        if self.world == 1:
            return value
        t = torch.tensor([value], dtype=torch.int64, device=self.device)
        self.dist.broadcast(t, src=self.dist.get_global_rank(self.group, 0), group=self.group)
        return int(t.item())


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_input(x: Tensor, n_centroids: int, n_iter: int, init: str, settings: dict) -> None:
    """Every argument of :func:`kmeans`, before any work (errors name the argument and the value)."""
    if not isinstance(x, Tensor):
        raise TypeError(f"kmeans: x must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in _FLOATS:
        raise TypeError(f"kmeans: x must be float32, float16, bfloat16 or float64, got dtype {x.dtype}")
    if x.dim() not in (2, 3):
        raise ValueError(f"kmeans: x must be [N, D] or [B, N, D], got shape {tuple(x.shape)}")
    if x.device.type == "meta":
        raise ValueError("kmeans: x must hold values, got a tensor on the meta device")
    if not _is_int(n_centroids) or not 1 <= n_centroids <= MAX_CENTROIDS:
        raise ValueError(f"kmeans: n_centroids must be an int in [1, {MAX_CENTROIDS}], got {n_centroids!r}")
    for name, value in (("n_iter", n_iter), ("max_tentatives", settings["max_tentatives"])):
        if not _is_int(value) or value < 0:
            raise ValueError(f"kmeans: {name} must be an int >= 0, got {value!r}")
    if init not in ("random", "kmeans++"):
        raise ValueError(f"kmeans: init must be 'random' or 'kmeans++', got {init!r}")
    eps, tol, seed = settings["eps"], settings["tol"], settings["seed"]
    if not _is_number(eps) or eps < 0:
        raise ValueError(f"kmeans: eps must be a finite number >= 0, got {eps!r}")
    if tol is not None and (not _is_number(tol) or tol < 0):
        raise ValueError(f"kmeans: tol must be None or a finite number >= 0, got {tol!r}")
    if seed is not None and (not _is_int(seed) or not 0 <= seed < 2**63):
        raise ValueError(f"kmeans: seed must be None or an int in [0, 2**63), got {seed!r}")
    n_bad = int((~torch.isfinite(x.detach())).sum())
    if n_bad:
        raise ValueError(f"kmeans: x must be finite, got {n_bad} NaN or infinite values")


def _repair_empty(centroids: Tensor, counts: Tensor, eps: float, gen: torch.Generator) -> int:
    """Split the most populated clusters into the empty ones, in place, vectorised over B.

    Empty cluster i (ascending) takes the i-th largest cluster m (count >= 2): ``c_e = c_m + e``,
    ``c_m = c_m - e`` with ``e = eps * (max|c_m| + eps) * randn`` (fairseq's split, scaled so it
    survives fp32 rounding); the next assignment divides m's vectors between the two.
    Returns how many clusters were empty.
    """
    empty = counts == 0
    n_empty = empty.sum(1)
    total = int(n_empty.sum())
    if total == 0:
        return 0
    batch, k, dim = centroids.shape
    e_max = int(n_empty.max())
    donors = torch.sort(counts, dim=1, descending=True, stable=True).indices[:, :e_max]  # [B, E]
    targets = torch.sort((~empty).to(torch.int8), dim=1, stable=True).indices[:, :e_max]  # empties first
    valid = torch.arange(e_max, device=counts.device)[None] < n_empty[:, None]
    valid &= counts.gather(1, donors) >= 2
    base = centroids.gather(1, donors[..., None].expand(-1, -1, dim))
    scale = eps * (base.abs().amax(-1, keepdim=True) + eps)
    noise = torch.randn(batch, e_max, dim, generator=gen).to(centroids.device) * scale
    keep_t = centroids.gather(1, targets[..., None].expand(-1, -1, dim))
    v = valid[..., None]
    # Targets first, then donors: a donor is never empty, so the two index sets are disjoint.
    centroids.scatter_(1, targets[..., None].expand(-1, -1, dim), torch.where(v, base + noise, keep_t))
    centroids.scatter_(1, donors[..., None].expand(-1, -1, dim), torch.where(v, base - noise, base))
    return total


def kmeans(
    x: Tensor,
    n_centroids: int,
    *,
    n_iter: int = 20,
    init: str = "random",
    tol: float | None = None,
    generator: torch.Generator | None = None,
    seed: int | None = None,
    process_group=None,
    verbose: bool = False,
    eps: float = 1e-6,
    max_tentatives: int = 30,
    h: Tensor | None = None,
) -> KMeansResult:
    """Lloyd's k-means on ``B`` independent problems at once (squared L2, or ``(x - c)^T H (x - c)`` with ``h``).

    Each iteration assigns every vector to its nearest centroid (:func:`ops.kmeans_assign`: fused,
    ties to the lowest index), then moves each centroid to the mean of its vectors
    (:func:`ops.kmeans_update`). Clusters left empty are refilled by splitting the most populated
    ones (vectorised; see ``_repair_empty``); after the last iteration up to ``max_tentatives``
    split-and-reassign passes run, and any cluster still empty is reported by a ``UserWarning``
    with the count (and ``n_empty``): never silently.

    Args:
        x: ``[N, D]`` or ``[B, N, D]`` float (fp16/bf16 are read as is and accumulated in fp32;
            fp64 is cast to fp32). Must be finite. With ``process_group``: this rank's shard
            (ranks in order hold consecutive parts of the data set; N may differ per rank).
        n_centroids: ``K``, between 1 and 65536 and at most the number of vectors.
        n_iter: EM iterations (assign + update); the codes returned come from one more
            assignment, with the returned centroids.
        init: ``"random"``: ``K`` vectors drawn uniformly with replacement (fairseq), indices
            ``torch.randint(0, N, (B, K), generator=g)``; ``"kmeans++"``: D^2 sampling.
        tol: stop early once the objective improves by less than ``tol`` relative.
        generator: CPU ``torch.Generator`` for every random draw; ``seed`` overrides it. With
            neither, a seed is drawn from torch's default generator (so ``torch.manual_seed``
            makes runs repeatable) and rank 0's is used on every rank.
        seed: make the run deterministic (same result on every call and device).
        process_group: ``torch.distributed`` group; every rank must call with the same arguments.
        verbose: log progress (objective, empty clusters, time) at INFO level to the
            ``quantnoise_kernels.clustering`` logger, on rank 0.
        eps: relative size of the perturbation that splits a cluster (fairseq's ``eps``).
        max_tentatives: split-and-reassign passes after the last iteration while clusters are empty.
        h: activation-aware k-means (issue 10, :mod:`.clustering_weighted`): ``[G, D, D]`` symmetric positive
            semi-definite (or ``[G, D]``, a diagonal; ``[B, G, ...]`` for a 3-D ``x``), vector ``n`` weighted by
            ``h[n % G]``; the objective is then the weighted one. None: plain k-means, as above.

    Returns:
        :class:`KMeansResult` with ``centroids`` fp32, ``codes`` int64, ``objective`` list, ``n_empty``. Not
        differentiable: ``x`` is read detached (a layer's weight may be passed as it is).

    Raises:
        TypeError: ``x`` is not a float tensor.
        ValueError: ``x`` has the wrong rank, is on the meta device or holds NaN/infinity; ``n_centroids``,
            ``n_iter``, ``max_tentatives``, ``eps``, ``tol``, ``seed`` or ``init`` is out of range; K exceeds N;
            ``h`` has the wrong shape, holds NaN/infinity, or is not symmetric positive semi-definite.
    """
    _check_input(x, n_centroids, n_iter, init, {"eps": eps, "tol": tol, "seed": seed, "max_tentatives": max_tentatives})
    if h is not None:
        from .clustering_weighted import check_h

        h = check_h(x, h)
    xb = _problems(x)
    comm = _Comm(process_group, xb.device)
    offset, n_total = _shard_span(xb, n_centroids, comm)
    gen = _generator(seed, generator, comm)
    progress = _Progress(verbose and comm.rank == 0)
    centroids = init_centroids(xb, n_centroids, init, n_total, offset, gen, comm, progress)
    if h is None:
        run = _Lloyd(xb, centroids, comm, gen, eps, progress)
    else:
        from .clustering_weighted import WeightedLloyd

        run = WeightedLloyd(xb, h, centroids, comm, gen, eps, progress)
    run.iterate(n_iter, tol)
    n_empty = _warn_empty(run.repair(max_tentatives if n_iter > 0 else 0), n_iter, max_tentatives)
    if x.dim() == 2:
        return KMeansResult(run.centroids[0], run.codes[0], run.objective, n_empty)
    return KMeansResult(run.centroids, run.codes, run.objective, n_empty)


def _problems(x: Tensor) -> Tensor:
    """``x`` as the ``[B, N, D]`` problems the kernels take: detached (clustering is not differentiated; a layer's
    weight requires grad), fp64 cast to fp32, contiguous."""
    xb = x.detach()
    xb = xb.unsqueeze(0) if xb.dim() == 2 else xb
    return (xb.float() if xb.dtype == torch.float64 else xb).contiguous()


def _shard_span(x: Tensor, n_centroids: int, comm: _Comm) -> tuple[int, int]:
    """``(offset, n_total)``: the global index of this rank's first vector and the vectors of all ranks, which
    must be at least ``n_centroids``."""
    sizes = comm.gather(torch.tensor([x.shape[1]], dtype=torch.int64, device=x.device))[:, 0].tolist()
    offset, n_total = sum(sizes[: comm.rank]), sum(sizes)
    if n_centroids > n_total:
        raise ValueError(f"kmeans: n_centroids must be at most the number of vectors N={n_total}, got {n_centroids}")
    return offset, n_total


def _generator(seed: int | None, generator: torch.Generator | None, comm: _Comm) -> torch.Generator:
    """The CPU generator of every draw: ``seed``'s, else ``generator``, else one seeded from torch's default
    generator (rank 0's seed on every rank)."""
    if seed is not None:
        return torch.Generator().manual_seed(int(seed))
    if generator is not None:
        return generator
    return torch.Generator().manual_seed(comm.broadcast_int(int(torch.randint(0, SEED_HIGH, ()))))


def _warn_empty(counts: Tensor, n_iter: int, max_tentatives: int) -> int:
    """How many clusters are empty (``counts == 0``); a ``UserWarning`` at :func:`kmeans`'s caller when any is."""
    n_empty = int((counts == 0).sum())
    if n_empty:
        warnings.warn(
            f"kmeans: {n_empty} of {counts.numel()} clusters are empty after {n_iter} iterations and "
            f"{max_tentatives} repair passes (too few distinct vectors?)",
            stacklevel=3,
        )
    return n_empty


class _Progress:
    """Progress lines of a verbose run: INFO records of the ``quantnoise_kernels.clustering`` logger, with the
    time. ``verbose=True`` is a request to see them: while a line is logged the logger is enabled for INFO and,
    where the application configured no logging handler at all, a stderr handler shows it."""

    def __init__(self, enabled: bool) -> None:
        self.enabled, self.start = enabled, time.perf_counter()

    def __call__(self, message: str) -> None:
        if self.enabled:
            show_info(logger, "kmeans [%7.2fs] %s", time.perf_counter() - self.start, message)


class _Lloyd:
    """The state of one k-means run: Lloyd's EM iterations, then the final empty-cluster repairs."""

    def __init__(
        self, x: Tensor, centroids: Tensor, comm: _Comm, gen: torch.Generator, eps: float, progress: _Progress
    ) -> None:
        self.x, self.centroids, self.comm, self.gen, self.eps, self.progress = x, centroids, comm, gen, eps, progress
        self.k = centroids.shape[1]
        self.objective: list[float] = []
        self._assign()

    def _assign(self) -> None:
        self.codes, dist = ops.kmeans_assign(self.x, self.centroids)
        self.objective.append(_objective(dist, self.comm))

    def iterate(self, n_iter: int, tol: float | None) -> None:
        """``n_iter`` EM iterations (fewer when the objective moves by less than ``tol`` relative)."""
        for it in range(n_iter):
            counts = self._update()
            n_repaired = _repair_empty(self.centroids, counts, self.eps, self.gen)
            self._assign()
            self.progress(
                f"iteration {it + 1}/{n_iter}: objective {self.objective[-1]:.6g}, {n_repaired} empty clusters split"
            )
            prev = self.objective[-2]
            if tol is not None and n_repaired == 0 and abs(prev - self.objective[-1]) <= tol * abs(prev):
                self.progress(f"converged: relative change below tol={tol}")
                break

    def _update(self) -> Tensor:
        """M-step: move each non-empty centroid to the mean of its vectors; returns the cluster sizes ``[B, K]``."""
        sums, counts = ops.kmeans_update(self.x, self.codes, self.k)
        self.comm.sum_(sums)
        self.comm.sum_(counts)
        filled = counts > 0
        means = sums / counts.clamp(min=1)[..., None].float()
        self.centroids = torch.where(filled[..., None], means, self.centroids)
        return counts

    def repair(self, max_tentatives: int) -> Tensor:
        """Split-and-reassign passes while clusters are empty; returns the final cluster sizes ``[B, K]``."""
        counts = _counts(self.codes, self.k, self.comm)
        for attempt in range(max_tentatives):
            if not bool((counts == 0).any()):
                break
            n_repaired = _repair_empty(self.centroids, counts, self.eps, self.gen)
            self._assign()
            counts = _counts(self.codes, self.k, self.comm)
            self.progress(f"repair pass {attempt + 1}: split {n_repaired} empty clusters")
        return counts


def _counts(codes: Tensor, k: int, comm: _Comm) -> Tensor:
    offsets = torch.arange(codes.shape[0], device=codes.device)[:, None] * k
    counts = torch.bincount((codes + offsets).reshape(-1), minlength=codes.shape[0] * k).view(-1, k)
    return comm.sum_(counts)


def _objective(dist: Tensor, comm: _Comm) -> float:
    """Sum of squared distances over all problems and ranks, accumulated in fp64."""
    if dist.device.type == "cpu":
        # numpy's single-threaded sum: a 2-thread torch reduction of ~1e5 values can wait
        # milliseconds for its second thread on a busy machine, more than the sum itself.
        total = torch.tensor(float(dist.numpy().sum(dtype="float64")), dtype=torch.float64)
    else:
        total = dist.sum(dtype=torch.float64)
    return float(comm.sum_(total))
