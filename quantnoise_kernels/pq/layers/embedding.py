"""``PQEmbedding``: ``ops.pq_embedding`` decodes only the rows looked up."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ... import ops
from .base import PQLayer

__all__ = ["PQEmbedding"]


class PQEmbedding(PQLayer):
    """A PQ-compressed ``nn.Embedding``; the codes stay in the interchange layout ``[num_embeddings, n_blocks]``.

    ``padding_idx`` rows get no gradient; ``max_norm`` renormalises the looked-up rows of the output
    (the codebook is not modified, unlike ``F.embedding``'s in-place renorm); ``scale_grad_by_freq``
    divides each row's gradient by its count in the mini-batch. ``sparse`` is kept for ``to_dense``:
    the gradient goes to the small codebook and is dense. Output dtype: float32 (float64 for float64
    centroids).
    """

    _FLOAT_MODULE = nn.Embedding
    _LAYER_ARGS = (
        "num_embeddings",
        "embedding_dim",
        "padding_idx",
        "max_norm",
        "norm_type",
        "scale_grad_by_freq",
        "sparse",
    )
    _HAS_BIAS = False
    _PACKED_CODES = False

    def __init__(
        self, centroids: Tensor, codes: Tensor, num_embeddings: int, embedding_dim: int,
        padding_idx: int | None = None, max_norm: float | None = None, norm_type: float = 2.0,
        scale_grad_by_freq: bool = False, sparse: bool = False, *, grad_reduction: str = "sum",
    ) -> None:  # fmt: skip
        super().__init__()
        num_embeddings = self._size_arg("num_embeddings", num_embeddings)
        embedding_dim = self._size_arg("embedding_dim", embedding_dim)
        if padding_idx is not None:
            if not -num_embeddings <= padding_idx < num_embeddings:
                raise ValueError(f"PQEmbedding: padding_idx must be within num_embeddings, got {padding_idx}")
            padding_idx = padding_idx % num_embeddings
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.padding_idx, self.max_norm, self.norm_type = padding_idx, max_norm, norm_type
        self.scale_grad_by_freq, self.sparse = scale_grad_by_freq, sparse
        self._init_codebook(centroids, codes, None, grad_reduction)

    @property
    def weight_shape(self) -> tuple[int, ...]:
        return (self.num_embeddings, self.embedding_dim)

    def forward(self, indices: Tensor) -> Tensor:
        c = self._centroids_for_forward()
        out_dtype = torch.float64 if c.dtype == torch.float64 else torch.float32
        out = ops.pq_embedding(indices, self.codes, c, out_dtype=out_dtype, **self._codebook_args())
        if self.max_norm is not None:
            norms = out.detach().norm(p=self.norm_type, dim=-1, keepdim=True)
            out = out * torch.where(norms > self.max_norm, self.max_norm / (norms + 1e-7), torch.ones_like(norms))
        if out.requires_grad:
            detached = out.detach()
            if self.scale_grad_by_freq:
                counts = torch.bincount(indices.reshape(-1), minlength=self.num_embeddings)
                factor = (1.0 / counts[indices].to(out.dtype)).unsqueeze(-1)
                out = detached + (out - detached) * factor
            if self.padding_idx is not None:
                out = torch.where((indices == self.padding_idx).unsqueeze(-1), detached, out)
        return out
