"""``PQLinear``: ``y = x . decode(codes, centroids)^T + bias`` through ``ops.pq_linear``."""

from __future__ import annotations

from torch import Tensor, nn

from ... import ops
from .base import PQLayer

__all__ = ["PQLinear"]


class PQLinear(PQLayer):
    """A PQ-compressed ``nn.Linear``: ``ops.pq_linear`` never builds the dense weight.

    Args:
        centroids: ``[K, block_size]`` float (kept in its dtype; float16 from :meth:`from_float`).
        codes: ``[out_features, in_features/block_size]`` interchange layout (stored packed).
        bias: ``[out_features]`` or None.
        in_features, out_features: the layer's sizes.
        grad_reduction: ``"sum"`` or ``"mean"`` of block gradients per centroid.

    Attributes ``path``: the ``ops.pq_linear`` path (``"auto"``, ``"lut"``, ``"tile"``); ``act_bits``: 0, or 8 to
    fake-quantize the activations inside the op (iPQ & int8 with int8 activations); both may be changed.
    """

    _FLOAT_MODULE = nn.Linear
    _LAYER_ARGS = ("in_features", "out_features")

    def __init__(
        self,
        centroids: Tensor,
        codes: Tensor,
        bias: Tensor | None,
        in_features: int,
        out_features: int,
        *,
        grad_reduction: str = "sum",
    ) -> None:
        super().__init__()
        self.in_features = self._size_arg("in_features", in_features)
        self.out_features = self._size_arg("out_features", out_features)
        self.path = "auto"
        self._init_codebook(centroids, codes, bias, grad_reduction)

    @property
    def weight_shape(self) -> tuple[int, ...]:
        return (self.out_features, self.in_features)

    def forward(self, x: Tensor) -> Tensor:
        return ops.pq_linear(
            x,
            self.packed_codes,
            self._centroids_for_forward(),
            self.bias,
            codes_transposed=True,
            path=self.path,
            act_bits=self.act_bits,
            **self._codebook_args(),
        )
