"""Activation-aware k-means ops (issue 10): ``kmeans_assign_weighted`` (E-step) and ``kmeans_update_weighted``
(M-step statistics) under the distance ``(x - c)^T H (x - c)``, with their fake kernels.

"And the bit goes down" (Stock et al., 2020, section 3.1) clusters a layer's weight blocks so as to preserve its
*outputs*: for a block ``w`` of input columns ``j`` the output error of replacing it by ``c`` is
``(w - c)^T H_j (w - c)`` with ``H_j = E[x_j x_j^T]`` the second moment of those inputs. Point ``n`` of a problem
uses ``h[:, n % G]``: in the row-major block layout of ``W.reshape(out, -1)`` (``weight_to_blocks``) that is the
column of block ``n`` when ``G = row // block_size``. Not differentiable (clustering is not differentiated).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._args import int_arg
from ._checks import _shape, _type, _value, check_kmeans_assign_args, check_kmeans_update_args

__all__ = ["kmeans_assign_weighted", "kmeans_update_weighted"]


def _check_h(op: str, x: Tensor, h: Tensor) -> None:
    """The shape checks of ``check_kmeans_h`` (csrc/host/checks.cpp); the value checks (finite, symmetric,
    non-negative diagonal) run in the kernels, which see the values."""
    _type(h.dtype == torch.float32, op, lambda: f"h must be float32, got dtype {str(h.dtype).removeprefix('torch.')}")
    _value(h.device == x.device, op, lambda: f"h must be on x's device {x.device}, got {h.device}")
    batch, n, dim = x.shape
    ok = h.dim() in (3, 4) and h.shape[0] == batch and h.shape[1] >= 1 and h.shape[2] == dim
    ok = ok and (h.dim() == 3 or h.shape[3] == dim)
    _value(
        ok,
        op,
        lambda: (
            f"h must have shape [B, G, D, D] or [B, G, D] with B={batch}, D={dim} and G >= 1, got {_shape(h.shape)}"
        ),
    )
    _value(
        n % h.shape[1] == 0,
        op,
        lambda: f"h's group count G must divide the number of points N={n}, got G={h.shape[1]}",
    )


def kmeans_assign_weighted(x: Tensor, centroids: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
    """Nearest centroid of every vector under ``(x - c)^T H (x - c)`` (activation-aware k-means E-step), fused.

    Ranked by ``0.5 c^T H c - x^T (H c)`` in fp32 with fixed FMA chains on every device
    (``csrc/include/quantnoise/kmeans_weighted.h``); exact ties go to the lowest index. With ``H = I`` this is
    :func:`kmeans_assign` (same codes, same distances).

    Args:
        x: ``[B, N, D]`` (or ``[N, D]``) float32/float16/bfloat16 vectors.
        centroids: ``[B, K, D]`` (or ``[K, D]``) float32/float16/bfloat16, ``1 <= K <= 65536``.
        h: float32 ``[B, G, D, D]`` symmetric (or ``[B, G, D]``: its diagonal), ``G`` dividing ``N``; point ``n``
            uses ``h[:, n % G]`` (without ``B`` for 2-D ``x``). Finite, with a non-negative diagonal.

    Returns:
        ``(codes, dist)``: int64 ``[B, N]`` in ``[0, K)`` and float32 ``[B, N]``, the weighted distance to the
        chosen centroid (``[N]`` each for 2-D ``x``).

    Raises:
        TypeError: a dtype is not supported (``h`` must be float32).
        ValueError: shapes disagree, ``G`` does not divide ``N``, or ``h`` holds NaN/infinity, is not symmetric or
            has a negative diagonal entry (the message names the argument and the value).
    """
    if x.dim() == 2 and centroids.dim() == 2:
        codes, dist = torch.ops.quantnoise.kmeans_assign_weighted.default(x[None], centroids[None], h[None])
        return codes[0], dist[0]
    return torch.ops.quantnoise.kmeans_assign_weighted.default(x, centroids, h)


def kmeans_update_weighted(x: Tensor, codes: Tensor, h: Tensor, n_centroids: int) -> tuple[Tensor, ...]:
    """Per-cluster statistics of the activation-aware M-step: the centroid minimising
    ``sum_{n in k} (x_n - c)^T H_n (x_n - c)`` is ``c_k = h_sums[k]^-1 hx_sums[k]``.

    Deterministic on the CPU (fixed chunks reduced in order, fp64 accumulation); CUDA uses atomics.

    Args:
        x: ``[B, N, D]`` (or ``[N, D]``) float32/float16/bfloat16.
        codes: int64 ``[B, N]`` (or ``[N]``) in ``[0, n_centroids)``.
        h: as in :func:`kmeans_assign_weighted`.
        n_centroids: ``K``.

    Returns:
        ``(h_sums, hx_sums, sums, counts)``: float32 ``[B, K, D, D]`` (``[B, K, D]`` for a diagonal ``h``) sum of
        the points' ``H``; float32 ``[B, K, D]`` sum of ``H x``; float32 ``[B, K, D]`` sum of ``x``; int64
        ``[B, K]`` cluster sizes (without ``B`` for 2-D ``x``).

    Raises:
        as :func:`kmeans_assign_weighted`; ValueError for a code outside ``[0, n_centroids)``.
    """
    n_centroids = int_arg("kmeans_update_weighted", "n_centroids", n_centroids)
    if x.dim() == 2 and codes.dim() == 1:
        out = torch.ops.quantnoise.kmeans_update_weighted.default(x[None], codes[None], h[None], n_centroids)
        return tuple(t[0] for t in out)
    return torch.ops.quantnoise.kmeans_update_weighted.default(x, codes, h, n_centroids)


@torch.library.register_fake("quantnoise::kmeans_assign_weighted")
def _kmeans_assign_weighted_fake(x, centroids, h):
    check_kmeans_assign_args(x, centroids, "kmeans_assign_weighted")
    _check_h("kmeans_assign_weighted", x, h)
    batch, n = x.shape[0], x.shape[1]
    return x.new_empty((batch, n), dtype=torch.int64), x.new_empty((batch, n), dtype=torch.float32)


@torch.library.register_fake("quantnoise::kmeans_update_weighted")
def _kmeans_update_weighted_fake(x, codes, h, n_centroids):
    check_kmeans_update_args(x, codes, n_centroids, "kmeans_update_weighted")
    _check_h("kmeans_update_weighted", x, h)
    batch, dim = x.shape[0], x.shape[2]
    stat = (batch, n_centroids, dim)
    return (
        x.new_empty(stat if h.dim() == 3 else (*stat, dim), dtype=torch.float32),
        x.new_empty(stat, dtype=torch.float32),
        x.new_empty(stat, dtype=torch.float32),
        x.new_empty((batch, n_centroids), dtype=torch.int64),
    )
