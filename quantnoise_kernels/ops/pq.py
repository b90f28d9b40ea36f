"""Product-quantization ops (DESIGN §3.3): ``pq_decode``, ``pq_linear``, ``pq_embedding``, code layouts, with
their fake kernels; the autograd formulas are in :mod:`._pq_autograd`."""

from __future__ import annotations

import torch
from torch import Tensor

from ._args import bool_arg, int_arg, shape_arg
from ._checks import (
    check_pq_codebook_args,
    check_pq_decode_shape,
    check_pq_embedding_backward_args,
    check_pq_embedding_indices,
    check_pq_linear_args,
    check_pq_linear_backward_args,
    check_pq_out_dtype,
)

__all__ = [
    "pq_pack_codes",
    "pq_unpack_codes",
    "pq_decode",
    "pq_linear",
    "pq_embedding",
    "pq_linear_backward",
    "pq_embedding_backward",
]


def pq_pack_codes(codes: Tensor) -> Tensor:
    """Convert interchange codes ``[out, n_blocks]`` to the packed layout the lookup kernels read.

    The packed layout is the transpose ``[n_blocks, out]`` (contiguous): for an input block ``j``
    the codes of consecutive outputs are adjacent, so 16 outputs load as 16 contiguous bytes.
    Pass it with ``codes_transposed=True``. Layers convert once at construction.
    """
    return codes.t().contiguous()


def pq_unpack_codes(packed: Tensor) -> Tensor:
    """Inverse of :func:`pq_pack_codes`: packed ``[n_blocks, out]`` to interchange ``[out, n_blocks]``."""
    return packed.t().contiguous()


def pq_decode(
    codes: Tensor,
    centroids: Tensor,
    shape: list[int] | tuple[int, ...] | torch.Size,
    *,
    centroid_scale: Tensor | None = None,
    centroid_zero_point: Tensor | None = None,
    codes_transposed: bool = False,
    out_dtype: torch.dtype | None = None,
) -> Tensor:
    """Rebuild the dense weight: block ``(o, j)`` of ``W.reshape(out, -1)`` is ``centroids[codes[o, j]]``.

    Args:
        codes: ``[out, n_blocks]`` uint8 (K <= 256) or int32; ``[n_blocks, out]`` if ``codes_transposed``.
        centroids: ``[K, block_size]`` float32/float16/bfloat16/float64, or int8 with ``centroid_scale``.
        shape: the weight's shape ``[out, ...]`` with ``prod(shape[1:]) == n_blocks * block_size``.
        centroid_scale: int8 centroids only: 1 or K scales; value = ``(c - zero_point) * scale``.
        centroid_zero_point: int8 centroids only: 1 or K zero points (default 0).
        codes_transposed: codes are in the packed layout of :func:`pq_pack_codes`.
        out_dtype: output dtype (default: the centroids' float dtype, float32 for int8).

    Returns:
        ``W`` of ``shape``.
    """
    return torch.ops.quantnoise.pq_decode.default(
        codes,
        centroids,
        shape_arg("pq_decode", shape),
        centroid_scale,
        centroid_zero_point,
        bool_arg("pq_decode", "codes_transposed", codes_transposed),
        out_dtype,
    )


def pq_linear(
    x: Tensor,
    codes: Tensor,
    centroids: Tensor,
    bias: Tensor | None = None,
    *,
    centroid_scale: Tensor | None = None,
    centroid_zero_point: Tensor | None = None,
    codes_transposed: bool = False,
    act_bits: int = 0,
    act_granularity: str = "tensor",
    path: str = "auto",
) -> Tensor:
    """``y = fq(x) . decode(codes, centroids)^T + bias`` without materialising the dense weight.

    CPU paths: ``"lut"`` builds, per row, a table of ``x_block . centroid`` and sums table entries
    picked by the codes (16 rows per vector add; one row on AVX-512 looks up 16 outputs per step
    from a table held in registers); ``"tile"`` decodes ~1 MiB of ``W`` at a time and multiplies;
    ``"auto"`` picks by size. Packed codes (``codes_transposed=True``) avoid a per-call transpose.

    Args:
        x: ``[..., in]`` float32/float16/bfloat16/float64 (computed in float32, float64 in float64).
        codes: ``[out, in/block_size]`` uint8/int32, or packed ``[in/block_size, out]``.
        centroids: ``[K, block_size]`` float, or int8 with ``centroid_scale``/``centroid_zero_point``.
        bias: ``[out]`` or None.
        centroid_scale: see :func:`pq_decode`.
        centroid_zero_point: see :func:`pq_decode`.
        codes_transposed: codes are in the packed layout.
        act_bits: 0 (off) or the bit width of an affine fake-quant of ``x`` fused into the op.
        act_granularity: ``"tensor"`` (one range) or ``"token"`` (one range per row of ``x``).
        path: ``"auto"``, ``"lut"`` or ``"tile"``.

    Returns:
        ``[..., out]`` in ``x``'s dtype. Differentiable in ``x`` (straight-through across the
        activation fake-quant), float ``centroids`` (per-centroid sum of block gradients) and ``bias``.
    """
    return torch.ops.quantnoise.pq_linear.default(
        x,
        codes,
        centroids,
        bias,
        centroid_scale,
        centroid_zero_point,
        bool_arg("pq_linear", "codes_transposed", codes_transposed),
        int_arg("pq_linear", "act_bits", act_bits),
        act_granularity,
        path,
    )


def pq_embedding(
    indices: Tensor, codes: Tensor, centroids: Tensor, *, centroid_scale: Tensor | None = None,
    centroid_zero_point: Tensor | None = None, out_dtype: torch.dtype | None = None,
) -> Tensor:  # fmt: skip
    """Rows ``indices`` of the PQ-compressed table, decoding only those rows.

    Args:
        indices: int64/int32 tensor of any shape, values in ``[0, num_embeddings)``.
        codes: ``[num_embeddings, dim/block_size]`` uint8/int32 (interchange layout).
        centroids: ``[K, block_size]`` float, or int8 with ``centroid_scale``/``centroid_zero_point``.
        centroid_scale: see :func:`pq_decode`.
        centroid_zero_point: see :func:`pq_decode`.
        out_dtype: output dtype (default: the centroids' float dtype, float32 for int8).

    Returns:
        ``indices.shape + [dim]``. Differentiable in float ``centroids``.
    """
    return torch.ops.quantnoise.pq_embedding.default(
        indices, codes, centroids, centroid_scale, centroid_zero_point, out_dtype
    )


def pq_linear_backward(
    grad_out: Tensor,
    x: Tensor | None,
    codes: Tensor,
    centroids: Tensor,
    *,
    centroid_scale: Tensor | None = None,
    centroid_zero_point: Tensor | None = None,
    codes_transposed: bool = False,
    input_grad: bool = True,
    centroids_grad: bool = True,
) -> tuple[Tensor, Tensor]:
    """Gradients of :func:`pq_linear` from the codes, never building the dense weight or its gradient.

    Per input block ``j``, ``grad_out`` is scatter-added into ``K`` bins by code,
    ``S_j[r, k] = sum_{o: codes[o, j] = k} grad_out[r, o]``; then ``grad_x[:, block j] = S_j @ C`` and
    ``grad_centroids += S_j^T @ x[:, block j]`` (the per-centroid sum of block gradients, as
    ``torch.autograd`` through ``pq_decode`` + ``F.linear`` gives, and fairseq's ``PQLinear``).

    Args:
        grad_out: ``[..., out]`` float32/float16/bfloat16/float64 (computed in float32, float64 in float64).
        x: ``[..., in]`` with ``grad_out``'s leading shape (the activations the forward multiplied,
            i.e. after any activation fake-quant); required if ``centroids_grad``, else may be None.
        codes, centroids, centroid_scale, centroid_zero_point, codes_transposed: as :func:`pq_linear`.
        input_grad: compute ``grad_x``.
        centroids_grad: compute ``grad_centroids`` (float centroids only).

    Returns:
        ``(grad_x, grad_centroids)``: ``grad_x`` ``[..., in]`` in ``grad_out``'s dtype (shape ``[0]``
        if not ``input_grad``); ``grad_centroids`` ``[K, block_size]`` float32 (float64 for float64
        ``grad_out``; shape ``[0]`` if not ``centroids_grad``).

    Raises:
        ValueError / TypeError: shapes, dtypes or codes out of range, naming the argument.
    """
    return torch.ops.quantnoise.pq_linear_backward.default(
        grad_out,
        x,
        codes,
        centroids,
        centroid_scale,
        centroid_zero_point,
        codes_transposed,
        input_grad,
        centroids_grad,
    )


def pq_embedding_backward(grad_out: Tensor, indices: Tensor, codes: Tensor, n_centroids: int) -> Tensor:
    """Centroid gradient of :func:`pq_embedding`: ``grad[k] = sum of grad_out's blocks whose code is k``.

    Args:
        grad_out: ``indices.shape + [dim]`` float32/float16/bfloat16/float64.
        indices: int64/int32, values in ``[0, num_embeddings)``.
        codes: ``[num_embeddings, dim/block_size]`` uint8/int32 (interchange layout).
        n_centroids: ``K``; every code must be below it.

    Returns:
        ``[K, block_size]`` float32 (float64 for float64 ``grad_out``); 0 for unused centroids.
    """
    return torch.ops.quantnoise.pq_embedding_backward.default(grad_out, indices, codes, int(n_centroids))


@torch.library.register_fake("quantnoise::pq_decode")
def _pq_decode_fake(
    codes, centroids, shape, centroid_scale=None, centroid_zero_point=None, codes_transposed=False, out_dtype=None
):
    dims = check_pq_codebook_args(
        "pq_decode", codes, centroids, centroid_scale, centroid_zero_point, codes_transposed, codes.device
    )
    check_pq_decode_shape(dims, shape)
    return codes.new_empty(shape, dtype=check_pq_out_dtype("pq_decode", centroids, out_dtype))


@torch.library.register_fake("quantnoise::pq_linear")
def _pq_linear_fake(
    x,
    codes,
    centroids,
    bias=None,
    centroid_scale=None,
    centroid_zero_point=None,
    codes_transposed=False,
    act_bits=0,
    act_granularity="tensor",
    path="auto",
):
    dims = check_pq_codebook_args(
        "pq_linear", codes, centroids, centroid_scale, centroid_zero_point, codes_transposed, x.device
    )
    check_pq_linear_args(x, dims, bias, act_bits, act_granularity, path)
    return x.new_empty((*x.shape[:-1], dims[0]))


@torch.library.register_fake("quantnoise::pq_embedding")
def _pq_embedding_fake(indices, codes, centroids, centroid_scale=None, centroid_zero_point=None, out_dtype=None):
    check_pq_codebook_args("pq_embedding", codes, centroids, centroid_scale, centroid_zero_point, False, indices.device)
    check_pq_embedding_indices(indices)
    dtype = check_pq_out_dtype("pq_embedding", centroids, out_dtype)
    return centroids.new_empty((*indices.shape, codes.shape[1] * centroids.shape[1]), dtype=dtype)


def _grad_dtype(grad_out: Tensor) -> torch.dtype:
    return torch.float64 if grad_out.dtype == torch.float64 else torch.float32


@torch.library.register_fake("quantnoise::pq_linear_backward")
def _pq_linear_backward_fake(
    grad_out,
    x,
    codes,
    centroids,
    centroid_scale=None,
    centroid_zero_point=None,
    codes_transposed=False,
    input_grad=True,
    centroids_grad=True,
):
    dims = check_pq_codebook_args(
        "pq_linear_backward", codes, centroids, centroid_scale, centroid_zero_point, codes_transposed, grad_out.device
    )
    x_shape = check_pq_linear_backward_args(grad_out, x, centroids, dims, centroids_grad)
    gc_shape = tuple(dims[2:]) if centroids_grad else (0,)
    return grad_out.new_empty(x_shape if input_grad else (0,)), grad_out.new_empty(
        gc_shape, dtype=_grad_dtype(grad_out)
    )


@torch.library.register_fake("quantnoise::pq_embedding_backward")
def _pq_embedding_backward_fake(grad_out, indices, codes, n_centroids):
    block_size = check_pq_embedding_backward_args(grad_out, indices, codes, n_centroids)
    return grad_out.new_empty((n_centroids, block_size), dtype=_grad_dtype(grad_out))
