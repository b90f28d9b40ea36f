"""``IntLinear``, ``IntConv2d``, ``IntEmbedding``: layers trained with scalar Quant-Noise (fairseq's
``scalar/modules``), fully fake-quantized in eval.

Each forward: the quantization parameters are refreshed every ``update_step`` calls (fairseq's
rule, :class:`~.qparams.QParamsCache`), then a fraction ``p`` of the weight's blocks (``p = 1``
in eval) is fake-quantized by the fused ``fake_quant`` noise kernel; the other entries are
clamped to the grid's range; the gradient is straight-through times the clamp mask. The stored
weight is never modified. Unlike fairseq: CPU and CUDA, the grid of the real ``bits``,
per-channel along the output dimension, noise computed from the clamped weight (fairseq#2968),
and no ``.cuda()`` anywhere.

The layers subclass the PyTorch ones (``isinstance(IntLinear(...), nn.Linear)``) and keep their
``state_dict`` keys, so a checkpoint of the float model loads into them and back.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypedDict

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import ops
from .._blocks import check_block_size
from .._modules import is_noise_wrapped
from ..ops._args import check_keywords
from .functional import fake_quant_noise, fake_quant_noise_linear, kind_kwargs
from .qparams import QParams, QParamsCache, QParamsCacheViews, QuantGrid, check_p

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["IntLinear", "IntConv2d", "IntEmbedding", "IntModule"]


class IntQuantKwargs(TypedDict, total=False):
    """Our keyword-only quantization options of the Int layers (``from_float`` and the constructors), beyond
    fairseq's: ``block_size`` (entries per noise draw; default 1, fairseq's) and ``symmetric`` (signed grid, zero
    point 0; default False). The defaults are ``IntModule._init_quant``'s."""

    block_size: int
    symmetric: bool


class IntLayerKwargs(IntQuantKwargs, total=False):
    """The keyword-only arguments of the Int layers' constructors: :class:`IntQuantKwargs`, and ``device`` and
    ``dtype`` (default None) as PyTorch's layers take them."""

    device: torch.device | str | None
    dtype: torch.dtype | None


class IntFromFloatKwargs(IntQuantKwargs, total=False):
    """The keyword-only arguments of ``from_float`` after ``p``: fairseq's ``bits`` (default 8), ``update_step``
    (default 1000) and ``method`` (default "histogram"), as the constructors take them, and
    :class:`IntQuantKwargs`."""

    bits: int
    update_step: int
    method: str


_QUANT_KEYWORDS = tuple(IntQuantKwargs.__annotations__)
_FROM_FLOAT_KEYWORDS = tuple(IntFromFloatKwargs.__annotations__)
_LAYER_KEYWORDS = tuple(IntLayerKwargs.__annotations__)

_NOISE_ATTRS = ("quant_noise_config", "quant_noise_qparams", "_quant_noise_ran", "_quant_noise_checked")


def _rebind(module: nn.Module, cls: type, drop: tuple[str, ...] = ()) -> nn.Module:
    """A ``cls`` instance holding ``module``'s state and the same Parameter objects (no ``__init__``)."""
    new = cls.__new__(cls)
    new.__dict__.update({k: v for k, v in module.__dict__.items() if k not in drop})
    for attr in ("_parameters", "_buffers", "_modules", "_forward_hooks", "_forward_pre_hooks"):
        setattr(new, attr, type(getattr(module, attr))(getattr(module, attr)))
    new._buffers.pop("quant_noise_centroids", None)  # quant_noise's codebook, if module was wrapped
    return new


class IntModule(QParamsCacheViews):
    """What the three layers share: the noise settings and the cached quantization parameters.

    Attributes (fairseq's names): ``p``, ``bits``, ``method``, ``update_step``, ``counter``,
    ``scale``, ``zero_point``; ours: ``block_size`` (entries per noise draw, 1 = fairseq),
    ``symmetric`` (signed grid, zero point 0).
    """

    _FLOAT_MODULE: type[nn.Module]

    def _init_quant(
        self,
        p: float,
        bits: int = 8,
        method: str = "histogram",
        update_step: int = 1000,
        block_size: int = 1,
        symmetric: bool = False,
    ) -> None:
        self.p = check_p(p)
        check_block_size(block_size, tuple(self.weight.shape), type(self).__name__)
        self.block_size = block_size
        self._qcache = QParamsCache(QuantGrid(bits, method, symmetric), update_step)

    def _init_layer(self, float_args: tuple, p: float, bits: int, method: str, update_step: int, options: dict) -> None:
        """The constructors' body: the PyTorch layer's ``__init__`` on ``float_args`` and the ``device``/``dtype``
        of ``options`` (:class:`IntLayerKwargs`), then the quantization state (the rest of ``options``)."""
        check_keywords(f"{type(self).__name__}.__init__", options, _LAYER_KEYWORDS)
        self._FLOAT_MODULE.__init__(self, *float_args, device=options.get("device"), dtype=options.get("dtype"))
        self._init_quant(p, bits, method, update_step, **{k: v for k, v in options.items() if k in _QUANT_KEYWORDS})

    # fairseq's attribute names (bits, method, update_step, counter: QParamsCacheViews), read-only views of the cache.
    symmetric = property(lambda self: self._qcache.grid.symmetric)
    scale = property(lambda self: None if self._qcache.qparams is None else self._qcache.qparams.scale)
    zero_point = property(lambda self: None if self._qcache.qparams is None else self._qcache.qparams.zero_point)

    @torch.compiler.disable  # the refresh counter is Python state: a graph break, not a recompile per step
    def _qparams(self) -> QParams:
        return self._qcache(self.weight, name=f"{type(self).__name__}.weight")

    def _effective_p(self) -> float:
        return self.p if self.training else 1.0

    def quantized_weight(self) -> Tensor:
        """The weight as this forward uses it (noised in training, fully fake-quantized in eval);
        advances the refresh counter like a forward."""
        return fake_quant_noise(self.weight, self._effective_p(), self._qparams(), block_size=self.block_size)

    @classmethod
    def from_float(cls, module: nn.Module, p: float = 0.0, **options: Unpack[IntFromFloatKwargs]):
        """An Int layer **sharing** ``module``'s parameters (fairseq builds it the same way: no
        ``__init__``, the module's state copied over), so the optimizer keeps working on them. A module
        wrapped by ``quant_noise`` is taken as the layer it wraps (its noise is dropped). The options
        (:class:`IntFromFloatKwargs`: ``bits``, ``update_step``, ``method``, ``block_size``, ``symmetric``)
        are keyword-only."""
        check_keywords(f"{cls.__name__}.from_float", options, _FROM_FLOAT_KEYWORDS)
        base = type(module).__mro__[1] if is_noise_wrapped(module) else type(module)
        if base is not cls._FLOAT_MODULE:
            raise TypeError(f"{cls.__name__}.from_float: expected {cls._FLOAT_MODULE.__name__}, got {base.__name__}")
        new = _rebind(module, cls, drop=_NOISE_ATTRS)
        new._init_quant(p, **options)
        return new

    def to_float(self) -> nn.Module:
        """The plain PyTorch layer, sharing this layer's parameters (no quantization)."""
        new = _rebind(self, self._FLOAT_MODULE, drop=("p", "block_size", "_qcache", "activation_quantizer"))
        act = getattr(self, "activation_quantizer", None)
        if act is not None:  # the output quantizer's hook stays with this layer
            new._forward_hooks.pop(act.handle.id, None)
        return new

    def extra_repr(self) -> str:
        quant = f"p={self.p}, bits={self.bits}, method={self.method}, update_step={self.update_step}"
        if self.block_size != 1 or self.symmetric:
            quant += f", block_size={self.block_size}, symmetric={self.symmetric}"
        return f"{super().extra_repr()}, {quant}"


class IntLinear(IntModule, nn.Linear):
    """``nn.Linear`` with scalar Quant-Noise (fairseq ``IntLinear``: same arguments and defaults).

    Training forward: the fused ``noisy_linear`` (the noised weight is never materialised on the
    CPU). Shapes as ``nn.Linear``; fp32/fp16/bf16/fp64; CPU and CUDA.
    """

    _FLOAT_MODULE = nn.Linear

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        p: float = 0.0,
        update_step: int = 3000,
        bits: int = 8,
        method: str = "histogram",
        **options: Unpack[IntLayerKwargs],
    ) -> None:
        self._init_layer((in_features, out_features, bias), p, bits, method, update_step, options)

    def forward(self, input: Tensor) -> Tensor:
        return fake_quant_noise_linear(
            input, self.weight, self.bias, self._effective_p(), self._qparams(), block_size=self.block_size
        )


class IntConv2d(IntModule, nn.Conv2d):
    """``nn.Conv2d`` with scalar Quant-Noise (fairseq ``IntConv2d``); every ``padding_mode`` works
    (fairseq's non-zero padding read an attribute PyTorch no longer has)."""

    _FLOAT_MODULE = nn.Conv2d

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        p: float = 0.0,
        bits: int = 8,
        method: str = "histogram",
        update_step: int = 1000,
        **options: Unpack[IntLayerKwargs],
    ) -> None:
        float_args = (in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, padding_mode)
        self._init_layer(float_args, p, bits, method, update_step, options)

    def forward(self, input: Tensor) -> Tensor:
        return self._conv_forward(input, self.quantized_weight(), self.bias)


class IntEmbedding(IntModule, nn.Embedding):
    """``nn.Embedding`` with scalar Quant-Noise (fairseq ``IntEmbedding``; padding_idx, max_norm,
    ... as ``nn.Embedding``). Per-channel scales are per row (one per embedding)."""

    _FLOAT_MODULE = nn.Embedding

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        padding_idx: int | None = None,
        max_norm: float | None = None,
        norm_type: float = 2.0,
        scale_grad_by_freq: bool = False,
        sparse: bool = False,
        _weight: Tensor | None = None,
        p: float = 0.0,
        update_step: int = 1000,
        bits: int = 8,
        method: str = "histogram",
        **options: Unpack[IntLayerKwargs],
    ) -> None:
        float_args = (
            num_embeddings, embedding_dim, padding_idx, max_norm, norm_type, scale_grad_by_freq, sparse, _weight,
        )  # fmt: skip
        self._init_layer(float_args, p, bits, method, update_step, options)

    def forward(self, input: Tensor) -> Tensor:
        """A lookup in the table with ``fake_quant`` noise (``ops.block_noise``)."""
        if self.max_norm is not None:  # as nn.Embedding: renormalise the looked-up rows of the weight first
            with torch.no_grad():
                torch.embedding_renorm_(self.weight, input, self.max_norm, self.norm_type)
        weight = ops.block_noise(
            self.weight, self._effective_p(), self.block_size, ops.draw_seed(), **kind_kwargs(self._qparams())
        )
        return F.embedding(input, weight, self.padding_idx, None, 2.0, self.scale_grad_by_freq, self.sparse)
