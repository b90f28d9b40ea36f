"""iPQ: product quantizer, PQ layers, the staged fairseq-compatible pipeline, size accounting, save/load.

- :class:`PQ`, ``weight_to_blocks``/``blocks_to_weight``, ``to_fairseq_order``/``from_fairseq_order``
  (:mod:`.quantizer`): k-means of a weight's blocks.
- :class:`PQLinear`, :class:`PQConv2d`, :class:`PQEmbedding` (:mod:`.layers`): layers holding uint8 codes and a
  codebook, computing without the dense weight.
- :func:`quantize_model_`, :func:`get_layers`, :func:`get_param` (:mod:`.pipeline`): fairseq's staged
  quantization; :class:`SizeTracker` (:mod:`.size_tracker`); :func:`load_config_yaml` (:mod:`.config`).
- :func:`save_compressed`, :func:`load_compressed`, :func:`from_fairseq_state_dict` (:mod:`.serialization`).
"""

from __future__ import annotations

from .config import DEFAULT_CONFIG, load_config_yaml
from .layers import PQConv2d, PQEmbedding, PQLinear
from .pipeline import get_layers, get_param, quantize_model_
from .quantizer import PQ, blocks_to_weight, codes_dtype, from_fairseq_order, to_fairseq_order, weight_to_blocks
from .serialization import from_fairseq_state_dict, load_compressed, save_compressed
from .size_tracker import HeldBytes, SizeTracker, held_bytes

__all__ = [
    "PQ",
    "weight_to_blocks",
    "blocks_to_weight",
    "to_fairseq_order",
    "from_fairseq_order",
    "codes_dtype",
    "PQLinear",
    "PQConv2d",
    "PQEmbedding",
    "quantize_model_",
    "get_layers",
    "get_param",
    "SizeTracker",
    "HeldBytes",
    "held_bytes",
    "load_config_yaml",
    "DEFAULT_CONFIG",
    "save_compressed",
    "load_compressed",
    "from_fairseq_state_dict",
]
