"""Typed wrappers of the ``torch.ops.quantnoise`` ops, by family, with their fake kernels and autograd.

Each public function is one hop to the dispatcher, which picks the CPU or CUDA kernel. The fake
kernels give ``torch.compile`` output metadata; they mirror the C++ checks that shape depends on.

- :mod:`.noise`: ``draw_seed``, ``block_noise`` (Quant-Noise, every noise kind).
- :mod:`.noisy`: ``noisy_linear`` (the fused noisy linear layer).
- :mod:`.kmeans`: ``kmeans_assign``, ``kmeans_update``, ``kmeanspp_init``/``_step``/``_sample``
  (iPQ clustering).
- :mod:`.kmeans_weighted`: ``kmeans_assign_weighted``, ``kmeans_update_weighted`` (activation-aware iPQ).
- :mod:`.pq`: ``pq_pack_codes``, ``pq_unpack_codes``, ``pq_decode``, ``pq_linear``, ``pq_embedding``,
  ``pq_linear_backward``, ``pq_embedding_backward`` (PQ training from the codes).
"""

from __future__ import annotations

from .kmeans import kmeans_assign, kmeans_update, kmeanspp_init, kmeanspp_sample, kmeanspp_step
from .kmeans_weighted import kmeans_assign_weighted, kmeans_update_weighted
from .noise import block_noise, draw_seed
from .noisy import noisy_linear
from .pq import (
    pq_decode,
    pq_embedding,
    pq_embedding_backward,
    pq_linear,
    pq_linear_backward,
    pq_pack_codes,
    pq_unpack_codes,
)

__all__ = [
    "block_noise",
    "draw_seed",
    "kmeans_assign",
    "kmeans_update",
    "kmeans_assign_weighted",
    "kmeans_update_weighted",
    "kmeanspp_init",
    "kmeanspp_step",
    "kmeanspp_sample",
    "noisy_linear",
    "pq_pack_codes",
    "pq_unpack_codes",
    "pq_decode",
    "pq_linear",
    "pq_embedding",
    "pq_linear_backward",
    "pq_embedding_backward",
]
