"""Plain-PyTorch reference of every op: the oracle for the tests and the baseline of the benchmarks.

Written for clarity, not speed, and independent of the compiled kernels. The noise reference
reproduces the kernels' Philox block draw with int64 tensor arithmetic, so masks compare exactly.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "philox4x32_10",
    "block_noise_mask",
    "block_noise",
    "block_noise_fairseq",
    "kmeans_assign",
    "kmeans_assign_addmm",
    "kmeans_distances_fairseq",
    "kmeans_update",
]

_MASK32 = 0xFFFFFFFF


def _mulhilo32(a: int, b: Tensor) -> tuple[Tensor, Tensor]:
    """High and low 32-bit words of ``a * b`` for a 32-bit constant ``a`` and int64 words ``b``.

    ``a * b`` needs 64 unsigned bits, which int64 cannot hold; split ``b`` into 16-bit halves.
    """
    t_lo = a * (b & 0xFFFF)  # < 2**48
    t_hi = a * (b >> 16)  # < 2**48
    s = t_lo + ((t_hi & 0xFFFF) << 16)
    return (t_hi >> 16) + (s >> 32), s & _MASK32


def philox4x32_10(counter: Tensor, key0: int, key1: int) -> Tensor:
    """Philox-4x32-10 (Random123) on ``counter[..., 4]`` (int64 holding uint32 words).

    Returns the four output words per counter, int64 in ``[0, 2**32)``.
    """
    c0, c1, c2, c3 = counter.unbind(-1)
    k0, k1 = key0 & _MASK32, key1 & _MASK32
    for round_ in range(10):
        if round_ > 0:
            k0, k1 = (k0 + 0x9E3779B9) & _MASK32, (k1 + 0xBB67AE85) & _MASK32
        hi0, lo0 = _mulhilo32(0xD2511F53, c0)
        hi1, lo1 = _mulhilo32(0xCD9E8D57, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return torch.stack([c0, c1, c2, c3], dim=-1)


def block_noise_mask(n_blocks: int, p: float, seed: int, offset: int = 0, device=None) -> Tensor:
    """Bool ``[n_blocks]``: True where block ``b`` is noised (the rule of ``csrc/include/quantnoise/blocks.h``)."""
    seed &= 2**64 - 1
    offset &= 2**64 - 1
    n_groups = (n_blocks + 3) // 4
    g = torch.arange(n_groups, dtype=torch.int64, device=device)
    counter = torch.stack(
        [g & _MASK32, g >> 32, torch.full_like(g, offset & _MASK32), torch.full_like(g, offset >> 32)], dim=-1
    )
    lanes = philox4x32_10(counter, seed & _MASK32, seed >> 32).reshape(-1)[:n_blocks]
    threshold = 2**32 if p >= 1.0 else int(p * 4294967296.0)
    return lanes < threshold


def block_noise(weight: Tensor, p: float, block_size: int, seed: int, offset: int = 0, rescale: bool = True) -> Tensor:
    """Reference of ``ops.block_noise(noise="drop")``: mask, repeat per element, zero, rescale."""
    out_features = weight.shape[0]
    w = weight.reshape(out_features, -1)
    mask = block_noise_mask(w.numel() // block_size, p, seed, offset, device=weight.device)
    mask = mask.repeat_interleave(block_size).view_as(w)
    scale = 1.0 / (1.0 - p) if rescale else 1.0
    return (w.masked_fill(mask, 0) * scale).to(weight.dtype).view(weight.shape)


def block_noise_fairseq(weight: Tensor, p: float, block_size: int) -> Tensor:
    """fairseq's algorithm as written (``quant_noise`` hook, Linear case), torch RNG, out of place.

    The benchmark baseline: Bernoulli per block, ``repeat_interleave`` to a full-size mask,
    ``masked_fill`` and a scale.
    """
    w = weight.reshape(weight.shape[0], -1)
    mask = torch.zeros(w.numel() // block_size, device=weight.device).bernoulli_(p)
    mask = mask.repeat_interleave(block_size).view_as(w).bool()
    return (w.masked_fill(mask, 0) / (1 - p)).view(weight.shape)


def kmeans_assign(x: Tensor, centroids: Tensor, chunk: int = 4096) -> tuple[Tensor, Tensor]:
    """Reference of ``ops.kmeans_assign``: exact squared distances ``((x - c)**2).sum(-1)`` in fp32,
    ``argmin`` (first index on ties), in chunks of ``chunk`` vectors. ``x [B, N, D]``, ``centroids [B, K, D]``.
    """
    x, c = x.float(), centroids.float()
    codes, dist = [], []
    for start in range(0, x.shape[1], chunk):
        d2 = ((x[:, start : start + chunk, None, :] - c[:, None, :, :]) ** 2).sum(-1)  # [B, n, K]
        best = d2.min(-1)
        codes.append(d2.argmin(-1))
        dist.append(best.values)
    if not codes:
        return x.new_empty(x.shape[:2], dtype=torch.int64), x.new_empty(x.shape[:2])
    return torch.cat(codes, 1), torch.cat(dist, 1)


def kmeans_assign_addmm(x: Tensor, centroids: Tensor, chunk: int = 65536) -> Tensor:
    """Plain-torch baseline of the assignment: ``||c||^2 - 2 x.c`` by ``addmm`` and ``argmin``, chunked over N.

    ``x [N, D]``, ``centroids [K, D]`` fp32; returns int64 codes ``[N]``. Near-ties may rank
    differently from the exact distance (a GEMM's rounding); it is the speed baseline.
    """
    norms = (centroids * centroids).sum(1)
    out = []
    for start in range(0, x.shape[0], chunk):
        scores = torch.addmm(norms, x[start : start + chunk], centroids.t(), alpha=-2.0)
        out.append(scores.argmin(1))
    return torch.cat(out)


def kmeans_distances_fairseq(x_t: Tensor, centroids: Tensor) -> Tensor:
    """fairseq's EM distance as written (``pq/em.py``): ``x_t [D, N]`` (columns are vectors),
    ``centroids [K, D]``; broadcasts a ``(K, D, N)`` temporary and returns the (not squared) norms ``[K, N]``.
    """
    return (x_t[None, :, :] - centroids[:, :, None]).norm(p=2, dim=1)


def kmeans_update(x: Tensor, codes: Tensor, n_centroids: int) -> tuple[Tensor, Tensor]:
    """Reference of ``ops.kmeans_update`` (fp64 ``index_add_``): ``x [B, N, D]``, ``codes [B, N]``."""
    batch, _, dim = x.shape
    sums = torch.zeros(batch, n_centroids, dim, dtype=torch.float64, device=x.device)
    counts = torch.zeros(batch, n_centroids, dtype=torch.int64, device=x.device)
    for b in range(batch):
        sums[b].index_add_(0, codes[b], x[b].double())
        counts[b] = torch.bincount(codes[b], minlength=n_centroids)
    return sums.float(), counts
