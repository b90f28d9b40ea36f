"""k-means ops: ``kmeans_assign`` (E-step), ``kmeans_update`` (M-step statistics) and k-means++ seeding
(``kmeanspp_init``; ``kmeanspp_step`` + ``kmeanspp_sample`` for data split over ranks), with fake kernels and
autograd."""

from __future__ import annotations

import torch
from torch import Tensor

from ._args import int_arg
from ._checks import check_kmeans_assign_args, check_kmeans_update_args
from ._checks_kmeanspp import (
    KMEANSPP_CHUNK,
    check_kmeanspp_init_args,
    check_kmeanspp_sample_args,
    check_kmeanspp_step_args,
)

__all__ = ["kmeans_assign", "kmeans_update", "kmeanspp_init", "kmeanspp_step", "kmeanspp_sample"]


def kmeans_assign(x: Tensor, centroids: Tensor) -> tuple[Tensor, Tensor]:
    """Nearest centroid of every vector (k-means E-step), fused: never an ``N x K`` matrix.

    Centroids are ranked by ``0.5*||c||^2 - x.c`` computed in fp32 with one FMA chain in a fixed
    order on every device (``csrc/include/quantnoise/kmeans.h``); exact ties go to the lowest
    index. ``dist`` is the exact squared distance to the chosen centroid.

    Args:
        x: ``[B, N, D]`` (or ``[N, D]``) float32/float16/bfloat16 vectors.
        centroids: ``[B, K, D]`` (or ``[K, D]``) float32/float16/bfloat16, ``1 <= K <= 65536``.

    Returns:
        ``(codes, dist)``: ``codes`` int64 ``[B, N]`` in ``[0, K)``, ``dist`` float32 ``[B, N]``
        (``[N]`` each for 2-D inputs). ``dist`` is differentiable in ``x`` and ``centroids`` (the derivative of
        ``||x - c_code||^2`` at the chosen codes); ``codes`` is not.
    """
    if x.dim() == 2 and centroids.dim() == 2:
        codes, dist = torch.ops.quantnoise.kmeans_assign.default(x.unsqueeze(0), centroids.unsqueeze(0))
        return codes.squeeze(0), dist.squeeze(0)
    return torch.ops.quantnoise.kmeans_assign.default(x, centroids)


def kmeans_update(x: Tensor, codes: Tensor, n_centroids: int) -> tuple[Tensor, Tensor]:
    """Per-cluster sums and counts (k-means M-step statistics); centroids are ``sums / counts``.

    Deterministic on the CPU (fixed chunks reduced in order, fp64 accumulation); CUDA uses atomics.

    Args:
        x: ``[B, N, D]`` (or ``[N, D]``) float32/float16/bfloat16.
        codes: int64 ``[B, N]`` (or ``[N]``) in ``[0, n_centroids)``.
        n_centroids: ``K``.

    Returns:
        ``(sums, counts)``: float32 ``[B, K, D]`` and int64 ``[B, K]`` (without ``B`` for 2-D ``x``). ``sums`` is
        differentiable in ``x`` (each vector gets the gradient of its cluster's sum); ``counts`` is not.
    """
    n_centroids = int_arg("kmeans_update", "n_centroids", n_centroids)
    if x.dim() == 2 and codes.dim() == 1:
        sums, counts = torch.ops.quantnoise.kmeans_update.default(x.unsqueeze(0), codes.unsqueeze(0), n_centroids)
        return sums.squeeze(0), counts.squeeze(0)
    return torch.ops.quantnoise.kmeans_update.default(x, codes, n_centroids)


@torch.library.register_fake("quantnoise::kmeans_assign")
def _kmeans_assign_fake(x, centroids):
    check_kmeans_assign_args(x, centroids)
    batch, n = x.shape[0], x.shape[1]
    return x.new_empty((batch, n), dtype=torch.int64), x.new_empty((batch, n), dtype=torch.float32)


@torch.library.register_fake("quantnoise::kmeans_update")
def _kmeans_update_fake(x, codes, n_centroids):
    check_kmeans_update_args(x, codes, n_centroids)
    batch, dim = x.shape[0], x.shape[2]
    return (
        x.new_empty((batch, n_centroids, dim), dtype=torch.float32),
        x.new_empty((batch, n_centroids), dtype=torch.int64),
    )


# Autograd. The codes and counts are integers (not differentiable). ``dist = ||x - c_code||^2`` and
# ``sums[k] = sum of the x assigned to k`` are: their gradients are the exact derivatives at the chosen codes
# (the assignment itself is piecewise constant), computed in float32 like the outputs, in the inputs' dtypes.


def _kmeans_assign_setup_context(ctx, inputs, output):
    x, centroids = inputs
    codes, _dist = output
    ctx.mark_non_differentiable(codes)
    ctx.save_for_backward(x, centroids, codes)


def _kmeans_assign_backward(ctx, _grad_codes, grad_dist: Tensor):
    x, centroids, codes = ctx.saved_tensors
    chosen = torch.gather(centroids.float(), 1, codes.unsqueeze(-1).expand(-1, -1, centroids.shape[2]))
    diff = (x.float() - chosen) * (2.0 * grad_dist.float()).unsqueeze(-1)  # d dist / d x, [B, N, D]
    grad_x = diff.to(x.dtype) if ctx.needs_input_grad[0] else None
    grad_c = None
    if ctx.needs_input_grad[1]:
        grad_c = torch.zeros(centroids.shape, dtype=torch.float32, device=centroids.device)
        grad_c.scatter_add_(1, codes.unsqueeze(-1).expand(-1, -1, centroids.shape[2]), -diff)
        grad_c = grad_c.to(centroids.dtype)
    return grad_x, grad_c


torch.library.register_autograd(
    "quantnoise::kmeans_assign", _kmeans_assign_backward, setup_context=_kmeans_assign_setup_context
)


def _kmeans_update_setup_context(ctx, inputs, output):
    x, codes, _n_centroids = inputs
    ctx.mark_non_differentiable(output[1])
    ctx.save_for_backward(codes)
    ctx.x_dtype = x.dtype


def _kmeans_update_backward(ctx, grad_sums: Tensor, _grad_counts):
    (codes,) = ctx.saved_tensors
    grad_x = torch.gather(grad_sums, 1, codes.unsqueeze(-1).expand(-1, -1, grad_sums.shape[2]))
    return grad_x.to(ctx.x_dtype), None, None


torch.library.register_autograd(
    "quantnoise::kmeans_update", _kmeans_update_backward, setup_context=_kmeans_update_setup_context
)


def kmeanspp_init(x: Tensor, first: Tensor, uniforms: Tensor) -> Tensor:
    """k-means++ seeding (D^2 sampling; Arthur & Vassilvitskii 2007) of ``B`` problems, fused.

    One call runs all ``K - 1`` steps: each updates every point's squared distance to its nearest
    chosen point (the float32 FMA chain of ``kmeans_assign``'s ``dist``) and draws the next point
    with probability proportional to it, by the deterministic chunked float64 rule of
    ``csrc/include/quantnoise/kmeanspp.h``: the same points on every device and thread count. A point
    already chosen (weight 0) is never drawn again; when every weight is 0 the draw is uniform,
    ``floor(u * N)``.

    Args:
        x: ``[B, N, D]`` (or ``[N, D]``) float32/float16/bfloat16, finite, ``N >= 1``.
        first: int64 ``[B]`` (or ``[]``): the first point of each problem, in ``[0, N)``.
        uniforms: float64 ``[B, K - 1]`` (or ``[K - 1]``) in ``[0, 1)``: the draw of each later step.

    Returns:
        int64 ``[B, K]`` (``[K]``): the indices of the chosen points, ``first`` first.

    Raises:
        ValueError / TypeError: shapes, dtypes or values out of range (named in the message).
    """
    if x.dim() == 2:
        return torch.ops.quantnoise.kmeanspp_init.default(x[None], first.reshape(1), uniforms[None])[0]
    return torch.ops.quantnoise.kmeanspp_init.default(x, first, uniforms)


def kmeanspp_step(x: Tensor, dmin: Tensor, centroid: Tensor) -> tuple[Tensor, Tensor]:
    """One k-means++ distance update: ``min(dmin, |x - centroid|^2)`` and its chunk weights.

    The building block of :func:`quantnoise_kernels.kmeans` when the points are split over ranks
    (one collective per step); a single process uses the fused :func:`kmeanspp_init`.

    Args:
        x: ``[B, N, D]`` float32/float16/bfloat16. dmin: float32 ``[B, N]`` (``inf`` before the first
            step). centroid: ``[B, D]`` float (the point chosen last).

    Returns:
        ``(dmin, chunk_weights)``: the new float32 ``[B, N]`` and float64 ``[B, ceil(N / 1024)]``
        (the chunk weights of ``kmeanspp.h``).
    """
    return torch.ops.quantnoise.kmeanspp_step.default(x, dmin, centroid)


def kmeanspp_sample(dmin: Tensor, chunk_weights: Tensor, target: Tensor) -> Tensor:
    """The point of each problem whose prefix interval of the weights ``dmin`` holds ``target``.

    Args:
        dmin: float32 ``[B, N]`` weights; chunk_weights: float64 ``[B, ceil(N / 1024)]`` from
            :func:`kmeanspp_step`; target: float64 ``[B]``, ``>= 0``.

    Returns:
        int64 ``[B]``: the index drawn by the rule of ``kmeanspp.h``, or -1 where every weight is 0.
    """
    return torch.ops.quantnoise.kmeanspp_sample.default(dmin, chunk_weights, target)


@torch.library.register_fake("quantnoise::kmeanspp_init")
def _kmeanspp_init_fake(x, first, uniforms):
    check_kmeanspp_init_args(x, first, uniforms)
    return x.new_empty((x.shape[0], uniforms.shape[1] + 1), dtype=torch.int64)


@torch.library.register_fake("quantnoise::kmeanspp_step")
def _kmeanspp_step_fake(x, dmin, centroid):
    check_kmeanspp_step_args(x, dmin, centroid)
    n_chunks = (x.shape[1] + KMEANSPP_CHUNK - 1) // KMEANSPP_CHUNK
    return (
        x.new_empty((x.shape[0], x.shape[1]), dtype=torch.float32),
        x.new_empty((x.shape[0], n_chunks), dtype=torch.float64),
    )


@torch.library.register_fake("quantnoise::kmeanspp_sample")
def _kmeanspp_sample_fake(dmin, chunk_weights, target):
    check_kmeanspp_sample_args(dmin, chunk_weights, target)
    return dmin.new_empty((dmin.shape[0],), dtype=torch.int64)
