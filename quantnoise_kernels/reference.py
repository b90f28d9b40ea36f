"""Plain-PyTorch reference of every op: the oracle for the tests and the baseline of the benchmarks.

fairseq's own code as written (the benchmark baselines, the checkpoint-format oracles: ``*_fairseq``) lives in
:mod:`.reference_fairseq` and is re-exported here, as is the k-means++ seeding reference (:mod:`.reference_kmeanspp`).

Written for clarity, not speed, and independent of the compiled kernels. The noise reference
reproduces the kernels' Philox block draw with int64 tensor arithmetic, so masks compare exactly.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .reference_fairseq import (
    block_noise_fairseq,
    emulate_int_fairseq,
    ipq_em_iteration_fairseq,
    kmeans_distances_fairseq,
    pq_decode_fairseq,
    pq_encode_fairseq,
    pq_linear_fairseq,
)
from .reference_kmeanspp import kmeanspp_chunk_weights, kmeanspp_init, kmeanspp_sample

__all__ = [
    "philox4x32_10",
    "block_noise_mask",
    "block_noise",
    "block_noise_fairseq",
    "kmeans_assign",
    "kmeans_assign_addmm",
    "kmeans_distances_fairseq",
    "kmeanspp_init",
    "kmeanspp_chunk_weights",
    "kmeanspp_sample",
    "kmeans_update",
    "kmeans_assign_weighted",
    "kmeans_update_weighted",
    "pq_decode_fairseq",
    "pq_encode_fairseq",
    "ipq_em_iteration_fairseq",
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
    w = weight.reshape(out_features, math.prod(weight.shape[1:]))  # not -1: also for out_features = 0
    mask = block_noise_mask(w.numel() // block_size, p, seed, offset, device=weight.device)
    mask = mask.repeat_interleave(block_size).view_as(w)
    scale = 1.0 / (1.0 - p) if rescale else 1.0
    return (w.masked_fill(mask, 0) * scale).to(weight.dtype).view(weight.shape)


def kmeans_assign(x: Tensor, centroids: Tensor, chunk: int = 4096) -> tuple[Tensor, Tensor]:
    """Reference of ``ops.kmeans_assign``: exact squared distances ``((x - c)**2).sum(-1)`` in fp32 (fp64 for fp64
    inputs), the first index of the minimum, in chunks of ``chunk`` vectors. ``x [B, N, D]``, ``centroids [B, K, D]``.

    The kernels' non-finite rule: a NaN distance never wins (a NaN centroid is never chosen); a point whose
    distances are all NaN (a NaN coordinate) gets code 0 and distance NaN. Points far enough to overflow float32
    need float64 inputs here (the kernels rank them in float64).
    """
    opmath = torch.float64 if x.dtype == torch.float64 else torch.float32
    x, c = x.to(opmath), centroids.to(opmath)
    codes, dist = [], []
    for start in range(0, x.shape[1], chunk):
        d2 = ((x[:, start : start + chunk, None, :] - c[:, None, :, :]) ** 2).sum(-1)  # [B, n, K]
        best = torch.where(torch.isnan(d2), torch.inf, d2).min(-1)
        codes.append(best.indices)
        dist.append(d2.gather(-1, best.indices.unsqueeze(-1)).squeeze(-1))
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


def kmeans_update(x: Tensor, codes: Tensor, n_centroids: int) -> tuple[Tensor, Tensor]:
    """Reference of ``ops.kmeans_update`` (fp64 ``index_add_``): ``x [B, N, D]``, ``codes [B, N]``."""
    batch, _, dim = x.shape
    sums = torch.zeros(batch, n_centroids, dim, dtype=torch.float64, device=x.device)
    counts = torch.zeros(batch, n_centroids, dtype=torch.int64, device=x.device)
    for b in range(batch):
        sums[b].index_add_(0, codes[b], x[b].double())
        counts[b] = torch.bincount(codes[b], minlength=n_centroids)
    return sums.float(), counts


def _h_of_points(h: Tensor, n: int) -> Tensor:
    """fp64 ``[B, N, D, D]``: the full ``H`` of every point (``h[:, n % G]``; a diagonal ``h`` made full)."""
    h = h.double()
    full = torch.diag_embed(h) if h.dim() == 3 else h
    return full.repeat(1, n // h.shape[1], 1, 1)


def kmeans_assign_weighted(x: Tensor, centroids: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
    """Reference of ``ops.kmeans_assign_weighted``: the weighted distances ``(x - c)^T H (x - c)`` of every
    (point, centroid) pair in fp64, the first index of the minimum. ``x [B, N, D]``, ``centroids [B, K, D]``,
    ``h [B, G, D, D]`` or ``[B, G, D]`` (point ``n`` uses ``h[:, n % G]``)."""
    hp = _h_of_points(h, x.shape[1])  # [B, N, D, D]
    diff = x.double()[:, :, None, :] - centroids.double()[:, None, :, :]  # [B, N, K, D]
    d2 = torch.einsum("bnkd,bnde,bnke->bnk", diff, hp, diff)
    codes = d2.argmin(-1)
    return codes, d2.gather(-1, codes[..., None])[..., 0].float()


def kmeans_update_weighted(x: Tensor, codes: Tensor, h: Tensor, n_centroids: int) -> tuple[Tensor, ...]:
    """Reference of ``ops.kmeans_update_weighted`` (fp64 ``index_add_``): ``(h_sums, hx_sums, sums, counts)``."""
    batch, n, dim = x.shape
    hp = _h_of_points(h, n)
    hx = torch.einsum("bnde,bne->bnd", hp, x.double())
    h_pts = hp.diagonal(0, -2, -1) if h.dim() == 3 else hp
    h_sums = torch.zeros(batch, n_centroids, *h_pts.shape[2:], dtype=torch.float64)
    hx_sums = torch.zeros(batch, n_centroids, dim, dtype=torch.float64)
    for b in range(batch):
        h_sums[b].index_add_(0, codes[b], h_pts[b])
        hx_sums[b].index_add_(0, codes[b], hx[b])
    sums, counts = kmeans_update(x, codes, n_centroids)
    return h_sums.float(), hx_sums.float(), sums, counts


# ---------------------------------------------------------------------------------------------
# Product quantization references (DESIGN §3.3): decode, then the plain torch op.

__all__ += ["dequantize_centroids", "act_fake_quant", "pq_decode", "pq_linear", "pq_embedding", "pq_linear_fairseq"]


def dequantize_centroids(
    centroids: Tensor, scale: Tensor | None = None, zero_point: Tensor | None = None, dtype=torch.float32
) -> Tensor:
    """Float centroids as they are; int8 ones as ``(c - zero_point) * scale`` in float32."""
    if centroids.dtype != torch.int8:
        return centroids.to(dtype)
    c = centroids.float()
    if zero_point is not None:
        c = c - zero_point.float().reshape(-1, 1)
    return (c * scale.float().reshape(-1, 1)).to(dtype)


def act_fake_quant(x: Tensor, bits: int, granularity: str = "tensor") -> Tensor:
    """Affine int-``bits`` fake quantization of ``x[rows, in]`` over a range widened to hold 0,
    one range per tensor or per row ("token"); round half to even, as the kernels do."""
    if granularity == "token":
        lo, hi = x.amin(dim=-1, keepdim=True), x.amax(dim=-1, keepdim=True)
    else:
        lo, hi = x.amin().reshape(1, 1), x.amax().reshape(1, 1)
    lo, hi = lo.float().clamp(max=0), hi.float().clamp(min=0)
    qmax = float(2**bits - 1)
    scale = (hi - lo) / qmax
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    zp = torch.round(-lo / scale).clamp(0, qmax)
    q = (torch.round(x.float() / scale) + zp).clamp(0, qmax)
    return ((q - zp) * scale).to(x.dtype)


def pq_decode(
    codes: Tensor, centroids: Tensor, shape, centroid_scale: Tensor | None = None,
    centroid_zero_point: Tensor | None = None, dtype=None,
) -> Tensor:  # fmt: skip
    """``W.reshape(out, -1)[o, j*bs:(j+1)*bs] = C[codes[o, j]]`` (codes in the interchange layout)."""
    if dtype is None:
        dtype = torch.float32 if centroids.dtype == torch.int8 else centroids.dtype
    c = dequantize_centroids(centroids, centroid_scale, centroid_zero_point, dtype)
    return c[codes.long()].reshape(shape)


def pq_linear(
    x: Tensor, codes: Tensor, centroids: Tensor, bias: Tensor | None = None, centroid_scale: Tensor | None = None,
    centroid_zero_point: Tensor | None = None, act_bits: int = 0, act_granularity: str = "tensor",
) -> Tensor:  # fmt: skip
    """Decode, then ``F.linear`` (fake-quantizing ``x`` first if ``act_bits``), straight-through."""
    out, n_blocks = codes.shape
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    w = pq_decode(codes, centroids, (out, n_blocks * centroids.shape[1]), centroid_scale, centroid_zero_point, compute)
    xc = x.to(compute)
    if act_bits:
        flat = xc.reshape(math.prod(xc.shape[:-1]), x.shape[-1])
        xc = (flat + (act_fake_quant(flat.detach(), act_bits, act_granularity) - flat).detach()).reshape(xc.shape)
    b = None if bias is None else bias.to(compute)
    return torch.nn.functional.linear(xc, w, b).to(x.dtype)


def pq_embedding(
    indices: Tensor, codes: Tensor, centroids: Tensor, centroid_scale: Tensor | None = None,
    centroid_zero_point: Tensor | None = None, dtype=None,
) -> Tensor:  # fmt: skip
    """Decode the whole table, then ``F.embedding``."""
    w = pq_decode(codes, centroids, (codes.shape[0], -1), centroid_scale, centroid_zero_point, dtype)
    return torch.nn.functional.embedding(indices, w)


# ---------------------------------------------------------------------------------------------
# Centroid noise (DESIGN §3.1, noise="centroid").

__all__ += ["nearest_centroid", "block_noise_centroid"]


def nearest_centroid(blocks: Tensor, centroids: Tensor) -> Tensor:
    """Index ``[n]`` of the row of ``centroids[K, bs]`` nearest to each of ``blocks[n, bs]`` in squared L2.

    Sums ``(b_d - c_d)**2`` over ``d`` in order, in float32 (float64 for float64 inputs), each
    product rounded once: the kernels' arithmetic, so near-ties resolve alike. Ties go to the
    lowest index (``argmin`` returns the first minimum).

    The non-finite rule of the kernels (``nearest_centroid`` in csrc/include/quantnoise/pq.h): a NaN distance
    never wins; a block whose distances are all infinite or NaN in float32 (past ~1.8e19 apart) is ranked again
    in float64; a block whose distances are all NaN (a NaN in the block) gets index 0.
    """
    opmath = torch.float64 if blocks.dtype == torch.float64 else torch.float32
    best = _first_min(_ordered_squared_distances(blocks, centroids, opmath))
    redo = ~torch.isfinite(best.values)
    if redo.any() and opmath != torch.float64:
        again = _first_min(_ordered_squared_distances(blocks[redo], centroids, torch.float64))
        best.indices[redo] = again.indices
    return best.indices


def _ordered_squared_distances(blocks: Tensor, centroids: Tensor, opmath: torch.dtype) -> Tensor:
    diff = blocks.to(opmath)[:, None, :] - centroids.to(opmath)[None, :, :]  # [n, K, bs]
    sq = diff * diff
    d2 = torch.zeros(sq.shape[:2], dtype=opmath, device=blocks.device)
    for d in range(sq.shape[2]):
        d2 = d2 + sq[:, :, d]
    return d2


def _first_min(d2: Tensor):
    """Per row, the lowest index of the smallest value, NaN never the smallest (index 0 if all are NaN)."""
    return torch.where(torch.isnan(d2), torch.inf, d2).min(dim=1)


def block_noise_centroid(
    weight: Tensor, p: float, block_size: int, seed: int, centroids: Tensor, offset: int = 0
) -> Tensor:
    """Reference of ``ops.block_noise(noise="centroid")``: noised blocks become their nearest centroid, s = 1."""
    blocks = weight.reshape(-1, block_size)
    mask = block_noise_mask(blocks.shape[0], p, seed, offset, device=weight.device)
    out = blocks.clone()
    if mask.any():
        out[mask] = centroids[nearest_centroid(blocks[mask], centroids)]
    return out.view(weight.shape)


# Scalar (int-N fake-quant) noise (DESIGN §3.1, noise="fake_quant"; issue 8).

__all__ += ["fake_quant", "fake_quant_bounds", "block_noise_fake_quant", "fake_quant_clamp_mask", "emulate_int_fairseq"]


def fake_quant(weight: Tensor, scale: Tensor, zero_point: Tensor, quant_min: int, quant_max: int) -> Tensor:
    """``(clamp(rint(w * (1/s)) + z, qmin, qmax) - z) * s`` per tensor (1 value) or per row of
    ``weight.reshape(out, -1)`` (``out`` values), in float32 (float64 for float64): PyTorch's own
    ``fake_quantize_per_{tensor,channel}_affine`` arithmetic, written out."""
    opmath = torch.float64 if weight.dtype == torch.float64 else torch.float32
    w = weight.reshape(weight.shape[0], -1).to(opmath)
    s = scale.to(torch.float32).reshape(-1, 1).to(opmath)
    inv_s = (1.0 / scale.to(torch.float32)).reshape(-1, 1).to(opmath)
    z = zero_point.reshape(-1, 1).to(opmath)
    q = torch.clamp(torch.round(w * inv_s) + z, quant_min, quant_max)
    return ((q - z) * s).to(weight.dtype).view(weight.shape)


def fake_quant_bounds(scale: Tensor, zero_point: Tensor, quant_min: int, quant_max: int) -> tuple[Tensor, Tensor]:
    """The float range ``[(qmin - z) * s, (qmax - z) * s]`` of the grid, ``[n, 1]`` float32."""
    s = scale.to(torch.float32).reshape(-1, 1)
    z = zero_point.to(torch.float32).reshape(-1, 1)
    return (quant_min - z) * s, (quant_max - z) * s


def block_noise_fake_quant(
    weight: Tensor,
    p: float,
    block_size: int,
    seed: int,
    scale: Tensor,
    zero_point: Tensor,
    quant_min: int,
    quant_max: int,
    offset: int = 0,
) -> Tensor:
    """Reference of ``ops.block_noise(noise="fake_quant")``: noised blocks become their fake-quantized
    value, kept blocks are clamped to the grid's range (s = 1); the mask of ``block_noise_mask``."""
    w = weight.reshape(weight.shape[0], -1)
    mask = block_noise_mask(w.numel() // block_size, p, seed, offset, device=weight.device)
    mask = mask.repeat_interleave(block_size).view_as(w)
    lo, hi = fake_quant_bounds(scale, zero_point, quant_min, quant_max)
    opmath = torch.float64 if weight.dtype == torch.float64 else torch.float32
    kept = torch.minimum(torch.maximum(w.to(opmath), lo.to(opmath)), hi.to(opmath)).to(weight.dtype)
    return torch.where(mask, fake_quant(w, scale, zero_point, quant_min, quant_max), kept).view(weight.shape)


def fake_quant_clamp_mask(weight: Tensor, scale: Tensor, zero_point: Tensor, quant_min: int, quant_max: int) -> Tensor:
    """Bool, ``weight``'s shape: the entries inside the grid's range (where the gradient passes)."""
    w = weight.reshape(weight.shape[0], -1).float()
    lo, hi = fake_quant_bounds(scale, zero_point, quant_min, quant_max)
    return ((w >= lo) & (w <= hi)).view(weight.shape)
