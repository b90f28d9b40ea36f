"""PQ-compressed layers (DESIGN §3.3): the base class and one module per layer family.

- :mod:`.base`: :class:`PQLayer`, the codebook, the codes and the conversion from and to the dense layer.
- :mod:`.linear`: :class:`PQLinear`; :mod:`.conv`: :class:`PQConv1d`, :class:`PQConv2d`;
  :mod:`.embedding`: :class:`PQEmbedding`.

Neither inference nor training allocates the dense weight (``ops.pq_linear`` / ``ops.pq_embedding``, and their
backward ``ops.pq_linear_backward`` / ``ops.pq_embedding_backward`` from the codes; the convolutions
run im2col, then ``pq_linear``).
"""

from __future__ import annotations

from .base import PQLayer
from .conv import PQConv1d, PQConv2d
from .embedding import PQEmbedding
from .linear import PQLinear

__all__ = ["PQLayer", "PQLinear", "PQConv1d", "PQConv2d", "PQEmbedding"]
