"""The block layout's rules in Python: the mirror of ``csrc/include/quantnoise/blocks.h`` and the block checks of
``csrc/checks.cpp``.

A weight ``W`` is viewed as ``W.reshape(out, -1)``; a block is ``block_size`` consecutive entries of one row
(DESIGN §3). This module is the one place, on the Python side, for: the row length of a weight, the check that
``block_size`` divides it (with the C++ kernels' message, so a fake kernel, a layer and a kernel say the same
thing), the dtype codes take for ``K`` centroids, the range seeds are drawn from, and the constants the C++ side
owns.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = [
    "MAX_CENTROIDS",
    "UINT8_MAX_CENTROIDS",
    "SEED_HIGH",
    "row_length",
    "check_block_size",
    "codes_dtype",
]

# kKMeansMaxCentroids in csrc/include/quantnoise/kmeans.h: the largest K the k-means kernels take.
MAX_CENTROIDS = 65536
# Codes are uint8 while every code fits in a byte (K <= 256), int32 above (the PQ kernels take both).
UINT8_MAX_CENTROIDS = 256
# Seeds drawn from torch's RNG (Philox keys, k-means generators) lie in [0, SEED_HIGH).
SEED_HIGH = 2**62


def row_length(shape: Sequence[int]) -> int:
    """Entries per row of ``weight.reshape(out, -1)`` for a weight of ``shape`` (also when ``out == 0``)."""
    return math.prod(shape[1:])


def check_block_size(block_size: int, shape: Sequence[int], where: str) -> int:
    """Check that ``block_size`` is a positive int dividing the row length of a weight of ``shape``.

    The messages are those of the C++ kernels (``check_block_noise_args``), prefixed by ``where`` (the op or
    function, plus the layer name where there is one). Works on symbolic sizes too (fake kernels).

    Returns:
        The row length.

    Raises:
        TypeError: ``block_size`` is not an int.
        ValueError: ``block_size`` is not positive or does not divide the row length.
    """
    if isinstance(block_size, bool) or not isinstance(block_size, (int, torch.SymInt)):
        raise TypeError(f"{where}: block_size must be an int, got {block_size!r}")
    torch._check_value(block_size > 0, lambda: f"{where}: block_size must be positive, got {block_size}")
    row = row_length(shape)
    torch._check_value(
        row % block_size == 0,
        lambda: (
            f"{where}: block_size must divide the row length of weight ({row} for shape {list(shape)}), "
            f"got block_size={block_size}"
        ),
    )
    return row


def codes_dtype(n_centroids: int) -> torch.dtype:
    """The dtype of codes addressing ``n_centroids`` centroids: ``uint8`` when ``K <= 256``, else ``int32``."""
    return torch.uint8 if n_centroids <= UINT8_MAX_CENTROIDS else torch.int32
