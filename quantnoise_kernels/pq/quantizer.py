"""iPQ weight quantizer: cut a weight into blocks, cluster them, encode to codes + codebook.

Block layout (DESIGN §3): ``weight.reshape(out, -1)``; block ``(r, j)`` is entries
``[j*bs, (j+1)*bs)`` of row ``r`` and sits at index ``r * (row // bs) + j`` of the block matrix.
This covers ``nn.Linear`` ``[out, in]``, ``nn.Embedding`` ``[num, dim]`` and ``nn.Conv1d/2d``
``[out, in/groups, *kernel]`` (any kernel size, any groups). fairseq orders the same blocks
block-index first (``n = j*out + r``); :func:`to_fairseq_order` / :func:`from_fairseq_order` convert.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._blocks import MAX_CENTROIDS, check_block_size, codes_dtype
from ..clustering import kmeans

__all__ = ["PQ", "weight_to_blocks", "blocks_to_weight", "to_fairseq_order", "from_fairseq_order", "codes_dtype"]


def weight_to_blocks(weight: Tensor, block_size: int) -> Tensor:
    """``[out * row // block_size, block_size]`` view (or copy) of the blocks of ``weight``, row-major.

    Raises:
        ValueError: ``weight`` has fewer than 2 dimensions or ``block_size`` does not divide its row length.
        TypeError: ``block_size`` is not an int.
    """
    if weight.dim() < 2:
        raise ValueError(f"weight_to_blocks: weight must have at least 2 dimensions, got shape {tuple(weight.shape)}")
    row = check_block_size(block_size, tuple(weight.shape), "weight_to_blocks")
    return weight.reshape(weight.shape[0], row).reshape(-1, block_size)  # not -1: also for 0 rows


def blocks_to_weight(blocks: Tensor, shape: torch.Size | tuple[int, ...]) -> Tensor:
    """Inverse of :func:`weight_to_blocks`: blocks ``[n_blocks, bs]`` back to a weight of ``shape``."""
    numel = 1
    for s in shape:
        numel *= int(s)
    if blocks.numel() != numel:
        raise ValueError(f"blocks_to_weight: {tuple(blocks.shape)} blocks do not fill shape {tuple(shape)}")
    return blocks.reshape(shape)


def to_fairseq_order(codes: Tensor) -> Tensor:
    """Interchange codes ``[out, nb]`` -> fairseq's ``assignments [nb * out]`` int64 (``n = j*out + o``)."""
    if codes.dim() != 2:
        raise ValueError(f"to_fairseq_order: codes must be [out, n_blocks], got shape {tuple(codes.shape)}")
    return codes.t().reshape(-1).long()


def from_fairseq_order(assignments: Tensor, out_features: int, n_centroids: int | None = None) -> Tensor:
    """fairseq's ``assignments [nb * out]`` -> interchange codes ``[out, nb]``.

    The dtype is :func:`codes_dtype` of ``n_centroids`` (default: ``assignments.max() + 1``).
    """
    if assignments.dim() != 1 or out_features <= 0 or assignments.numel() % out_features:
        raise ValueError(
            f"from_fairseq_order: assignments must be 1-D with a multiple of out_features={out_features} "
            f"entries, got shape {tuple(assignments.shape)}"
        )
    k = n_centroids if n_centroids is not None else (int(assignments.max()) + 1 if assignments.numel() else 1)
    codes = assignments.reshape(-1, out_features).t().contiguous()
    return codes.to(codes_dtype(k))


def _check_weight(weight: Tensor, n_centroids: int) -> None:
    if not isinstance(weight, Tensor) or not weight.is_floating_point():
        kind = f"dtype {weight.dtype}" if isinstance(weight, Tensor) else type(weight).__name__
        raise TypeError(f"PQ: weight must be a float tensor, got {kind}")
    if weight.device.type == "meta":
        raise ValueError("PQ: weight must hold values, got a tensor on the meta device")
    if isinstance(n_centroids, bool) or not isinstance(n_centroids, int) or not 1 <= n_centroids <= MAX_CENTROIDS:
        raise ValueError(f"PQ: n_centroids must be an int in [1, {MAX_CENTROIDS}], got {n_centroids!r}")
    n_bad = int((~torch.isfinite(weight.detach())).sum())
    if n_bad:
        raise ValueError(f"PQ: weight must be finite, got {n_bad} NaN or infinite values")


class PQ:
    """Product quantization of one weight (fairseq's ``PQ`` on our block layout and k-means).

    Args:
        weight: ``[out, ...]`` float weight (Linear, Embedding, Conv1d/2d; any kernel size and groups).
        block_size: block length; must divide ``weight[0].numel()``.
        n_centroids: codebook size ``K`` (at most the number of blocks).
        n_iter: k-means iterations.
        eps: relative size of the split that refills empty clusters.
        max_tentatives: split-and-reassign passes after the last iteration while clusters are empty.
        verbose: print k-means progress.
        seed: make :meth:`encode` deterministic.
        h: activation-aware iPQ (issue 10): ``[G, bs, bs]`` (or ``[G, bs]``) second moments of the inputs of
            each block column (``pq.calibration``); block ``n`` of the row-major block matrix uses
            ``h[n % G]``. None: plain k-means on the weights.

    After :meth:`encode`: ``codes`` ``[out, row // block_size]`` (uint8 if ``K <= 256`` else int32),
    ``centroids`` ``[K, block_size]`` float32, ``objective`` (k-means history).

    Raises:
        TypeError: ``weight`` is not a float tensor.
        ValueError: ``weight`` has fewer than 2 dimensions, is on the meta device or holds NaN/infinity,
            ``block_size`` does not divide its row, or ``n_centroids`` is not in ``[1, number of blocks]``.
    """

    def __init__(
        self, weight: Tensor, block_size: int, n_centroids: int = 256, n_iter: int = 20, eps: float = 1e-6,
        max_tentatives: int = 30, verbose: bool = False, seed: int | None = None, h: Tensor | None = None,
    ) -> None:  # fmt: skip
        _check_weight(weight, n_centroids)
        self.blocks = weight_to_blocks(weight.detach(), block_size)  # validates block_size
        if self.blocks.shape[0] < n_centroids:
            raise ValueError(
                f"PQ: n_centroids={n_centroids} exceeds the {self.blocks.shape[0]} blocks of the weight "
                f"(shape {tuple(weight.shape)}, block_size={block_size})"
            )
        self.shape = tuple(weight.shape)
        self.dtype = weight.dtype
        self.block_size = int(block_size)
        self.n_centroids = n_centroids
        self.n_iter, self.eps, self.max_tentatives = int(n_iter), float(eps), int(max_tentatives)
        self.verbose, self.seed, self.h = verbose, seed, h
        self.codes: Tensor | None = None
        self.centroids: Tensor | None = None
        self.objective: list[float] = []

    def encode(self) -> tuple[Tensor, Tensor]:
        """Cluster the blocks; returns ``(codes [out, nb], centroids [K, bs] float32)``."""
        result = kmeans(
            self.blocks,
            self.n_centroids,
            n_iter=self.n_iter,
            seed=self.seed,
            verbose=self.verbose,
            eps=self.eps,
            max_tentatives=self.max_tentatives,
            h=self.h,
        )
        self.centroids = result.centroids
        self.codes = result.codes.view(self.shape[0], -1).to(codes_dtype(self.n_centroids))
        self.objective = result.objective
        return self.codes, self.centroids

    def decode(self) -> Tensor:
        """The quantized weight ``centroids[codes]`` in the original shape and dtype."""
        if self.codes is None or self.centroids is None:
            raise RuntimeError("PQ.decode: call encode() first")
        blocks = self.centroids[self.codes.reshape(-1).long()]
        return blocks_to_weight(blocks, self.shape).to(self.dtype)
