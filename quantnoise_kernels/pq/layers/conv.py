"""``PQConv1d``, ``PQConv2d``: im2col (``F.unfold``) then ``ops.pq_linear`` per group, or decoded weight tiles.

``codes`` is ``[out_channels, (in_channels/groups * prod(kernel_size))/block_size]``: a block is ``block_size``
consecutive entries of ``weight.reshape(out, -1)`` (channel, then the kernel positions in order), exactly the
order of ``F.unfold``'s columns. A 1-d convolution runs as a 2-d one of height 1. Non-zero padding modes pad
with ``F.pad`` first. The dense weight is never built (the column buffer is activation-sized).

Where the codes save no work (``K * block_size`` not small against ``out * block_size``, e.g. 3x3 kernels with
few output channels) and there are 64+ output positions, groups 1, float32/float64 inputs, no activation
fake-quant and ``path == "auto"``, the convolution runs by decoded weight tiles instead
(:mod:`._conv_tiles`: at most 4 MiB of the weight at a time, oneDNN's convolution forward and backward).
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.utils import _ntuple

from ... import ops
from ...ops._pq_weight_tiles import weight_tiles_pay
from ._conv_tiles import conv_by_weight_tiles
from .base import PQLayer

__all__ = ["PQConv1d", "PQConv2d"]

_PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


class _PQConvNd(PQLayer):
    """The convolutions with ``_N`` spatial dimensions (1 or 2: what ``F.unfold`` can lift to 2-d)."""

    _N: ClassVar[int]
    _LAYER_ARGS = (
        "in_channels",
        "out_channels",
        "kernel_size",
        "stride",
        "padding",
        "dilation",
        "groups",
        "padding_mode",
    )

    def __init__(
        self, centroids: Tensor, codes: Tensor, bias: Tensor | None, in_channels: int, out_channels: int,
        kernel_size, stride=1, padding=0, dilation=1, groups: int = 1, padding_mode: str = "zeros", *,
        grad_reduction: str = "sum",
    ) -> None:  # fmt: skip
        super().__init__()
        name, ntuple = type(self).__name__, _ntuple(self._N)
        in_channels = self._size_arg("in_channels", in_channels)
        out_channels = self._size_arg("out_channels", out_channels)
        if not isinstance(groups, int) or groups < 1 or in_channels % groups or out_channels % groups:
            raise ValueError(
                f"{name}: groups={groups} must be positive and divide in_channels={in_channels} and "
                f"out_channels={out_channels}"
            )
        if padding_mode not in _PADDING_MODES:
            raise ValueError(f"{name}: padding_mode must be zeros/reflect/replicate/circular, got {padding_mode!r}")
        if isinstance(padding, str):
            raise ValueError(f"{name}: padding must be an int or a tuple of {self._N} ints, got {padding!r}")
        self.in_channels, self.out_channels, self.groups = int(in_channels), int(out_channels), int(groups)
        self.kernel_size, self.stride, self.dilation = ntuple(kernel_size), ntuple(stride), ntuple(dilation)
        self.padding, self.padding_mode = ntuple(padding), padding_mode
        for arg, low in (("kernel_size", 1), ("stride", 1), ("dilation", 1), ("padding", 0)):
            value = getattr(self, arg)
            if len(value) != self._N or any(isinstance(v, bool) or not isinstance(v, int) or v < low for v in value):
                raise ValueError(f"{name}: {arg} must be {self._N} ints >= {low}, got {value}")
        self.path = "auto"
        self._init_codebook(centroids, codes, bias, grad_reduction)

    @property
    def weight_shape(self) -> tuple[int, ...]:
        return (self.out_channels, self.in_channels // self.groups, *self.kernel_size)

    @classmethod
    def _check_float_module(cls, module: nn.Module) -> None:
        super()._check_float_module(module)
        if isinstance(module.padding, str):
            raise ValueError(f"{cls.__name__}.from_float: string padding {module.padding!r} is not supported")

    def _padded(self, x: Tensor) -> tuple[Tensor, tuple[int, ...], list[int]]:
        """``x`` padded by ``F.pad`` for the non-zero padding modes, the zero padding left, the output's sizes."""
        padding = self.padding
        if self.padding_mode != "zeros":
            x = F.pad(x, [p for p in reversed(self.padding) for _ in range(2)], mode=self.padding_mode)
            padding = (0,) * self._N
        sizes = [
            (s + 2 * p - d * (k - 1) - 1) // st + 1
            for s, p, d, k, st in zip(x.shape[2:], padding, self.dilation, self.kernel_size, self.stride)
        ]
        if any(size < 1 for size in sizes):
            dilated = tuple(d * (k - 1) + 1 for d, k in zip(self.dilation, self.kernel_size))
            raise ValueError(
                f"{type(self).__name__}: input of spatial size {tuple(x.shape[2:])} (padded by {tuple(padding)}) "
                f"is smaller than the dilated kernel {dilated}"
            )
        return x, padding, sizes

    def _by_weight_tiles(self, x: Tensor, sizes: list[int]) -> bool:
        """Whether this call runs by decoded weight tiles (module docstring)."""
        rows = x.shape[0] * math.prod(sizes)
        simple = self.groups == 1 and self.act_bits == 0 and self.path == "auto"
        return (
            simple
            and x.dtype in (torch.float32, torch.float64)
            and weight_tiles_pay(rows, self.out_channels, self.packed_codes.shape[0], self.n_centroids, self.block_size)
        )

    def _columns(self, x: Tensor, padding: tuple[int, ...]) -> Tensor:
        """im2col of a padded batched input: ``[N, L, C/g*prod(k)]`` columns."""
        ones, zeros = (1,) * (2 - self._N), (0,) * (2 - self._N)  # lift to the 2-d F.unfold takes
        x = x.reshape(*x.shape[:2], *ones, *x.shape[2:])
        kernel, dilation, stride = ones + self.kernel_size, ones + self.dilation, ones + self.stride
        cols = F.unfold(x, kernel, dilation=dilation, padding=zeros + padding, stride=stride)
        return cols.transpose(1, 2)

    def forward(self, x: Tensor) -> Tensor:
        name = type(self).__name__
        if x.dim() not in (self._N + 1, self._N + 2):
            raise ValueError(
                f"{name}: input must be [C, *spatial] or [N, C, *spatial] with {self._N} spatial "
                f"dimension(s), got shape {tuple(x.shape)}"
            )
        if x.shape[-self._N - 1] != self.in_channels:
            channels = x.shape[-self._N - 1]
            raise ValueError(f"{name}: input must have in_channels={self.in_channels} channels, got {channels}")
        unbatched = x.dim() == self._N + 1
        if unbatched:
            x = x.unsqueeze(0)
        x, padding, sizes = self._padded(x)
        c, g = self._centroids_for_forward(), self.groups
        if self._by_weight_tiles(x, sizes):
            y = conv_by_weight_tiles(x, self.interchange_codes(), c, self.bias, self.weight_shape, self.stride,
                                     padding, self.dilation, self._codebook_args())  # fmt: skip
            return y.squeeze(0) if unbatched else y
        cols = self._columns(x, padding)
        kw = dict(path=self.path, act_bits=self.act_bits, **self._codebook_args())
        if g == 1:
            y = ops.pq_linear(cols, self.packed_codes, c, self.bias, codes_transposed=True, **kw)
        else:
            row, og = cols.shape[-1] // g, self.out_channels // g
            ys = []
            for i in range(g):
                bias = None if self.bias is None else self.bias[i * og : (i + 1) * og]
                codes = self.packed_codes[:, i * og : (i + 1) * og]
                group_cols = cols[..., i * row : (i + 1) * row]
                ys.append(ops.pq_linear(group_cols, codes, c, bias, codes_transposed=True, **kw))
            y = torch.cat(ys, dim=-1)
        y = y.transpose(1, 2).reshape(x.shape[0], self.out_channels, *sizes)
        return y.squeeze(0) if unbatched else y


class PQConv1d(_PQConvNd):
    """A PQ-compressed ``nn.Conv1d`` (fairseq's convolutional models): arguments as ``nn.Conv1d``, after
    ``centroids [K, block_size]``, interchange ``codes [out, (in/groups*k)/block_size]`` and ``bias``."""

    _FLOAT_MODULE = nn.Conv1d
    _N = 1


class PQConv2d(_PQConvNd):
    """A PQ-compressed ``nn.Conv2d``: arguments as ``nn.Conv2d``, after ``centroids [K, block_size]``,
    interchange ``codes [out, (in/groups*kh*kw)/block_size]`` and ``bias``."""

    _FLOAT_MODULE = nn.Conv2d
    _N = 2
