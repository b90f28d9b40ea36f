"""fairseq's code as written (``quant_noise``, ``pq/em.py``, the PQ modules, ``IntLinear``): benchmark baselines
and the oracles of the fairseq checkpoint format, re-exported by :mod:`quantnoise_kernels.reference`.

Written from fairseq's rules, independent of our kernels, layers and codes layout. The checkpoint functions
(``pq_decode_fairseq``, ``pq_encode_fairseq``) are the oracle of ``pq.from_fairseq_state_dict``.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "block_noise_fairseq",
    "pq_decode_fairseq",
    "pq_encode_fairseq",
    "ipq_em_iteration_fairseq",
    "kmeans_distances_fairseq",
    "pq_linear_fairseq",
    "emulate_int_fairseq",
]


def block_noise_fairseq(weight: Tensor, p: float, block_size: int) -> Tensor:
    """fairseq's algorithm as written (``quant_noise`` hook, Linear case), torch RNG, out of place.

    The benchmark baseline: Bernoulli per block, ``repeat_interleave`` to a full-size mask,
    ``masked_fill`` and a scale.
    """
    w = weight.reshape(weight.shape[0], -1)
    mask = torch.zeros(w.numel() // block_size, device=weight.device).bernoulli_(p)
    mask = mask.repeat_interleave(block_size).view_as(w).bool()
    return (w.masked_fill(mask, 0) / (1 - p)).view(weight.shape)


def pq_decode_fairseq(centroids: Tensor, assignments: Tensor, weight_shape) -> Tensor:
    """fairseq's ``weight`` property of PQLinear/PQEmbedding/PQConv2d.

    ``centroids[assignments]`` -> ``(N, bs)`` -> reshape ``(row/bs, out, bs)`` (block index major) -> permute to
    ``(out, row/bs, bs)`` -> ``(out, row)`` -> ``weight_shape`` (``(out, in/groups, kh, kw)`` for a conv).
    """
    out = weight_shape[0]
    block_size = centroids.shape[1]
    w = centroids[assignments].reshape(-1, out, block_size).permute(1, 0, 2)
    return w.reshape(out, -1).reshape(tuple(weight_shape))


def pq_encode_fairseq(weight: Tensor, centroids: Tensor) -> Tensor:
    """Nearest-centroid ``assignments`` of ``weight``'s blocks in fairseq's order (n = j*out + o), int64.

    fairseq's ``PQ._reshape``: ``(out, row/bs, bs)`` -> permute ``(bs, row/bs, out)`` -> columns are blocks.
    Exact squared distances (no GEMM shortcut), lowest index on ties: for building test checkpoints.
    """
    out, block_size = weight.shape[0], centroids.shape[1]
    cols = weight.reshape(out, -1, block_size).permute(1, 0, 2).reshape(-1, block_size)  # (row/bs * out, bs)
    dist = ((cols[:, None, :].double() - centroids[None, :, :].double()) ** 2).sum(-1)
    return dist.argmin(dim=1)


def ipq_em_iteration_fairseq(w_r: Tensor, centroids: Tensor) -> tuple[Tensor, Tensor]:
    """One iteration of fairseq's iPQ EM as written (``pq/em.py``), the ``quantize_model_`` benchmark baseline.

    ``w_r [bs, N]`` (columns are the blocks), ``centroids [K, bs]``. E-step with the broadcast ``(K, bs, N)``
    distance temporary (Euclidean norms, no GEMM), ``argmin``; cluster counting with a Python ``Counter`` over
    one ``.item()`` per block; M-step as a Python loop over centroids with a boolean-mask gather; objective.
    Not included: the empty-cluster repair loop (each repair attempt costs fairseq one more full distance
    pass), so this is a lower bound of fairseq's iteration. Returns ``(centroids, assignments)``.
    """
    from collections import Counter

    distances = (w_r[None, :, :] - centroids[:, :, None]).norm(p=2, dim=1)  # (K, N)
    assignments = distances.argmin(dim=0)
    counts = Counter(a.item() for a in assignments)
    _ = set(range(centroids.shape[0])) - set(counts)  # fairseq's empty set (repair loop not run)
    centroids = centroids.clone()
    for k in range(centroids.shape[0]):
        members = w_r[:, assignments == k]
        if members.shape[1] > 0:
            centroids[k] = members.mean(dim=1)
    _ = (centroids[assignments].t() - w_r).norm(p=2).item()  # fairseq logs the objective every step
    return centroids, assignments


def kmeans_distances_fairseq(x_t: Tensor, centroids: Tensor) -> Tensor:
    """fairseq's EM distance as written (``pq/em.py``): ``x_t [D, N]`` (columns are vectors),
    ``centroids [K, D]``; broadcasts a ``(K, D, N)`` temporary and returns the (not squared) norms ``[K, N]``.
    """
    return (x_t[None, :, :] - centroids[:, :, None]).norm(p=2, dim=1)


def pq_linear_fairseq(x: Tensor, centroids: Tensor, assignments: Tensor, bias: Tensor | None, out_features: int):
    """fairseq's ``PQLinear.forward`` as written: rebuild the whole weight on every forward.

    ``assignments`` ``[n_blocks * out]`` int64 in fairseq's order (block index first, then output
    row), centroids ``[K, bs]``. The benchmark baseline.
    """
    in_features = assignments.numel() // out_features * centroids.shape[1]
    weight = centroids[assignments].reshape(-1, out_features, centroids.shape[1]).permute(1, 0, 2).flatten(1, 2)
    assert weight.shape[1] == in_features
    return torch.nn.functional.linear(x, weight, bias)


def emulate_int_fairseq(weight: Tensor, p: float, scale: Tensor, zero_point: Tensor, bits: int) -> Tensor:
    """fairseq's ``IntLinear`` weight noise as written (scalar/modules/qlinear.py), cached qparams
    (observer excluded), per-tensor: the benchmark baseline. Bernoulli mask per weight, the noise
    ``Q(W) - W`` computed from the unclamped weight (fairseq#2968), STE through ``clamp``."""
    s, z = scale.to(weight.dtype), zero_point.to(weight.dtype)
    w_q = (torch.clamp(torch.round(weight.detach() / s + z), 0, 2**bits - 1) - z) * s
    mask = torch.zeros_like(weight).bernoulli_(1 - p).bool()
    noise = (w_q - weight).masked_fill(mask, 0)
    lo, hi = (-s * z).item(), (s * (2**bits - 1 - z)).item()
    return torch.clamp(weight, lo, hi) + noise.detach()
