"""Typed wrappers of the ``torch.ops.quantnoise`` ops, by family, with their fake kernels and autograd.

Each public function is one hop to the dispatcher, which picks the CPU or CUDA kernel. The fake
kernels give ``torch.compile`` output metadata; they mirror the C++ checks that shape depends on.

- :mod:`.noise`: ``draw_seed``, ``block_noise`` (Quant-Noise, every noise kind).
- :mod:`.noisy`: ``noisy_linear`` (the fused noisy linear layer).
- :mod:`.kmeans`: ``kmeans_assign``, ``kmeans_update`` (iPQ clustering).
- :mod:`.kmeans_weighted`: ``kmeans_assign_weighted``, ``kmeans_update_weighted`` (activation-aware iPQ).
- :mod:`.pq`: ``pq_pack_codes``, ``pq_unpack_codes``, ``pq_decode``, ``pq_linear``, ``pq_embedding``,
  ``pq_linear_backward``, ``pq_embedding_backward`` (PQ training from the codes).
"""

from __future__ import annotations

from . import (
    _pq_autograd,  # noqa: F401  (registers the autograd formulas of the PQ ops)
    kmeans,
    kmeans_weighted,
    noisy,
    pq,
)
from .kmeans import *  # noqa: F403
from .kmeans_weighted import *  # noqa: F403
from .noise import block_noise, draw_seed
from .noisy import *  # noqa: F403
from .pq import *  # noqa: F403

__all__ = ["block_noise", "draw_seed", *noisy.__all__, *kmeans.__all__, *kmeans_weighted.__all__, *pq.__all__]
