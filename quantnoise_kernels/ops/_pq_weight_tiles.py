"""``pq_linear``'s backward by decoded weight tiles, for the shapes where it beats the codes kernel.

``pq_linear_backward`` (the codes kernel) costs per row about ``n_blocks * (out + 2 * K * block_size)``
vector operations: one scatter-add per (output, block) and two ``K x block_size`` products per block.
The dense products cost ``2 * out * in`` multiply-adds per row, which oneDNN/cuBLAS run several times
faster per operation. So the codes win when ``K * block_size`` is small against ``out * block_size``
(a ``Linear(4096, 4096)``: 8x fewer operations) and lose when it is not: a 3x3 convolution with 256
output channels and block 9 (``K * block_size`` = 2304 = ``in``) or an attention projection of 384
with block 4. There, decoding the weight tile by tile (at most :data:`TILE_BYTES` of it at a time, so
the dense weight never exists whole) and running two GEMMs per tile is 1.5-3x faster at 64+ rows.

:func:`weight_tiles_pay` is the rule; its constants come from a grid of shapes measured on AMD EPYC
Zen 3 (AVX2, 2 threads): the codes kernel against :func:`backward_by_weight_tiles` at 16-1024 rows
(``README.md``, "PQ training"). Every choice it makes was within 5% of the faster one on that grid.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .pq import pq_decode, pq_embedding_backward

__all__ = ["TILE_BYTES", "weight_tiles_pay", "backward_by_weight_tiles"]

TILE_BYTES = 1 << 20
"""The largest decoded weight tile (and weight-gradient tile), in bytes of the compute dtype."""
MIN_ROWS = 64
"""Below this many rows the tiles' fixed cost (decode, per-tile GEMM calls) outweighs their speed."""
CODES_COST_FACTOR = 1.3
"""Tiles when ``out + 2 * K * block_size > CODES_COST_FACTOR * out * block_size`` (measured, see above)."""


def weight_tiles_pay(rows: int, out: int, n_blocks: int, n_centroids: int, block_size: int) -> bool:
    """Whether :func:`backward_by_weight_tiles` is the faster backward for this shape (module docstring).

    Args:
        rows: rows of ``grad_out`` (all leading dimensions together).
        out, n_blocks, n_centroids, block_size: the PQ weight's ``out``, ``in / block_size``, ``K``, block size.
    """
    if rows < MIN_ROWS or out == 0 or n_blocks == 0:
        return False
    return out + 2 * n_centroids * block_size > CODES_COST_FACTOR * out * block_size


def backward_by_weight_tiles(
    grad_out: Tensor, x: Tensor | None, codes: Tensor, centroids: Tensor, *, centroid_scale: Tensor | None = None,
    centroid_zero_point: Tensor | None = None, codes_transposed: bool = False, input_grad: bool = True,
    centroids_grad: bool = True, tile_bytes: int = TILE_BYTES,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """:func:`~quantnoise_kernels.ops.pq_linear_backward`'s result, through decoded weight tiles.

    For each tile of output rows ``[o0, o1)``: ``W_t = pq_decode(codes[o0:o1])``, ``grad_x += grad_out[:, o0:o1]
    @ W_t``, and the per-centroid sum of ``grad_W_t = grad_out[:, o0:o1]^T @ x`` (``pq_embedding_backward``
    over those rows). Arguments, returns and dtypes as ``pq_linear_backward``; the arguments are those
    ``pq_linear``'s forward checked. ``tile_bytes`` bounds each decoded tile (at least one output row).
    """
    out = codes.shape[1] if codes_transposed else codes.shape[0]
    rows_codes = codes.t() if codes_transposed else codes  # [out, n_blocks]
    n_blocks, (n_centroids, block_size) = rows_codes.shape[1], centroids.shape
    n_in = n_blocks * block_size
    compute = torch.float64 if grad_out.dtype == torch.float64 else torch.float32
    gy = grad_out.reshape(-1, out).to(compute)
    gx = torch.zeros(gy.shape[0], n_in, dtype=compute, device=gy.device) if input_grad else None
    gc = torch.zeros(n_centroids, block_size, dtype=compute, device=gy.device) if centroids_grad else None
    xf = x.reshape(-1, n_in).to(compute) if centroids_grad else None
    tile = max(1, tile_bytes // max(1, n_in * gy.element_size()))
    for o0 in range(0, out, tile):
        o1 = min(out, o0 + tile)
        gy_t = gy[:, o0:o1]
        if gx is not None:
            w = pq_decode(rows_codes[o0:o1].contiguous(), centroids, [o1 - o0, n_in], centroid_scale=centroid_scale,
                          centroid_zero_point=centroid_zero_point, out_dtype=compute)  # fmt: skip
            gx.addmm_(gy_t, w)
        if gc is not None:
            rows = torch.arange(o1 - o0, device=gy.device)
            gc += pq_embedding_backward(gy_t.t() @ xf, rows, rows_codes[o0:o1].contiguous(), n_centroids)
    grad_x = gx.to(grad_out.dtype).reshape(*grad_out.shape[:-1], n_in) if gx is not None else grad_out.new_empty(0)
    return grad_x, gc if gc is not None else gy.new_empty(0)
