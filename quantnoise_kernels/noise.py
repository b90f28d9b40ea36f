"""Quant-Noise for modules: ``quant_noise(module, p, block_size)`` with fairseq's signature.

Unlike fairseq's forward-pre-hook, which overwrote ``weight.data`` on every training forward,
the noise here is applied to the weight *as used* in the forward, through the fused ops
(``noisy_linear``, ``block_noise``); the stored
parameter is never written, ``state_dict`` keys do not change, eval mode is untouched and
:func:`remove_quant_noise` undoes the wrapping. The kind is chosen with ``noise=``: ``"drop"``
(fairseq's proxy), ``"fake_quant"`` (scalar int-N noise, the grid observed every ``update_step``
training forwards) or ``"centroid"`` (a noised block becomes its nearest centroid of a codebook).

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


NOISE_KINDS = ("drop", "fake_quant", "centroid")


@dataclasses.dataclass(frozen=True)
class QuantNoiseConfig:
    """How a wrapped module noises its weight (stored as ``module.quant_noise_config``).

    ``noise`` picks the kind; ``bits``, ``method``, ``symmetric`` and ``update_step`` configure
    ``"fake_quant"`` (see :class:`quantnoise_kernels.scalar.QuantGrid`); ``rescale`` applies to
    ``"drop"``. The codebook of ``"centroid"`` is the module's ``quant_noise_centroids`` buffer.
    """

    p: float
    block_size: int
    rescale: bool = True
    straight_through: bool = True
    noise: str = "drop"
    bits: int = 8
    method: str = "histogram"
    symmetric: bool = False
    update_step: int = 1000


def _check_config(where: str, weight: Tensor, config: QuantNoiseConfig, centroids: Tensor | None = None) -> None:
    p, noise = config.p, config.noise
    if noise not in NOISE_KINDS:
        raise ValueError(f"{where}: noise must be one of {NOISE_KINDS}, got {noise!r}")
    drop_rescaled = noise == "drop" and config.rescale
    if not (isinstance(p, (int, float)) and math.isfinite(p) and 0.0 <= p <= 1.0 and not (drop_rescaled and p >= 1.0)):
        raise ValueError(f"{where}: p must be in [0, 1{')' if drop_rescaled else ']'}, got {p!r}")
    if weight.dim() < 2:
        raise ValueError(f"{where}: weight must have at least 2 dimensions [out, ...], got shape {tuple(weight.shape)}")
    check_block_size(config.block_size, tuple(weight.shape), where)
    if noise == "fake_quant":
        from .scalar.qparams import QuantGrid

        QuantGrid(config.bits, config.method, config.symmetric)  # raises for bad bits / method
        step = config.update_step
        if isinstance(step, bool) or not isinstance(step, int) or step <= 0:
            raise ValueError(f"{where}: update_step must be a positive int, got {step!r}")
    if (noise == "centroid") != (centroids is not None):
        given = "given" if centroids is not None else "None"
        raise ValueError(f"{where}: centroids go with noise='centroid', got noise={noise!r} and centroids {given}")
    if centroids is not None and (centroids.dim() != 2 or centroids.shape[1] != config.block_size):
        raise ValueError(f"{where}: centroids must have shape [K, {config.block_size}], got {tuple(centroids.shape)}")


def _kind_kwargs(config: QuantNoiseConfig, weight: Tensor, qparams, centroids: Tensor | None) -> dict:
    """The op keyword arguments of the noise kind."""
    kw = {"rescale": config.rescale, "straight_through": config.straight_through, "noise": config.noise}
    if config.noise == "fake_quant":
        kw |= {"scale": qparams.scale, "zero_point": qparams.zero_point}
        kw |= {"quant_min": qparams.quant_min, "quant_max": qparams.quant_max}
    elif config.noise == "centroid":
        kw["centroids"] = centroids.to(weight.dtype)
    return kw


def quant_noise_weight(
    weight: Tensor,
    p: float,
    block_size: int,
    *,
    training: bool = True,
    rescale: bool = True,
    straight_through: bool = True,
    generator: torch.Generator | None = None,
    noise: str = "drop",
    centroids: Tensor | None = None,
    qparams=None,
    bits: int = 8,
    method: str = "tensor",
    symmetric: bool = False,
) -> Tensor:
    """The functional form: ``weight`` with Quant-Noise, for weights used outside a module's forward.

    For code that passes a weight straight to a functional op (e.g. ``q_proj.weight`` into
    ``F.multi_head_attention_forward``). Returns ``weight`` itself when not training or ``p == 0``.
    The seed comes from ``generator`` (default: torch's global RNG). ``noise="fake_quant"`` uses
    ``qparams`` (:class:`quantnoise_kernels.scalar.QParams`) or, without them, observes ``weight`` on the
    grid of ``bits``/``method``/``symmetric`` at each call; ``noise="centroid"`` takes ``centroids``.
    """
    config = QuantNoiseConfig(p, block_size, rescale, straight_through, noise, bits, method, symmetric)
    _check_config("quant_noise_weight", weight, config, centroids)
    if not training or p == 0:
        return weight
    if noise == "fake_quant" and qparams is None:
        from .scalar.qparams import QuantGrid, observe

        qparams = observe(weight, QuantGrid(bits, method, symmetric), name="weight")
    seed = ops.draw_seed(generator)
    return ops.block_noise(weight, p, block_size, seed, **_kind_kwargs(config, weight, qparams, centroids))


@torch.compiler.disable  # the refresh counter is Python state: a graph break, not a recompile per step
def _qparams(module: nn.Module):
    """The fake-quant grid of a wrapped module, observed every ``update_step`` training forwards."""
    cache = module.__dict__.get("quant_noise_qparams")
    if cache is None:
        from .scalar.qparams import QParamsCache, QuantGrid

        config: QuantNoiseConfig = module.quant_noise_config
        cache = QParamsCache(QuantGrid(config.bits, config.method, config.symmetric), config.update_step)
        module.__dict__["quant_noise_qparams"] = cache
    return cache(module.weight, name=f"{unwrapped_class(module).__name__}.weight")


def _noise_kwargs(module: nn.Module) -> dict:
    """The op arguments of one training forward of a wrapped module (a fresh seed)."""
    config: QuantNoiseConfig = module.quant_noise_config
    qparams = _qparams(module) if config.noise == "fake_quant" else None
    kw = _kind_kwargs(config, module.weight, qparams, module._buffers.get("quant_noise_centroids"))
    return {"p": config.p, "block_size": config.block_size, "seed": ops.draw_seed(), **kw}


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
    if not module.training or config.p == 0:
        return module.weight
    module._quant_noise_ran = True
    return ops.block_noise(module.weight, **_noise_kwargs(module))


def _noisy_forward(self, input: Tensor) -> Tensor:
    config: QuantNoiseConfig = self.quant_noise_config
    base = type(self).__dict__[QUANT_NOISE_BASE]  # the class the module had before wrapping
    if not self.training or config.p == 0:
        return base.forward(self, input)
    self._quant_noise_ran = True  # read by the gradient check of _watch_weight
    if isinstance(self, nn.Linear):  # fused: the noised weight is never materialised
        return ops.noisy_linear(input, self.weight, self.bias, **_noise_kwargs(self))
    if isinstance(self, nn.Embedding) and self.max_norm is not None:
        with torch.no_grad():  # as nn.Embedding: renormalise the looked-up rows of the weight, then noise it
            torch.embedding_renorm_(self.weight, input, self.max_norm, self.norm_type)
    if isinstance(self, nn.Embedding):
        return _noisy_embedding(self, input)
    return self._conv_forward(input, ops.block_noise(self.weight, **_noise_kwargs(self)), self.bias)


def _noisy_embedding(self: nn.Embedding, input: Tensor) -> Tensor:
    """A training lookup in the noised table that noises only the rows looked up (issue 11).

    The mask is keyed by block index (``block_noise``'s ``rows``), so this equals ``F.embedding`` in the whole
    noised table, gradients included: the rows are gathered in token order with ``F.embedding`` (``padding_idx``,
    ``scale_grad_by_freq``, ``sparse`` as ``nn.Embedding``) and noised as the rows of the table they are: two
    passes over ``tokens x dim`` entries instead of one over the table. The whole table is noised instead when
    the batch holds as many tokens as the table has rows.
    """
    kw = _noise_kwargs(self)
    if input.numel() >= self.num_embeddings:
        weight = ops.block_noise(self.weight, **kw)
        return F.embedding(input, weight, self.padding_idx, None, 2.0, self.scale_grad_by_freq, self.sparse)
    looked_up = F.embedding(input, self.weight, self.padding_idx, None, 2.0, self.scale_grad_by_freq, self.sparse)
    rows = input.reshape(-1)
    if kw.get("scale") is not None and kw["scale"].numel() > 1:  # per-channel grid: the looked-up rows' own
        kw["scale"], kw["zero_point"] = kw["scale"][rows], kw["zero_point"][rows]
    noised = ops.block_noise(looked_up.reshape(rows.numel(), -1), rows=rows, **kw)
    return noised.view(looked_up.shape)


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
    module: nn.Module,
    p: float,
    block_size: int,
    *,
    noise: str = "drop",
    bits: int = 8,
    rescale: bool = True,
    straight_through: bool = True,
    method: str = "histogram",
    symmetric: bool = False,
    update_step: int = 1000,
    centroids: Tensor | None = None,
) -> nn.Module:
    """Wrap ``module`` so that its training forwards use a block-noised weight (fairseq's signature).

    Args:
        module: ``nn.Linear``, ``nn.Embedding``, ``nn.Conv1d`` or ``nn.Conv2d`` (any kernel size), or a subclass
            of one that keeps its forward (overrides neither ``forward`` nor ``_conv_forward``); changed in place
            (its class) and returned.
        p: fraction of blocks noised in each training forward, in ``[0, 1)`` (``[0, 1]`` for ``"fake_quant"``
            and ``"centroid"``); ``p == 0`` returns ``module`` untouched, as fairseq does.
        block_size: block length along a row of ``weight.reshape(out, -1)``; must divide it
            (for a k x k conv, ``block_size = k*k`` makes one block one spatial kernel, as iPQ).
            1 with ``noise="fake_quant"`` is fairseq's per-weight scalar noise.
        noise: ``"drop"`` (noised blocks become 0, fairseq's iPQ proxy), ``"fake_quant"`` (noised blocks become
            their int-``bits`` fake-quantized value, the other entries are clamped to the grid's range; gradient
            straight-through times the clamp mask) or ``"centroid"`` (noised blocks become their nearest row of
            ``centroids``).
        bits: ``"fake_quant"``: the grid's bits, 2..8.
        rescale: ``"drop"``: scale kept blocks by ``1/(1-p)`` (fairseq's behaviour).
        straight_through: gradient reaches every weight entry (the paper's estimator); ``False``
            gives the dropout-style gradient (zero on noised blocks).
        method: ``"fake_quant"``: the observer, ``"histogram"`` (fairseq's default), ``"tensor"`` (min/max) or
            ``"channel"`` (min/max per output channel); ``symmetric``: a signed grid, zero point 0.
        update_step: ``"fake_quant"``: training forwards between two observations of the grid (fairseq's rule;
            the weight must be finite then, else ValueError naming it).
        centroids: ``"centroid"``: ``[K, block_size]`` codebook (kept as the non-persistent buffer
            ``quant_noise_centroids``: it follows ``.to()`` and stays out of ``state_dict``).

    Returns:
        ``module``. Its stored weights are never modified; eval mode is unaffected. It pickles
        (``torch.save(model)``, ``copy.deepcopy``) like the module it wraps.

    Raises:
        TypeError: ``module`` is not a supported layer, or a subclass with its own forward (the noise would
            replace that forward in training).
        ValueError: ``module`` is wrapped already, or a bad argument (named, with its value): ``p`` outside its
            range, ``block_size`` not dividing the weight's row, ``noise``, ``bits``, ``method``,
            ``update_step``, ``centroids``.

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
    config = QuantNoiseConfig(p, block_size, rescale, straight_through, noise, bits, method, symmetric, update_step)
    _check_config("quant_noise", module.weight, config, centroids)
    if p == 0:
        return module
    module.quant_noise_config = dataclasses.replace(config, p=float(p))
    if centroids is not None:
        module.register_buffer("quant_noise_centroids", centroids.detach().clone(), persistent=False)
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
    for attr in ("quant_noise_config", "quant_noise_qparams", "_quant_noise_ran", "_quant_noise_checked"):
        module.__dict__.pop(attr, None)
    module._buffers.pop("quant_noise_centroids", None)
    return module
