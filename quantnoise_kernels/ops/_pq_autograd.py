"""Autograd of the PQ ops (DESIGN §3.3): gradients from the codes, never the dense weight or its gradient.

``pq_linear`` backpropagates through ``pq_linear_backward`` (straight-through across the fused activation
fake-quant), or through decoded weight tiles of at most 1 MiB where those are faster
(``_pq_weight_tiles``); ``pq_decode`` and ``pq_embedding`` give the per-centroid sum of the block gradients.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._pq_weight_tiles import backward_by_weight_tiles, weight_tiles_pay
from .pq import _grad_dtype, pq_embedding_backward, pq_linear_backward

__all__: list[str] = []  # registers with torch.library on import; nothing public


def _interchange(codes: Tensor, codes_transposed: bool) -> Tensor:
    return codes.t() if codes_transposed else codes


def _centroid_grad(grad_blocks: Tensor, codes: Tensor, shape: torch.Size, dtype: torch.dtype) -> Tensor:
    """Per-centroid sum of the block gradients ``grad_blocks[n_blocks_total, bs]`` (codes flattened alike),
    as a ``shape`` (``[K, bs]``) tensor of ``dtype``. Empty clusters get exactly 0 (a sum, never a division)."""
    grad = torch.zeros(shape, dtype=grad_blocks.dtype, device=grad_blocks.device)
    grad.index_add_(0, codes.reshape(-1).long(), grad_blocks)
    return grad.to(dtype)


def _act_fake_quant(x: Tensor, bits: int, granularity: str) -> Tensor:
    """The activation fake-quant the pq_linear kernels fuse, for the centroid gradient: ``x [rows, in]``.

    The float32 operations of ``make_affine_grid`` / ``fake_quant_affine`` (csrc/include/quantnoise/pq.h) in
    their order: range widened to hold 0, ``scale = (hi - lo) / qmax`` (1 if 0), ``zp = rint(-lo / scale)``
    clamped, then ``(clamp(rint(x / scale) + zp) - zp) * scale``.
    """
    x32 = x.float()
    lo, hi = torch.aminmax(x32, dim=-1, keepdim=True) if granularity == "token" else torch.aminmax(x32)
    qmax = float((1 << bits) - 1)
    scale = (hi.clamp(min=0) - lo.clamp(max=0)) / qmax
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    zero_point = torch.round(-lo.clamp(max=0) / scale).clamp(0, qmax)
    return ((torch.round(x32 / scale) + zero_point).clamp(0, qmax).sub(zero_point) * scale).to(x.dtype)


def _pq_linear_setup_context(ctx, inputs, output):
    x, codes, centroids, bias, scale, zero_point, transposed, act_bits, granularity, _path = inputs
    ctx.args = (transposed, act_bits, granularity, bias is not None)
    ctx.x_dtype = x.dtype
    float_centroids = centroids.dtype != torch.int8
    need_c = float_centroids and ctx.needs_input_grad[2]
    ctx.save_for_backward(x if need_c else None, codes, centroids, scale, zero_point)


def _pq_linear_backward(ctx, grad: Tensor):
    """Gradients from the codes (``pq_linear_backward``) or by weight tiles: never the whole dense weight."""
    x, codes, centroids, scale, zero_point = ctx.saved_tensors
    transposed, act_bits, granularity, has_bias = ctx.args
    need_x = bool(ctx.needs_input_grad[0])
    if x is not None and act_bits > 0:  # the centroid gradient sees the activations the forward used
        x = _act_fake_quant(x.reshape(math.prod(x.shape[:-1]), x.shape[-1]), act_bits, granularity).reshape(x.shape)
    grad_x = grad_c = grad_b = None
    if need_x or x is not None:
        n_blocks = codes.shape[0] if transposed else codes.shape[1]
        tiles = weight_tiles_pay(math.prod(grad.shape[:-1]), grad.shape[-1], n_blocks, *centroids.shape)
        gx, gc = (backward_by_weight_tiles if tiles else pq_linear_backward)(
            grad,
            x,
            codes,
            centroids,
            centroid_scale=scale,
            centroid_zero_point=zero_point,
            codes_transposed=transposed,
            input_grad=need_x,
            centroids_grad=x is not None,
        )
        grad_x = gx.to(ctx.x_dtype) if need_x else None  # straight-through across the activation fake-quant
        grad_c = gc.to(centroids.dtype) if x is not None else None
    if has_bias and ctx.needs_input_grad[3]:
        grad_b = grad.reshape(math.prod(grad.shape[:-1]), grad.shape[-1]).to(_grad_dtype(grad)).sum(0)
    return grad_x, None, grad_c, grad_b, None, None, None, None, None, None


torch.library.register_autograd("quantnoise::pq_linear", _pq_linear_backward, setup_context=_pq_linear_setup_context)


def _pq_decode_setup_context(ctx, inputs, output):
    codes, centroids, _shape, _scale, _zp, transposed, _dtype = inputs
    ctx.transposed = transposed
    ctx.c_dtype = centroids.dtype
    ctx.c_shape = centroids.shape
    ctx.save_for_backward(codes)


def _pq_decode_backward(ctx, grad: Tensor):
    (codes,) = ctx.saved_tensors
    grad_c = None
    if ctx.c_dtype != torch.int8 and ctx.needs_input_grad[1]:
        codes = _interchange(codes, ctx.transposed)
        grad_c = _centroid_grad(grad.reshape(-1, ctx.c_shape[1]), codes, ctx.c_shape, ctx.c_dtype)
    return None, grad_c, None, None, None, None, None


torch.library.register_autograd("quantnoise::pq_decode", _pq_decode_backward, setup_context=_pq_decode_setup_context)


def _pq_embedding_setup_context(ctx, inputs, output):
    indices, codes, centroids, _scale, _zp, _dtype = inputs
    ctx.c_dtype = centroids.dtype
    ctx.c_shape = centroids.shape
    ctx.save_for_backward(indices, codes)


def _pq_embedding_backward(ctx, grad: Tensor):
    indices, codes = ctx.saved_tensors
    grad_c = None
    if ctx.c_dtype != torch.int8 and ctx.needs_input_grad[2]:
        grad_c = pq_embedding_backward(grad, indices, codes, ctx.c_shape[0]).to(ctx.c_dtype)
    return None, None, grad_c, None, None, None


torch.library.register_autograd(
    "quantnoise::pq_embedding", _pq_embedding_backward, setup_context=_pq_embedding_setup_context
)
