"""Quantization parameters (scale, zero point) of the int-N grid, from torchao's observers.

fairseq (``scalar/ops.py``) ran torch.ao's observers with their 8-bit defaults whatever ``bits``
said, so int4 got an 8-bit zero point and 6 distinct values (fairseq#3858), took the *last* axis
as "per-channel", and moved the result with ``.cuda()`` (fairseq#3995). Here the observers are
configured for the real grid (``quant_min``/``quant_max`` of ``bits``), per-channel means dim 0
of ``weight.reshape(out, -1)`` (one scale per output channel), and everything stays on the
input's device.

The observers are torchao's (``torchao.quantization.pt2e.observer``: ``MinMaxObserver``,
``PerChannelMinMaxObserver``, ``HistogramObserver``), the maintained successors of
``torch.ao.quantization``'s, which is deprecated in torch 2.13. torchao is imported on first use.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import torch
from torch import Tensor

from .._torchao import import_torchao_quietly

__all__ = ["METHODS", "QuantGrid", "QParams", "observe", "QParamsCache", "QParamsCacheViews"]

METHODS = ("histogram", "tensor", "channel")  # fairseq's names
MIN_BITS, MAX_BITS = 2, 8


@dataclasses.dataclass(frozen=True)
class QuantGrid:
    """The integer grid: ``bits`` in 2..8, affine (unsigned ``[0, 2^bits - 1]``, any zero point) or
    symmetric (signed ``[-2^(bits-1), 2^(bits-1) - 1]``, zero point 0); ``method`` picks the observer:
    ``"tensor"`` (min/max, one scale), ``"histogram"`` (min/max search minimising the L2 error, one
    scale; slow: ~0.2-0.4 s per 4096x4096 weight), ``"channel"`` (min/max per output channel)."""

    bits: int = 8
    method: str = "histogram"
    symmetric: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.bits, bool) or not isinstance(self.bits, int) or not MIN_BITS <= self.bits <= MAX_BITS:
            raise ValueError(f"bits must be an int in [{MIN_BITS}, {MAX_BITS}], got {self.bits!r}")
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")

    @property
    def quant_min(self) -> int:
        return -(2 ** (self.bits - 1)) if self.symmetric else 0

    @property
    def quant_max(self) -> int:
        return 2 ** (self.bits - 1) - 1 if self.symmetric else 2**self.bits - 1

    @property
    def per_channel(self) -> bool:
        return self.method == "channel"


@dataclasses.dataclass
class QParams:
    """``scale`` float32 and ``zero_point`` int32, both ``[1]`` (per tensor) or ``[out]`` (per
    channel), on the observed tensor's device; ``quant_min``/``quant_max`` of the grid."""

    scale: Tensor
    zero_point: Tensor
    quant_min: int
    quant_max: int

    def fake_quantize(self, x: Tensor) -> Tensor:
        """Plain fake quantization ``(clamp(round(x/s) + z, qmin, qmax) - z) * s`` (PyTorch's op)."""
        if self.scale.numel() == 1:
            return torch.fake_quantize_per_tensor_affine(x, self.scale, self.zero_point, self.quant_min, self.quant_max)
        return torch.fake_quantize_per_channel_affine(
            x.reshape(x.shape[0], -1), self.scale, self.zero_point, 0, self.quant_min, self.quant_max
        ).view_as(x)

    def to_int8(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The integer codes of ``x`` as int8 ``[x.shape[0], -1]`` and the int32 zero points to use with them:
        ``(codes - zero_point) * scale == fake_quantize(x)`` bit for bit. An unsigned grid (``[0, 2^bits - 1]``)
        is shifted by 128 into int8's range (codes and zero points alike)."""
        w = x.detach().reshape(x.shape[0], -1).float()
        inv = (1.0 / self.scale).reshape(-1, 1)
        zp = self.zero_point.reshape(-1, 1)
        codes = torch.clamp(torch.round(w * inv) + zp, self.quant_min, self.quant_max)
        shift = 128 if self.quant_max > 127 else 0
        return (codes - shift).to(torch.int8), (self.zero_point - shift).to(torch.int32)


@functools.cache
def _observer_classes():
    observer = import_torchao_quietly("torchao.quantization.pt2e.observer")
    return observer.MinMaxObserver, observer.PerChannelMinMaxObserver, observer.HistogramObserver


def _make_observer(grid: QuantGrid, device: torch.device) -> torch.nn.Module:
    minmax, per_channel, histogram = _observer_classes()
    kwargs = {
        "dtype": torch.int8 if grid.symmetric else torch.uint8,
        "quant_min": grid.quant_min,
        "quant_max": grid.quant_max,
    }
    if grid.per_channel:
        qscheme = torch.per_channel_symmetric if grid.symmetric else torch.per_channel_affine
        return per_channel(ch_axis=0, qscheme=qscheme, **kwargs).to(device)
    qscheme = torch.per_tensor_symmetric if grid.symmetric else torch.per_tensor_affine
    return (histogram if grid.method == "histogram" else minmax)(qscheme=qscheme, **kwargs).to(device)


def observe(x: Tensor, grid: QuantGrid, *, name: str = "x") -> QParams:
    """Quantization parameters of ``x`` on ``grid`` (no gradient; ``x`` is not modified).

    Args:
        x: float tensor; per-channel grids read it as ``x.reshape(x.shape[0], -1)``.
        grid: bits, observer method and symmetry.
        name: the argument's name in error messages.

    Raises:
        ValueError: ``x`` is empty or holds NaN/inf (the observers would return garbage).
    """
    if x.numel() == 0:
        raise ValueError(f"{name} must not be empty to observe quantization parameters")
    x = x.detach()
    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{name} holds {bad} NaN/inf values: cannot compute quantization parameters")
    observer = _make_observer(grid, x.device)
    observer(x.reshape(x.shape[0], -1).float() if grid.per_channel else x.float())
    scale, zero_point = observer.calculate_qparams()
    return QParams(
        scale.to(x.device, torch.float32).reshape(-1),
        zero_point.to(x.device, torch.int32).reshape(-1),
        grid.quant_min,
        grid.quant_max,
    )


class QParamsCache:
    """fairseq's refresh rule: the parameters are observed on the first call and then every
    ``update_step`` calls (the counter advances on every call, training or eval); in between the
    cached ones are reused, so weights that drift outside the cached range are clipped."""

    def __init__(self, grid: QuantGrid, update_step: int) -> None:
        if isinstance(update_step, bool) or not isinstance(update_step, int) or update_step <= 0:
            raise ValueError(f"update_step must be a positive int, got {update_step!r}")
        self.grid = grid
        self.update_step = update_step
        self.counter = 0
        self.qparams: QParams | None = None

    def __call__(self, x: Tensor, *, name: str = "x") -> QParams:
        if self.counter % self.update_step == 0:
            self.qparams = None
        self.counter += 1
        if self.qparams is None or self.qparams.scale.device != x.device:
            self.qparams = observe(x, self.grid, name=name)
        return self.qparams


class QParamsCacheViews:
    """fairseq's attribute names on a holder of a :class:`QParamsCache` ``_qcache`` (the Int layers, the
    activation quantizer): read-only views of the cache."""

    _qcache: QParamsCache

    bits = property(lambda self: self._qcache.grid.bits)
    method = property(lambda self: self._qcache.grid.method)
    update_step = property(lambda self: self._qcache.update_step)
    counter = property(lambda self: self._qcache.counter)


def check_p(p: float, *, name: str = "p") -> float:
    """``p`` as a float in ``[0, 1]``, else ``ValueError`` naming it."""
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not math.isfinite(p) or not 0.0 <= p <= 1.0:
        raise ValueError(f"{name} must be a number in [0, 1], got {p!r}")
    return float(p)
