"""Plain-PyTorch reference of the k-means++ seeding op (``ops.kmeanspp_init``), re-exported by :mod:`.reference`.

D^2 sampling (Arthur & Vassilvitskii 2007) with the kernels' deterministic chunked float64 sampling rule
(``csrc/include/quantnoise/kmeanspp.h``), written one float add at a time so the picks compare exactly.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["kmeanspp_init", "kmeanspp_chunk_weights", "kmeanspp_sample"]

KMEANSPP_CHUNK, KMEANSPP_LANES = 1024, 32  # kKMeansPPChunk, kKMeansPPLanes (csrc/include/quantnoise/kmeanspp.h)


def kmeanspp_chunk_weights(w: list[float]) -> list[float]:
    """The chunk weights of ``kmeanspp.h`` for one problem's weights, in Python floats (float64, one add at a time):
    per chunk of 1024 points, 32 lanes summed in point order, combined as a warp's shuffle-down tree."""
    out = []
    for begin in range(0, len(w), KMEANSPP_CHUNK):
        lanes = [0.0] * KMEANSPP_LANES
        for i, v in enumerate(w[begin : begin + KMEANSPP_CHUNK]):
            lanes[i % KMEANSPP_LANES] += v
        offset = KMEANSPP_LANES // 2
        while offset:
            for lane in range(offset):
                lanes[lane] += lanes[lane + offset]
            offset //= 2
        out.append(lanes[0])
    return out


def kmeanspp_sample(w: list[float], chunk_weights: list[float], target: float) -> int:
    """The point whose prefix interval holds ``target`` by the rule of ``kmeanspp.h`` (-1 if every weight is 0)."""
    running, chunk, before = 0.0, None, 0.0
    for j, cw in enumerate(chunk_weights):
        if cw > 0.0:
            chunk, before = j, running
        if running + cw > target:
            break
        running += cw
    if chunk is None:
        return -1
    rest, acc, last = target - before, 0.0, -1
    for i in range(chunk * KMEANSPP_CHUNK, min(len(w), (chunk + 1) * KMEANSPP_CHUNK)):
        last = i if w[i] > 0.0 else last
        acc += w[i]
        if acc > rest:
            return i
    return last


def kmeanspp_init(x: Tensor, first: Tensor, uniforms: Tensor) -> Tensor:
    """Reference of ``ops.kmeanspp_init``: k-means++ seeding (D^2 sampling, Arthur & Vassilvitskii 2007).

    ``x [B, N, D]``, ``first [B]`` int64 (the first point of each problem), ``uniforms [B, K-1]``
    float64 in [0, 1). Step s weighs every point by its squared distance to the nearest point chosen
    so far (``((x - c)**2).sum(-1)`` in float32: exact for integer-valued data) and draws the point
    whose interval holds ``u * total`` by the chunked float64 rule of ``csrc/include/quantnoise/kmeanspp.h``
    (``floor(u * N)`` when every weight is 0). Returns int64 ``[B, K]`` point indices.
    """
    x = x.float().cpu()
    batch, n = x.shape[:2]
    rows = torch.arange(batch)
    picks = [first.long().cpu()]
    dmin = torch.full((batch, n), float("inf"))
    for s in range(uniforms.shape[1]):
        dmin = torch.minimum(dmin, ((x - x[rows, picks[-1]][:, None]) ** 2).sum(-1))
        step = []
        for b in range(batch):
            w, u = dmin[b].tolist(), float(uniforms[b, s])
            chunk_weights = kmeanspp_chunk_weights(w)
            total = 0.0
            for cw in chunk_weights:
                total += cw
            pick = kmeanspp_sample(w, chunk_weights, u * total) if total > 0.0 else -1
            step.append(pick if pick >= 0 else min(int(u * n), n - 1))
        picks.append(torch.tensor(step, dtype=torch.int64))
    return torch.stack(picks, 1)
