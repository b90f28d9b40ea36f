"""Scalar quantization (int8/int4) (fairseq ``modules/quantization/scalar``).

Quantization parameters come from torchao's observers configured for the real int-N grid
(:mod:`.qparams`); PQ layers use them for int8 centroids (iPQ & int8).
"""

from __future__ import annotations

from .qparams import QParams, QuantGrid, observe

__all__ = ["QuantGrid", "QParams", "observe"]
