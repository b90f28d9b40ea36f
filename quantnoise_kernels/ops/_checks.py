"""The C++ argument checks (``csrc/checks.cpp``) in Python, for the fake kernels.

A fake kernel runs what the real kernel checks before it decides the output's shape and dtype (dtypes, ranks,
shapes, devices, argument values), with the same exception type and the same message, so ``torch.compile``
and ``opcheck`` users see the error an eager call gives. Only checks that read tensor *data* (code and index
ranges, the seed's value) are left to the real kernels: a fake tensor has no data. One function per C++ check,
same name; ``python_tests/test_fake_checks.py`` compares every message with the C++ one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from .._blocks import MAX_CENTROIDS

__all__ = [
    "check_kmeans_assign_args",
    "check_kmeans_update_args",
    "check_pq_codebook_args",
    "check_pq_linear_args",
    "check_pq_decode_shape",
    "check_pq_embedding_indices",
    "check_pq_out_dtype",
    "check_pq_linear_backward_args",
    "check_pq_embedding_backward_args",
]

_FLOATS = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_KMEANS_FLOATS = (torch.float32, torch.float16, torch.bfloat16)
# c10::ScalarType names, as the C++ messages print dtypes.
_C10_NAMES = {
    torch.uint8: "Byte",
    torch.int8: "Char",
    torch.int16: "Short",
    torch.int32: "Int",
    torch.int64: "Long",
    torch.float16: "Half",
    torch.float32: "Float",
    torch.float64: "Double",
    torch.bfloat16: "BFloat16",
    torch.bool: "Bool",
    torch.complex64: "ComplexFloat",
    torch.complex128: "ComplexDouble",
}


def _name(dtype: torch.dtype) -> str:
    return _C10_NAMES.get(dtype, str(dtype).removeprefix("torch."))


def _shape(sizes: Sequence[int]) -> str:
    """Sizes as ``c10::IntArrayRef`` prints them: ``[4, 16]``."""
    return "[" + ", ".join(str(s) for s in sizes) + "]"


def _value(cond, op: str, message: Callable[[], str]) -> None:
    """QN_CHECK_VALUE: ValueError ``quantnoise::<op>: <message>``."""
    torch._check_value(cond, lambda: f"quantnoise::{op}: {message()}")


def _type(cond, op: str, message: Callable[[], str]) -> None:
    """QN_CHECK_TYPE: TypeError ``quantnoise::<op>: <message>``."""
    torch._check_type(cond, lambda: f"quantnoise::{op}: {message()}")


# ------------------------------------------------------------------------------------------ k-means


def _check_kmeans_x(op: str, x: Tensor) -> None:
    _type(x.dtype in _KMEANS_FLOATS, op, lambda: f"x must be float32, float16 or bfloat16, got dtype {_name(x.dtype)}")


def check_kmeans_assign_args(x: Tensor, centroids: Tensor, op: str = "kmeans_assign") -> None:
    c = centroids
    _check_kmeans_x(op, x)
    _type(
        c.dtype in _KMEANS_FLOATS,
        op,
        lambda: f"centroids must be float32, float16 or bfloat16, got dtype {_name(c.dtype)}",
    )
    _value(x.dim() == 3, op, lambda: f"x must have 3 dimensions [B, N, D], got shape {_shape(x.shape)}")
    _value(c.dim() == 3, op, lambda: f"centroids must have 3 dimensions [B, K, D], got shape {_shape(c.shape)}")
    _value(
        c.shape[0] == x.shape[0],
        op,
        lambda: f"centroids must have x's batch size {x.shape[0]}, got shape {_shape(c.shape)}",
    )
    _value(
        c.shape[2] == x.shape[2],
        op,
        lambda: f"centroids must have x's dimension D={x.shape[2]}, got shape {_shape(c.shape)}",
    )
    _value(
        1 <= c.shape[1] <= MAX_CENTROIDS,
        op,
        lambda: f"centroids must hold between 1 and {MAX_CENTROIDS} centroids, got K={c.shape[1]}",
    )
    _value(x.device == c.device, op, lambda: f"centroids must be on x's device {x.device}, got {c.device}")


def check_kmeans_update_args(x: Tensor, codes: Tensor, n_centroids: int, op: str = "kmeans_update") -> None:
    _check_kmeans_x(op, x)
    _type(codes.dtype == torch.int64, op, lambda: f"codes must be int64, got dtype {_name(codes.dtype)}")
    _value(x.dim() == 3, op, lambda: f"x must have 3 dimensions [B, N, D], got shape {_shape(x.shape)}")
    _value(
        codes.dim() == 2 and codes.shape[0] == x.shape[0] and codes.shape[1] == x.shape[1],
        op,
        lambda: f"codes must have shape [B, N] = [{x.shape[0]}, {x.shape[1]}], got {_shape(codes.shape)}",
    )
    _value(
        1 <= n_centroids <= MAX_CENTROIDS,
        op,
        lambda: f"n_centroids must be in [1, {MAX_CENTROIDS}], got {n_centroids}",
    )
    _value(x.device == codes.device, op, lambda: f"codes must be on x's device {x.device}, got {codes.device}")


# ------------------------------------------------------------------------------------------ PQ


def check_pq_codebook_args(
    op: str,
    codes: Tensor,
    centroids: Tensor,
    centroid_scale: Tensor | None,
    centroid_zero_point: Tensor | None,
    codes_transposed: bool,
    device: torch.device,
) -> tuple[int, int, int, int]:
    """Returns ``(out, n_blocks, K, block_size)``; the codes' range is the real kernel's to check."""
    c = centroids
    _type(
        codes.dtype in (torch.uint8, torch.int32),
        op,
        lambda: f"codes must be uint8 or int32, got dtype {_name(codes.dtype)}",
    )
    layout = "[n_blocks, out]" if codes_transposed else "[out, n_blocks]"
    _value(codes.dim() == 2, op, lambda: f"codes must be 2-D {layout}, got shape {_shape(codes.shape)}")
    _type(
        c.dtype in _FLOATS or c.dtype == torch.int8,
        op,
        lambda: f"centroids must be float32, float16, bfloat16, float64 or int8, got dtype {_name(c.dtype)}",
    )
    _value(
        c.dim() == 2 and c.shape[0] > 0 and c.shape[1] > 0,
        op,
        lambda: f"centroids must be 2-D [n_centroids, block_size] and non-empty, got shape {_shape(c.shape)}",
    )
    _value(
        codes.device == device and c.device == device,
        op,
        lambda: f"codes and centroids must be on {device}, got {codes.device} and {c.device}",
    )
    is_int8 = c.dtype == torch.int8
    _value(not is_int8 or centroid_scale is not None, op, lambda: "centroid_scale must be given for int8 centroids")
    _value(
        is_int8 or (centroid_scale is None and centroid_zero_point is None),
        op,
        lambda: (
            f"centroid_scale/centroid_zero_point apply to int8 centroids only, got centroids of dtype {_name(c.dtype)}"
        ),
    )
    for name, q in (("centroid_scale", centroid_scale), ("centroid_zero_point", centroid_zero_point)):
        if q is None:
            continue
        _value(
            q.numel() == 1 or (q.dim() == 1 and q.numel() == c.shape[0]),
            op,
            lambda name=name, q=q: (
                f"{name} must hold 1 or n_centroids={c.shape[0]} values, got shape {_shape(q.shape)}"
            ),
        )
        _value(
            q.device == device or q.device.type == "cpu",
            op,
            lambda name=name, q=q: f"{name} must be on {device}, got {q.device}",
        )
    out, n_blocks = (codes.shape[1], codes.shape[0]) if codes_transposed else (codes.shape[0], codes.shape[1])
    return out, n_blocks, c.shape[0], c.shape[1]


def check_pq_linear_args(
    x: Tensor, shape: tuple[int, int, int, int], bias: Tensor | None, act_bits: int, act_granularity: str, path: str
) -> None:
    op = "pq_linear"
    out, n_blocks, _, block_size = shape
    _type(
        x.dtype in _FLOATS, op, lambda: f"x must be float32, float16, bfloat16 or float64, got dtype {_name(x.dtype)}"
    )
    _value(
        x.dim() >= 1, op, lambda: f"x must have at least 1 dimension [..., in_features], got shape {_shape(x.shape)}"
    )
    _value(
        x.shape[-1] == n_blocks * block_size,
        op,
        lambda: (
            f"x must have in_features = n_blocks * block_size = {n_blocks} * {block_size} = "
            f"{n_blocks * block_size} in its last dimension, got shape {_shape(x.shape)}"
        ),
    )
    if bias is not None:
        _type(bias.dtype in _FLOATS, op, lambda: f"bias must be a float tensor, got dtype {_name(bias.dtype)}")
        _value(
            bias.dim() == 1 and bias.shape[0] == out,
            op,
            lambda: f"bias must have shape [out_features={out}], got shape {_shape(bias.shape)}",
        )
        _value(bias.device == x.device, op, lambda: f"bias must be on {x.device}, got {bias.device}")
    _value(
        act_bits == 0 or 2 <= act_bits <= 16,
        op,
        lambda: f"act_bits must be 0 (no activation fake-quant) or in [2, 16], got {act_bits}",
    )
    _value(
        act_granularity in ("tensor", "token"),
        op,
        lambda: f"act_granularity must be one of {{'tensor', 'token'}}, got '{act_granularity}'",
    )
    _value(path in ("auto", "lut", "tile"), op, lambda: f"path must be one of {{'auto', 'lut', 'tile'}}, got '{path}'")


def check_pq_decode_shape(shape: tuple[int, int, int, int], sizes: Sequence[int]) -> None:
    out, n_blocks, _, block_size = shape
    row = 1
    for s in sizes[1:]:
        row *= s
    _value(
        len(sizes) >= 2 and sizes[0] == out and row == n_blocks * block_size,
        "pq_decode",
        lambda: (
            f"shape must be [out={out}, ...] with n_blocks * block_size = {n_blocks * block_size} entries per "
            f"row, got {_shape(sizes)}"
        ),
    )


def check_pq_embedding_indices(indices: Tensor, op: str = "pq_embedding") -> None:
    """The indices' dtype; their range is the real kernel's to check."""
    _type(
        indices.dtype in (torch.int64, torch.int32),
        op,
        lambda: f"indices must be int64 or int32, got dtype {_name(indices.dtype)}",
    )


def check_pq_out_dtype(op: str, centroids: Tensor, out_dtype: torch.dtype | None) -> torch.dtype:
    """The output dtype: ``out_dtype`` (a float dtype), else the centroids' (float32 for int8 centroids)."""
    dtype = out_dtype or (torch.float32 if centroids.dtype == torch.int8 else centroids.dtype)
    _type(dtype in _FLOATS, op, lambda: f"out_dtype must be a float dtype, got {_name(dtype)}")
    return dtype


def check_pq_linear_backward_args(
    grad_out: Tensor, x: Tensor | None, centroids: Tensor, shape: tuple[int, int, int, int], centroids_grad: bool
) -> tuple[int, ...]:
    """After ``check_pq_codebook_args``; returns grad_x's shape (``x``'s)."""
    op = "pq_linear_backward"
    out, n_blocks, _, block_size = shape
    _type(
        grad_out.dtype in _FLOATS,
        op,
        lambda: f"grad_out must be float32, float16, bfloat16 or float64, got dtype {_name(grad_out.dtype)}",
    )
    _value(
        grad_out.dim() >= 1 and grad_out.shape[-1] == out,
        op,
        lambda: f"grad_out must have shape [..., {out}] (out_features), got {_shape(grad_out.shape)}",
    )
    x_shape = (*grad_out.shape[:-1], n_blocks * block_size)
    if centroids_grad:
        _value(x is not None, op, lambda: "x must be given when centroids_grad=True")
        _value(
            centroids.dtype != torch.int8,
            op,
            lambda: "centroids_grad needs float centroids, got int8 centroids (they take no gradient)",
        )
    if x is not None:
        _type(
            x.dtype in _FLOATS,
            op,
            lambda: f"x must be float32, float16, bfloat16 or float64, got dtype {_name(x.dtype)}",
        )
        _value(
            tuple(x.shape) == x_shape,
            op,
            lambda: (
                f"x must have shape {_shape(x_shape)} (grad_out's leading dimensions + [in_features]), "
                f"got {_shape(x.shape)}"
            ),
        )
        _value(x.device == grad_out.device, op, lambda: f"x must be on {grad_out.device}, got {x.device}")
    return x_shape


def check_pq_embedding_backward_args(grad_out: Tensor, indices: Tensor, codes: Tensor, n_centroids: int) -> int:
    """Returns the block size; the ranges of codes and indices are the real kernel's to check."""
    op = "pq_embedding_backward"
    _type(
        codes.dtype in (torch.uint8, torch.int32),
        op,
        lambda: f"codes must be uint8 or int32, got dtype {_name(codes.dtype)}",
    )
    _value(codes.dim() == 2, op, lambda: f"codes must be 2-D [out, n_blocks], got shape {_shape(codes.shape)}")
    _value(n_centroids > 0, op, lambda: f"n_centroids must be positive, got {n_centroids}")
    _value(
        codes.device == grad_out.device and indices.device == grad_out.device,
        op,
        lambda: (
            f"indices and codes must be on grad_out's device {grad_out.device}, got {indices.device} and {codes.device}"
        ),
    )
    _type(
        grad_out.dtype in _FLOATS,
        op,
        lambda: f"grad_out must be float32, float16, bfloat16 or float64, got dtype {_name(grad_out.dtype)}",
    )
    n_blocks = codes.shape[1]
    dim = grad_out.shape[-1] if grad_out.dim() == indices.dim() + 1 else -1
    _value(
        n_blocks > 0 and dim > 0 and dim % n_blocks == 0 and tuple(grad_out.shape[: indices.dim()]) == indices.shape,
        op,
        lambda: (
            f"grad_out must have shape {_shape(indices.shape)} + [{n_blocks} * block_size] (indices' shape + "
            f"[embedding_dim]), got {_shape(grad_out.shape)}"
        ),
    )
    check_pq_embedding_indices(indices, op)
    return dim // n_blocks
