"""iPQ: product quantizer, PQ layers, the staged fairseq-compatible pipeline, size accounting, save/load.

- :class:`PQ`, ``weight_to_blocks``/``blocks_to_weight``, ``to_fairseq_order``/``from_fairseq_order``
  (:mod:`.quantizer`): k-means of a weight's blocks.
- :class:`PQLinear`, :class:`PQConv1d`, :class:`PQConv2d`, :class:`PQEmbedding` (:mod:`.layers`, base class
  :class:`PQLayer`): layers holding uint8 codes and a codebook, computing without the dense weight;
  :mod:`.registry`: which PQ layer replaces which dense layer.
- :func:`quantize_model_` (:mod:`.pipeline`: a plan step and an apply step), :func:`get_layers`,
  :func:`get_param` (:mod:`.selection`): fairseq's staged quantization; :class:`SizeTracker`
  (:mod:`.size_tracker`); :func:`load_config_yaml` (:mod:`.config`).
- :func:`save_compressed`, :func:`load_compressed` (:mod:`.serialization`); :func:`from_fairseq_state_dict`
  (:mod:`.fairseq`: fairseq's checkpoint format).
"""

from __future__ import annotations

from .config import DEFAULT_CONFIG, load_config_yaml
from .fairseq import from_fairseq_state_dict
from .layers import PQConv1d, PQConv2d, PQEmbedding, PQLayer, PQLinear
from .pipeline import quantize_model_
from .quantizer import PQ, blocks_to_weight, codes_dtype, from_fairseq_order, to_fairseq_order, weight_to_blocks
from .registry import is_pq_layer, register_pq_layer
from .selection import get_layers, get_param
from .serialization import load_compressed, save_compressed
from .size_tracker import HeldBytes, SizeTracker, held_bytes

__all__ = [
    "PQ",
    "weight_to_blocks",
    "blocks_to_weight",
    "to_fairseq_order",
    "from_fairseq_order",
    "codes_dtype",
    "PQLayer",
    "PQLinear",
    "PQConv1d",
    "PQConv2d",
    "PQEmbedding",
    "register_pq_layer",
    "is_pq_layer",
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

from .distill import distill, finetune_centroids  # noqa: E402
from .staged import compress_staged, plan_stages  # noqa: E402

__all__ += ["finetune_centroids", "distill", "compress_staged", "plan_stages"]
