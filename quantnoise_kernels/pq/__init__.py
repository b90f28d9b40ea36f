"""iPQ: product quantization of weights, PQ-compressed layers and the staged pipeline."""

from __future__ import annotations

from .layers import PQConv2d, PQEmbedding, PQLinear

__all__ = ["PQConv2d", "PQEmbedding", "PQLinear"]
