"""A PQ convolution by decoded weight tiles: for the shapes where oneDNN's convolution beats im2col + codes.

The im2col path (``F.unfold`` then ``ops.pq_linear``) materialises an input-sized column buffer and, in
training, folds its gradient back (``col2im``); for a 3x3 convolution of 256 channels on 8 x 14 x 14
inputs that costs more than the products. When the codes do not save work
(:func:`~quantnoise_kernels.ops._pq_weight_tiles.weight_tiles_pay`: ``K * block_size`` not small against
``out * block_size``), decoding a tile of output channels (at most ``TILE_BYTES``) and running the
convolution library on it is faster, forward and backward, and a weight over ``TILE_BYTES`` never exists
whole (a smaller one is one tile: each call has a high fixed cost, and that weight is far smaller than the
im2col buffer the other path needs). The backward decodes each tile again, gets its input gradient and
weight gradient from ``aten.convolution_backward`` and sums the weight gradient per centroid
(``ops.pq_embedding_backward`` over the tile's rows: the same per-centroid sum as ``pq_linear_backward``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ... import ops

__all__ = ["conv_by_weight_tiles"]

TILE_BYTES = 4 << 20
"""The largest decoded weight tile. Larger than ``pq_linear``'s 1 MiB: each oneDNN convolution call has a
fixed cost (the input's reorder) about that of a 64-channel tile's products, so fewer, larger calls win
(8 x 256 x 14 x 14, 3x3: one 2.4 MB tile 236 ms a step, two 216, four 384, under load)."""
ROW_MULTIPLE = 32
"""Tiles hold a multiple of this many output channels (oneDNN's blocked layouts; 113 channels ran 2x slower)."""


def _tiles(out: int, row_bytes: int, tile_bytes: int | None = None) -> list[tuple[int, int]]:
    step = max(1, (TILE_BYTES if tile_bytes is None else tile_bytes) // max(1, row_bytes))
    step = max(ROW_MULTIPLE, step // ROW_MULTIPLE * ROW_MULTIPLE)
    return [(o0, min(out, o0 + step)) for o0 in range(0, out, step)]


class _ConvByWeightTiles(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, centroids: Tensor, bias: Tensor | None, codes: Tensor, meta: dict) -> Tensor:
        """``codes [out, n_blocks]`` (interchange layout); ``meta``: weight shape, conv arguments, int8 args."""
        out, shape, conv = meta["weight_shape"][0], meta["weight_shape"], meta["conv"]
        ys = []
        for o0, o1 in _tiles(out, x.element_size() * codes.shape[1] * centroids.shape[1]):
            w = ops.pq_decode(codes[o0:o1], centroids, [o1 - o0, *shape[1:]], out_dtype=x.dtype, **meta["codebook"])
            ys.append(torch.ops.aten.convolution(x, w, None, *conv))
        y = torch.cat(ys, 1) if len(ys) > 1 else ys[0]
        if bias is not None:
            y = y + bias.to(y.dtype).reshape(1, out, *([1] * (y.dim() - 2)))
        ctx.meta = meta
        ctx.has_bias = bias is not None
        ctx.save_for_backward(x, centroids, codes)
        return y

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, centroids, codes = ctx.saved_tensors
        meta, (need_x, need_c, need_b) = ctx.meta, ctx.needs_input_grad[:3]
        need_c = need_c and centroids.dtype != torch.int8
        out, shape, conv = meta["weight_shape"][0], meta["weight_shape"], meta["conv"]
        gx = torch.zeros_like(x) if need_x else None
        gc = torch.zeros(centroids.shape, dtype=torch.float64 if x.dtype == torch.float64 else torch.float32,
                         device=x.device) if need_c else None  # fmt: skip
        for o0, o1 in _tiles(out, x.element_size() * codes.shape[1] * centroids.shape[1]):
            w = ops.pq_decode(codes[o0:o1], centroids, [o1 - o0, *shape[1:]], out_dtype=x.dtype, **meta["codebook"])
            gx_t, gw_t, _ = torch.ops.aten.convolution_backward(
                grad[:, o0:o1], x, w, None, *conv, [need_x, need_c, False]
            )
            if need_x:
                gx += gx_t
            if need_c:
                rows = torch.arange(o1 - o0, device=x.device)
                gc += ops.pq_embedding_backward(gw_t.reshape(o1 - o0, -1), rows, codes[o0:o1], centroids.shape[0])
        gb = grad.sum([0, *range(2, grad.dim())]) if ctx.has_bias and need_b else None
        return gx, None if gc is None else gc.to(centroids.dtype), gb, None, None


def conv_by_weight_tiles(
    x: Tensor, codes: Tensor, centroids: Tensor, bias: Tensor | None, weight_shape: tuple[int, ...],
    stride: tuple[int, ...], padding: tuple[int, ...], dilation: tuple[int, ...], codebook: dict[str, Any],
) -> Tensor:  # fmt: skip
    """``F.conv{1,2}d(x, pq_decode(codes, centroids), bias, stride, padding, dilation)`` (groups 1), one tile
    of output channels at a time, forward and backward (module docstring).

    Args:
        x: ``[N, C, *spatial]`` float32/float64 (zero padding already applied for other padding modes).
        codes: ``[out, n_blocks]`` uint8/int32, the interchange layout.
        centroids: ``[K, block_size]`` (float, or int8 with ``codebook``'s scale and zero point).
        bias: ``[out]`` or None.
        weight_shape: ``[out, C, *kernel]``.
        stride, padding, dilation: one int per spatial dimension.
        codebook: ``centroid_scale`` / ``centroid_zero_point`` keyword arguments of ``ops.pq_decode``.

    Returns:
        ``[N, out, *spatial_out]`` of ``x``'s dtype; differentiable in ``x``, float ``centroids`` and ``bias``.
    """
    n = len(stride)
    conv = (list(stride), list(padding), list(dilation), False, [0] * n, 1)
    meta = {"weight_shape": tuple(weight_shape), "conv": conv, "codebook": codebook}
    return _ConvByWeightTiles.apply(x, centroids, bias, codes, meta)
