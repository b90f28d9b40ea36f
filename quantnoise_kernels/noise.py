"""Quant-Noise for modules: ``quant_noise(module, p, block_size)`` with fairseq's signature.

Unlike fairseq's forward-pre-hook, which overwrote ``weight.data`` on every training forward,
the noise here is applied to the weight *as used* in the forward, through the fused
``block_noise`` op; the stored parameter is never written, ``state_dict`` keys do not change,
eval mode is untouched and :func:`remove_quant_noise` undoes the wrapping.

The module's class is swapped for a dynamic subclass whose ``forward`` noises the weight (as
``torch.nn.utils.parametrize`` does), so the module stays an ``nn.Linear`` etc. for every
``isinstance`` check, for ``torch.compile`` and for ``DistributedDataParallel``.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
import weakref

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import ops
from ._blocks import check_block_size
from ._modules import QUANT_NOISE_BASE, behaves_as, is_noise_wrapped, refusal, unwrapped_class

__all__ = ["QuantNoiseConfig", "quant_noise", "remove_quant_noise", "quant_noise_weight", "noised_weight"]

_SUPPORTED = (nn.Linear, nn.Embedding, nn.Conv1d, nn.Conv2d)


@dataclasses.dataclass(frozen=True)
class QuantNoiseConfig:
    """How a wrapped module noises its weight (stored as ``module.quant_noise_config``)."""

    p: float
    block_size: int
    rescale: bool = True
    straight_through: bool = True


def _check_config(where: str, weight: Tensor, p: float, block_size: int, rescale: bool) -> None:
    if not (isinstance(p, (int, float)) and math.isfinite(p) and 0.0 <= p <= 1.0 and not (rescale and p >= 1.0)):
        raise ValueError(f"{where}: p must be in [0, 1), got {p!r}")
    if weight.dim() < 2:
        raise ValueError(f"{where}: weight must have at least 2 dimensions [out, ...], got shape {tuple(weight.shape)}")
    check_block_size(block_size, tuple(weight.shape), where)


def quant_noise_weight(
    weight: Tensor,
    p: float,
    block_size: int,
    *,
    training: bool = True,
    rescale: bool = True,
    straight_through: bool = True,
    generator: torch.Generator | None = None,
) -> Tensor:
    """The functional form: ``weight`` with Quant-Noise, for weights used outside a module's forward.

    For code that passes a weight straight to a functional op (e.g. ``q_proj.weight`` into
    ``F.multi_head_attention_forward``). Returns ``weight`` itself when not training or ``p == 0``.
    The seed comes from ``generator`` (default: torch's global RNG).
    """
    _check_config("quant_noise_weight", weight, p, block_size, rescale)
    if not training or p == 0:
        return weight
    seed = ops.draw_seed(generator)
    return ops.block_noise(weight, p, block_size, seed, rescale=rescale, straight_through=straight_through)


def noised_weight(module: nn.Module) -> Tensor:
    """The weight of a :func:`quant_noise`-wrapped module as its forward would use it.

    For a parent that reads the weight of a wrapped child directly: the noise is then applied there, and the
    child's gradient check (see :func:`quant_noise`) counts it as applied.

    Raises:
        ValueError: ``module`` is not wrapped by :func:`quant_noise`.
    """
    if not is_noise_wrapped(module):
        raise ValueError(f"noised_weight: module {type(module).__name__} is not wrapped by quant_noise")
    config: QuantNoiseConfig = module.quant_noise_config
    if module.training:
        module._quant_noise_ran = True
    return quant_noise_weight(
        module.weight,
        config.p,
        config.block_size,
        training=module.training,
        rescale=config.rescale,
        straight_through=config.straight_through,
    )


def _noisy_forward(self, input: Tensor) -> Tensor:
    config: QuantNoiseConfig = self.quant_noise_config
    base = type(self).__dict__[QUANT_NOISE_BASE]  # the class the module had before wrapping
    if not self.training or config.p == 0:
        return base.forward(self, input)
    self._quant_noise_ran = True  # read by the gradient check of _watch_weight
    noise = {"p": config.p, "block_size": config.block_size, "seed": ops.draw_seed(), "rescale": config.rescale}
    noise["straight_through"] = config.straight_through
    if isinstance(self, nn.Linear):  # fused: the noised weight is never materialised
        return ops.noisy_linear(input, self.weight, self.bias, **noise)
    weight = ops.block_noise(self.weight, **noise)
    if isinstance(self, (nn.Conv1d, nn.Conv2d)):
        return self._conv_forward(input, weight, self.bias)
    return F.embedding(
        input, weight, self.padding_idx, self.max_norm, self.norm_type, self.scale_grad_by_freq, self.sparse
    )


def _rebuild_noisy(base: type) -> nn.Module:
    """Unpickling: an empty module of the wrapper class of ``base`` (pickle then restores its ``__dict__``)."""
    module = base.__new__(base)
    module.__class__ = _noisy_class(base)
    return module


def _reduce_ex(self, protocol):
    # The wrapper class is made at run time and cannot be found by name: pickle the class it wraps instead.
    return (_rebuild_noisy, (type(self).__dict__[QUANT_NOISE_BASE],), self.__dict__)


_NOISY_CLASSES: dict[type, type] = {}


def _noisy_class(cls: type) -> type:
    """The wrapper class of ``cls`` (one per class, made once): ``cls`` with the noisy forward."""
    if cls not in _NOISY_CLASSES:
        attrs = {"forward": _noisy_forward, "__reduce_ex__": _reduce_ex, QUANT_NOISE_BASE: cls, "__module__": __name__}
        _NOISY_CLASSES[cls] = type(f"QuantNoise{cls.__name__}", (cls,), attrs)
    return _NOISY_CLASSES[cls]


# A wrapped module whose forward never runs is never noised: its parent reads the weight directly (as
# nn.MultiheadAttention reads out_proj.weight). Wrapping cannot see the parent, so the first gradient that reaches
# the weight in training checks that the forward ran, and warns once if it did not.
_UNNOISED_WARNING = (
    "quant_noise: the weight of a wrapped {cls} received a gradient in training, but the module's forward never "
    "ran, so no Quant-Noise was applied: its parent reads the weight directly (e.g. nn.MultiheadAttention passes "
    "out_proj.weight to F.multi_head_attention_forward). Call the module itself in the parent's forward, or noise "
    "the weight where it is read with quant_noise_weight(weight, p, block_size, training=...)."
)


def _watch_weight(module: nn.Module) -> None:
    weight = module.weight
    if not (isinstance(weight, Tensor) and weight.requires_grad and weight.is_leaf):
        return
    ref = weakref.ref(module)

    def check(_param: Tensor) -> None:
        m = ref()
        if m is None or not m.training or not is_noise_wrapped(m) or m.__dict__.get("_quant_noise_checked"):
            return
        m._quant_noise_checked = True
        if not m.__dict__.get("_quant_noise_ran"):
            warnings.warn(_UNNOISED_WARNING.format(cls=type(m).__dict__[QUANT_NOISE_BASE].__name__), stacklevel=2)

    weight.register_post_accumulate_grad_hook(check)


def quant_noise(
    module: nn.Module, p: float, block_size: int, *, rescale: bool = True, straight_through: bool = True
) -> nn.Module:
    """Wrap ``module`` so that its training forwards use a block-noised weight (fairseq's signature).

    Args:
        module: ``nn.Linear``, ``nn.Embedding``, ``nn.Conv1d`` or ``nn.Conv2d`` (any kernel size), or a subclass
            of one that keeps its forward (overrides neither ``forward`` nor ``_conv_forward``); changed in place
            (its class) and returned.
        p: fraction of blocks dropped in each training forward, in ``[0, 1)``; ``p == 0`` returns
            ``module`` untouched, as fairseq does.
        block_size: block length along a row of ``weight.reshape(out, -1)``; must divide it
            (for a k x k conv, ``block_size = k*k`` makes one block one spatial kernel, as iPQ).
        rescale: scale kept blocks by ``1/(1-p)`` (fairseq's behaviour).
        straight_through: gradient reaches every weight entry (the paper's estimator); ``False``
            gives the dropout-style gradient (zero on dropped blocks).

    Returns:
        ``module``. Its stored weights are never modified; eval mode is unaffected. It pickles
        (``torch.save(model)``, ``copy.deepcopy``) like the module it wraps.

    Raises:
        TypeError: ``module`` is not a supported layer, or a subclass with its own forward (the noise would
            replace that forward in training).
        ValueError: ``module`` is wrapped already, ``p`` is outside ``[0, 1)``, or ``block_size`` does not
            divide the weight's row.

    Warns:
        UserWarning: at the first training backward that reaches the weight, if the module's forward never ran
            (its parent reads the weight directly, as ``nn.MultiheadAttention`` does with ``out_proj``): no noise
            was applied.
    """
    if is_noise_wrapped(module):
        raise ValueError(
            f"quant_noise: module {type(module).__name__} is already wrapped; call remove_quant_noise first"
        )
    if not isinstance(module, _SUPPORTED):
        names = ", ".join(c.__name__ for c in _SUPPORTED)
        raise TypeError(f"quant_noise: module must be one of {names}, got {type(module).__name__}")
    if behaves_as(module, _SUPPORTED) is None:
        raise TypeError(f"quant_noise: module is {refusal(module, _SUPPORTED)}")
    _check_config("quant_noise", module.weight, p, block_size, rescale)
    if p == 0:
        return module
    module.quant_noise_config = QuantNoiseConfig(float(p), block_size, rescale, straight_through)
    module.__class__ = _noisy_class(type(module))
    _watch_weight(module)
    return module


def remove_quant_noise(module: nn.Module) -> nn.Module:
    """Undo :func:`quant_noise`: restore the module's original class. Returns ``module``.

    Raises:
        ValueError: ``module`` is not wrapped by :func:`quant_noise`.
    """
    if not is_noise_wrapped(module):
        raise ValueError(f"remove_quant_noise: module {type(module).__name__} is not wrapped by quant_noise")
    module.__class__ = unwrapped_class(module)
    for attr in ("quant_noise_config", "_quant_noise_ran", "_quant_noise_checked"):
        module.__dict__.pop(attr, None)
    return module
