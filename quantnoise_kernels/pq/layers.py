"""PQ-compressed layers: ``PQLinear``, ``PQConv2d``, ``PQEmbedding`` (DESIGN §3.3).

Each layer holds ``centroids`` (``nn.Parameter [K, block_size]``, float16 by default, computed in
float32), the ``bias`` and the codes as a buffer (uint8 when ``K <= 256``, else int32). Linear and
Conv2d keep the codes in the packed layout ``[n_blocks, out]`` the lookup kernels read
(``ops.pq_pack_codes``; buffer ``packed_codes``); Embedding keeps the interchange layout
``[num_embeddings, n_blocks]`` (buffer ``codes``). :meth:`interchange_codes` always returns
``[out, row/block_size]``, the layout files use, and :meth:`set_codes` takes it back.

Inference of ``PQLinear``/``PQEmbedding`` never allocates the dense weight (``pq_linear`` /
``pq_embedding``). ``PQConv2d`` runs ``F.unfold`` (im2col) then ``pq_linear`` per group, so it
does not build the weight either (the column buffer is activation-sized). Training gradients to
the centroids are the per-centroid sum of block gradients (``grad_reduction="sum"``), or their mean
over the blocks assigned to each centroid (``"mean"``; an empty cluster gets 0, never NaN).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.utils import _pair

from .. import ops

__all__ = ["PQLinear", "PQConv2d", "PQEmbedding"]

_REDUCTIONS = ("sum", "mean")


def _codes_dtype(n_centroids: int) -> torch.dtype:
    return torch.uint8 if n_centroids <= 256 else torch.int32


def _check_codebook(name: str, centroids: Tensor, codes: Tensor, rows: int, row_len: int, grad_reduction: str):
    if grad_reduction not in _REDUCTIONS:
        raise ValueError(f"{name}: grad_reduction must be one of {_REDUCTIONS}, got {grad_reduction!r}")
    if centroids.dim() != 2:
        raise ValueError(f"{name}: centroids must be 2-D [n_centroids, block_size], got shape {tuple(centroids.shape)}")
    block_size = centroids.shape[1]
    if row_len % block_size != 0:
        raise ValueError(f"{name}: block_size={block_size} must divide the row length {row_len}")
    expected = (rows, row_len // block_size)
    if tuple(codes.shape) != expected:
        raise ValueError(f"{name}: codes must have shape {expected} [out, row/block_size], got {tuple(codes.shape)}")
    if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= centroids.shape[0]):
        raise ValueError(
            f"{name}: codes must be in [0, n_centroids={centroids.shape[0]}), "
            f"got values in [{int(codes.min())}, {int(codes.max())}]"
        )


def _grad_scaled(centroids: Tensor, counts: Tensor) -> Tensor:
    """``centroids`` in the forward; in the backward, the gradient divided by each cluster's size.

    ``c0 + (c - c0) * f`` equals ``c`` exactly (``c - c0`` is 0) and has derivative ``f``."""
    factor = (1.0 / counts.clamp(min=1).to(centroids.dtype)).unsqueeze(1)
    detached = centroids.detach()
    return detached + (centroids - detached) * factor


class _PQBase(nn.Module):
    """Shared state: centroids, bias, codes, cluster sizes, the gradient reduction."""

    centroids: nn.Parameter
    counts: Tensor

    def _init_codebook(self, centroids: Tensor, codes: Tensor, bias: Tensor | None, grad_reduction: str, packed: bool):
        self.grad_reduction = grad_reduction
        self._packed = packed
        self.centroids = nn.Parameter(centroids.detach().clone())
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone())
        self.register_buffer("counts", torch.zeros(centroids.shape[0], dtype=torch.int64), persistent=False)
        self.set_codes(codes)

    @property
    def block_size(self) -> int:
        return int(self.centroids.shape[1])

    @property
    def n_centroids(self) -> int:
        return int(self.centroids.shape[0])

    def set_codes(self, codes: Tensor) -> None:
        """Replace the codes, given in the interchange layout ``[out, row/block_size]``."""
        codes = codes.detach().to(_codes_dtype(self.n_centroids))
        name = "packed_codes" if self._packed else "codes"
        stored = ops.pq_pack_codes(codes) if self._packed else codes.contiguous()
        if hasattr(self, name) and name in self._buffers:
            self._buffers[name] = stored.to(self._buffers[name].device)
        else:
            self.register_buffer(name, stored)
        self.counts = torch.bincount(codes.reshape(-1).long(), minlength=self.n_centroids).to(self.counts.device)

    def interchange_codes(self) -> Tensor:
        """The codes as ``[out, row/block_size]`` (uint8 or int32), the layout files exchange."""
        return ops.pq_unpack_codes(self.packed_codes) if self._packed else self.codes.contiguous()

    def _centroids_for_forward(self) -> Tensor:
        c = self.centroids
        if self.grad_reduction == "mean" and c.requires_grad and torch.is_grad_enabled():
            c = _grad_scaled(c, self.counts)
        return c

    def _codebook_repr(self) -> str:
        return (
            f"block_size={self.block_size}, n_centroids={self.n_centroids}, "
            f"centroid_dtype={self.centroids.dtype}, bias={self.bias is not None}, grad_reduction={self.grad_reduction}"
        )

    def _dense_weight(self, shape) -> Tensor:
        dtype = torch.float32 if self.centroids.dtype in (torch.float16, torch.bfloat16) else self.centroids.dtype
        with torch.no_grad():
            return ops.pq_decode(self.interchange_codes(), self.centroids, shape, out_dtype=dtype)


def _encode(weight: Tensor, block_size: int, n_centroids: int, n_iter, eps, max_tentatives, seed):
    from .quantizer import PQ  # the k-means quantizer (pq/quantizer.py)

    pq = PQ(
        weight.detach().float(),
        block_size,
        n_centroids=n_centroids,
        n_iter=n_iter,
        eps=eps,
        max_tentatives=max_tentatives,
        seed=seed,
    )
    codes, centroids = pq.encode()
    return codes, centroids


class PQLinear(_PQBase):
    """``y = x . decode(codes, centroids)^T + bias`` through ``ops.pq_linear`` (never the dense weight).

    Args:
        centroids: ``[K, block_size]`` float (kept in its dtype; float16 from :meth:`from_float`).
        codes: ``[out_features, in_features/block_size]`` interchange layout (stored packed).
        bias: ``[out_features]`` or None.
        in_features, out_features: the layer's sizes.
        grad_reduction: ``"sum"`` or ``"mean"`` of block gradients per centroid.
        path: ``ops.pq_linear`` path (``"auto"``, ``"lut"``, ``"tile"``); an attribute, may be changed.
    """

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
        _check_codebook("PQLinear", centroids, codes, out_features, in_features, grad_reduction)
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.path = "auto"
        self._init_codebook(centroids, codes, bias, grad_reduction, packed=True)

    def forward(self, x: Tensor) -> Tensor:
        return ops.pq_linear(
            x, self.packed_codes, self._centroids_for_forward(), self.bias, codes_transposed=True, path=self.path
        )

    @classmethod
    def from_float(
        cls,
        module: nn.Linear,
        block_size: int,
        n_centroids: int = 256,
        *,
        n_iter: int = 20,
        eps: float = 1e-6,
        max_tentatives: int = 30,
        seed: int | None = None,
        centroid_dtype: torch.dtype = torch.float16,
    ) -> PQLinear:
        """Quantize ``module.weight`` with iPQ (k-means over its blocks) into a ``PQLinear``."""
        codes, centroids = _encode(module.weight, block_size, n_centroids, n_iter, eps, max_tentatives, seed)
        bias = None if module.bias is None else module.bias.detach()
        return cls(centroids.to(centroid_dtype), codes, bias, module.in_features, module.out_features)

    def to_dense(self) -> nn.Linear:
        """An ``nn.Linear`` holding the decoded weight (float32 for half centroids)."""
        w = self._dense_weight((self.out_features, self.in_features))
        layer = nn.Linear(
            self.in_features, self.out_features, bias=self.bias is not None, device=w.device, dtype=w.dtype
        )
        with torch.no_grad():
            layer.weight.copy_(w)
            if self.bias is not None:
                layer.bias.copy_(self.bias)
        return layer

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, {self._codebook_repr()}"


class PQConv2d(_PQBase):
    """A PQ-compressed ``nn.Conv2d``: ``F.unfold`` (im2col) then ``ops.pq_linear`` per group.

    ``codes`` is ``[out_channels, (in_channels/groups * kh * kw)/block_size]``: a block is
    ``block_size`` consecutive entries of ``weight.reshape(out, -1)`` (channel, then kh, then kw),
    exactly the order of ``F.unfold``'s columns. Non-zero padding modes pad with ``F.pad`` first.
    """

    def __init__(
        self,
        centroids: Tensor,
        codes: Tensor,
        bias: Tensor | None,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        groups: int = 1,
        padding_mode: str = "zeros",
        *,
        grad_reduction: str = "sum",
    ) -> None:
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"PQConv2d: groups={groups} must divide in_channels={in_channels} and out_channels={out_channels}"
            )
        if padding_mode not in ("zeros", "reflect", "replicate", "circular"):
            raise ValueError(f"PQConv2d: padding_mode must be zeros/reflect/replicate/circular, got {padding_mode!r}")
        self.in_channels, self.out_channels, self.groups = int(in_channels), int(out_channels), int(groups)
        self.kernel_size, self.stride, self.dilation = _pair(kernel_size), _pair(stride), _pair(dilation)
        if isinstance(padding, str):
            raise ValueError(f"PQConv2d: padding must be an int or a pair, got {padding!r}")
        self.padding, self.padding_mode = _pair(padding), padding_mode
        row = in_channels // groups * self.kernel_size[0] * self.kernel_size[1]
        _check_codebook("PQConv2d", centroids, codes, out_channels, row, grad_reduction)
        self.path = "auto"
        self._init_codebook(centroids, codes, bias, grad_reduction, packed=True)

    def forward(self, x: Tensor) -> Tensor:
        unbatched = x.dim() == 3
        if unbatched:
            x = x.unsqueeze(0)
        padding = self.padding
        if self.padding_mode != "zeros":
            ph, pw = self.padding
            x = F.pad(x, (pw, pw, ph, ph), mode=self.padding_mode)
            padding = (0, 0)
        n, _, h, w = x.shape
        kh, kw = self.kernel_size
        h_out = (h + 2 * padding[0] - self.dilation[0] * (kh - 1) - 1) // self.stride[0] + 1
        w_out = (w + 2 * padding[1] - self.dilation[1] * (kw - 1) - 1) // self.stride[1] + 1
        cols = F.unfold(x, self.kernel_size, dilation=self.dilation, padding=padding, stride=self.stride)
        cols = cols.transpose(1, 2)  # [N, L, C*kh*kw]
        c = self._centroids_for_forward()
        g = self.groups
        if g == 1:
            y = ops.pq_linear(cols, self.packed_codes, c, self.bias, codes_transposed=True, path=self.path)
        else:
            row, og = cols.shape[-1] // g, self.out_channels // g
            ys = []
            for i in range(g):
                bias = None if self.bias is None else self.bias[i * og : (i + 1) * og]
                codes = self.packed_codes[:, i * og : (i + 1) * og]
                ys.append(
                    ops.pq_linear(
                        cols[..., i * row : (i + 1) * row], codes, c, bias, codes_transposed=True, path=self.path
                    )
                )
            y = torch.cat(ys, dim=-1)
        y = y.transpose(1, 2).reshape(n, self.out_channels, h_out, w_out)
        return y.squeeze(0) if unbatched else y

    @classmethod
    def from_float(
        cls,
        module: nn.Conv2d,
        block_size: int,
        n_centroids: int = 256,
        *,
        n_iter: int = 20,
        eps: float = 1e-6,
        max_tentatives: int = 30,
        seed: int | None = None,
        centroid_dtype: torch.dtype = torch.float16,
    ) -> PQConv2d:
        """Quantize ``module.weight`` (blocks of ``weight.reshape(out, -1)``) into a ``PQConv2d``."""
        if isinstance(module.padding, str):
            raise ValueError(f"PQConv2d.from_float: string padding {module.padding!r} is not supported")
        codes, centroids = _encode(module.weight, block_size, n_centroids, n_iter, eps, max_tentatives, seed)
        bias = None if module.bias is None else module.bias.detach()
        return cls(
            centroids.to(centroid_dtype),
            codes,
            bias,
            module.in_channels,
            module.out_channels,
            module.kernel_size,
            module.stride,
            module.padding,
            module.dilation,
            module.groups,
            module.padding_mode,
        )

    def to_dense(self) -> nn.Conv2d:
        """An ``nn.Conv2d`` holding the decoded weight."""
        shape = (self.out_channels, self.in_channels // self.groups, *self.kernel_size)
        w = self._dense_weight(shape)
        conv = nn.Conv2d(
            self.in_channels,
            self.out_channels,
            self.kernel_size,
            self.stride,
            self.padding,
            self.dilation,
            self.groups,
            self.bias is not None,
            self.padding_mode,
            device=w.device,
            dtype=w.dtype,
        )
        with torch.no_grad():
            conv.weight.copy_(w)
            if self.bias is not None:
                conv.bias.copy_(self.bias)
        return conv

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}, "
            f"padding_mode={self.padding_mode}, {self._codebook_repr()}"
        )


class PQEmbedding(_PQBase):
    """A PQ-compressed ``nn.Embedding``: ``ops.pq_embedding`` decodes only the rows looked up.

    ``padding_idx`` rows get no gradient; ``max_norm`` renormalises the looked-up rows of the output
    (the codebook is not modified, unlike ``F.embedding``'s in-place renorm); ``scale_grad_by_freq``
    divides each row's gradient by its count in the mini-batch. ``sparse`` is kept for ``to_dense``:
    the gradient goes to the small codebook and is dense. Output dtype: float32 (float64 for float64
    centroids).
    """

    def __init__(
        self,
        centroids: Tensor,
        codes: Tensor,
        num_embeddings: int,
        embedding_dim: int,
        padding_idx: int | None = None,
        max_norm: float | None = None,
        norm_type: float = 2.0,
        scale_grad_by_freq: bool = False,
        sparse: bool = False,
        *,
        grad_reduction: str = "sum",
    ) -> None:
        super().__init__()
        _check_codebook("PQEmbedding", centroids, codes, num_embeddings, embedding_dim, grad_reduction)
        if padding_idx is not None:
            if not -num_embeddings <= padding_idx < num_embeddings:
                raise ValueError(f"PQEmbedding: padding_idx must be within num_embeddings, got {padding_idx}")
            padding_idx = padding_idx % num_embeddings
        self.num_embeddings, self.embedding_dim = int(num_embeddings), int(embedding_dim)
        self.padding_idx, self.max_norm, self.norm_type = padding_idx, max_norm, norm_type
        self.scale_grad_by_freq, self.sparse = scale_grad_by_freq, sparse
        self._init_codebook(centroids, codes, None, grad_reduction, packed=False)

    def forward(self, indices: Tensor) -> Tensor:
        c = self._centroids_for_forward()
        out_dtype = torch.float64 if c.dtype == torch.float64 else torch.float32
        out = ops.pq_embedding(indices, self.codes, c, out_dtype=out_dtype)
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

    @classmethod
    def from_float(
        cls,
        module: nn.Embedding,
        block_size: int,
        n_centroids: int = 256,
        *,
        n_iter: int = 20,
        eps: float = 1e-6,
        max_tentatives: int = 30,
        seed: int | None = None,
        centroid_dtype: torch.dtype = torch.float16,
    ) -> PQEmbedding:
        """Quantize ``module.weight`` into a ``PQEmbedding`` (keeps padding_idx, max_norm, ...)."""
        codes, centroids = _encode(module.weight, block_size, n_centroids, n_iter, eps, max_tentatives, seed)
        return cls(
            centroids.to(centroid_dtype),
            codes,
            module.num_embeddings,
            module.embedding_dim,
            module.padding_idx,
            module.max_norm,
            module.norm_type,
            module.scale_grad_by_freq,
            module.sparse,
        )

    def to_dense(self) -> nn.Embedding:
        """An ``nn.Embedding`` holding the decoded table."""
        w = self._dense_weight((self.num_embeddings, self.embedding_dim))
        return nn.Embedding(
            self.num_embeddings,
            self.embedding_dim,
            self.padding_idx,
            self.max_norm,
            self.norm_type,
            self.scale_grad_by_freq,
            self.sparse,
            _weight=w.clone(),
            _freeze=False,
        )

    def extra_repr(self) -> str:
        extra = f"{self.num_embeddings}, {self.embedding_dim}, {self._codebook_repr()}"
        if self.padding_idx is not None:
            extra += f", padding_idx={self.padding_idx}"
        if self.max_norm is not None:
            extra += f", max_norm={self.max_norm}, norm_type={self.norm_type}"
        if self.scale_grad_by_freq:
            extra += ", scale_grad_by_freq=True"
        if self.sparse:
            extra += ", sparse=True"
        return extra
