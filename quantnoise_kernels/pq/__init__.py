"""iPQ: the weight quantizer (and, from other modules, PQ layers and the compression pipeline)."""

from __future__ import annotations

from .quantizer import PQ, blocks_to_weight, codes_dtype, from_fairseq_order, to_fairseq_order, weight_to_blocks

__all__ = ["PQ", "weight_to_blocks", "blocks_to_weight", "to_fairseq_order", "from_fairseq_order", "codes_dtype"]
