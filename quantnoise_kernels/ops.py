"""Typed wrappers of the ``torch.ops.quantnoise`` ops, with their fake kernels and autograd.

Each public function is one hop to the dispatcher, which picks the CPU or CUDA kernel. The fake
kernels give ``torch.compile`` output metadata; they mirror the C++ checks that shape depends on.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["block_noise", "draw_seed", "kmeans_assign", "kmeans_update"]

_SEED_HIGH = 2**62


def draw_seed(generator: torch.Generator | None = None) -> Tensor:
    """Draw a Philox seed from torch's RNG, so ``torch.manual_seed`` makes noise reproducible.

    Returns a 0-d int64 CPU tensor (a tensor, not an int, so ``torch.compile`` traces it).
    """
    return torch.randint(0, _SEED_HIGH, (), dtype=torch.int64, generator=generator)


def _as_seed(seed: int | Tensor) -> Tensor:
    if isinstance(seed, Tensor):
        return seed
    return torch.tensor(seed, dtype=torch.int64)


def block_noise(
    weight: Tensor,
    p: float,
    block_size: int,
    seed: int | Tensor,
    *,
    offset: int = 0,
    rescale: bool = True,
    straight_through: bool = True,
    noise: str = "drop",
) -> Tensor:
    """Fused Quant-Noise on the blocks of ``weight`` (one pass, no mask tensor).

    ``weight`` is viewed as ``weight.reshape(out, -1)``; a block is ``block_size`` consecutive
    entries of a row. Each block is noised with probability ``p`` from a Philox draw keyed by
    ``(seed, offset, block index)``: the same seed gives the same mask on every device.

    Args:
        weight: ``[out, ...]`` float32/float16/bfloat16/float64; never modified.
        p: noise rate in ``[0, 1)`` (``1`` allowed when ``rescale=False``).
        block_size: block length; must divide the row length ``weight[0].numel()``.
        seed: int or one-element int64 tensor (CPU or ``weight``'s device); see :func:`draw_seed`.
        offset: second Philox counter word, to draw independent masks from one seed.
        rescale: ``noise="drop"`` only: scale kept blocks by ``1/(1-p)`` (fairseq's default).
        straight_through: backward passes ``s*grad`` to every entry (the paper's
            ``W + stopgrad(mask*(phi(W)-W))``); ``False``: dropout-style, 0 on noised blocks.
        noise: ``"drop"`` (noised blocks become 0).

    Returns:
        A new contiguous tensor of ``weight``'s shape and dtype.
    """
    return torch.ops.quantnoise.block_noise.default(
        weight, _as_seed(seed), float(p), int(block_size), int(offset), bool(rescale), bool(straight_through), noise
    )


@torch.library.register_fake("quantnoise::block_noise")
def _block_noise_fake(weight, seed, p, block_size, offset=0, rescale=True, straight_through=True, noise="drop"):
    torch._check(
        weight.dim() >= 2, lambda: f"quantnoise::block_noise: weight must be >= 2-D, got {tuple(weight.shape)}"
    )
    torch._check(block_size > 0, lambda: f"quantnoise::block_noise: block_size must be positive, got {block_size}")
    return torch.empty_like(weight, memory_format=torch.contiguous_format)


def _block_noise_setup_context(ctx, inputs, output):
    _, seed, p, block_size, offset, rescale, straight_through, noise = inputs
    ctx.save_for_backward(seed)
    ctx.args = (p, block_size, offset, rescale, straight_through, noise)


def _block_noise_backward(ctx, grad: Tensor):
    (seed,) = ctx.saved_tensors
    p, block_size, offset, rescale, straight_through, noise = ctx.args
    scale = 1.0 / (1.0 - p) if (noise == "drop" and rescale) else 1.0
    if straight_through:  # identity (times s) on every entry, as if no block were noised
        grad_weight = grad * scale if scale != 1.0 else grad
    else:  # dropout-style: s*grad on kept blocks, 0 on noised ones = the drop forward on grad
        grad_weight = torch.ops.quantnoise.block_noise.default(
            grad, seed, p, block_size, offset, scale != 1.0, False, "drop"
        ).view_as(grad)
    return grad_weight, None, None, None, None, None, None, None


torch.library.register_autograd(
    "quantnoise::block_noise", _block_noise_backward, setup_context=_block_noise_setup_context
)


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
        (``[N]`` each for 2-D inputs).
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
        ``(sums, counts)``: float32 ``[B, K, D]`` and int64 ``[B, K]`` (without ``B`` for 2-D ``x``).
    """
    if x.dim() == 2 and codes.dim() == 1:
        sums, counts = torch.ops.quantnoise.kmeans_update.default(x.unsqueeze(0), codes.unsqueeze(0), int(n_centroids))
        return sums.squeeze(0), counts.squeeze(0)
    return torch.ops.quantnoise.kmeans_update.default(x, codes, int(n_centroids))


@torch.library.register_fake("quantnoise::kmeans_assign")
def _kmeans_assign_fake(x, centroids):
    torch._check(x.dim() == 3, lambda: f"quantnoise::kmeans_assign: x must be [B, N, D], got {tuple(x.shape)}")
    torch._check(
        centroids.dim() == 3, lambda: f"quantnoise::kmeans_assign: centroids must be [B, K, D], got {centroids.shape}"
    )
    batch, n = x.shape[0], x.shape[1]
    return x.new_empty((batch, n), dtype=torch.int64), x.new_empty((batch, n), dtype=torch.float32)


@torch.library.register_fake("quantnoise::kmeans_update")
def _kmeans_update_fake(x, codes, n_centroids):
    torch._check(x.dim() == 3, lambda: f"quantnoise::kmeans_update: x must be [B, N, D], got {tuple(x.shape)}")
    batch, dim = x.shape[0], x.shape[2]
    return (
        x.new_empty((batch, n_centroids, dim), dtype=torch.float32),
        x.new_empty((batch, n_centroids), dtype=torch.int64),
    )
