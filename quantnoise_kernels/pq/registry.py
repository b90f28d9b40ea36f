"""Which PQ layer replaces which dense layer: the one table ``quantize_model_``, save/load and the fairseq
import read.

A PQ layer class names its dense class (``_FLOAT_MODULE``); :func:`register_pq_layer` enters it here. The
built-in layers are registered below; a new one is registered by whoever defines it (see csrc/README.md,
"How to add a PQ layer").
"""

from __future__ import annotations

from torch import nn

from .._modules import behaves_as, refusal, unwrapped_class
from .layers import PQConv1d, PQConv2d, PQEmbedding, PQLayer, PQLinear

__all__ = [
    "register_pq_layer",
    "pq_layer_classes",
    "pq_class_for",
    "why_not_quantizable",
    "config_class_names",
    "pq_class_by_dense_name",
    "is_pq_layer",
]

_BY_DENSE: dict[type[nn.Module], type[PQLayer]] = {}


def register_pq_layer(pq_cls: type[PQLayer]) -> type[PQLayer]:
    """Make ``pq_cls`` the PQ layer of its ``_FLOAT_MODULE``. Returns ``pq_cls`` (usable as a decorator).

    Raises:
        TypeError: ``pq_cls`` is not a :class:`PQLayer` with a ``_FLOAT_MODULE``.
        ValueError: another PQ class is registered for that dense class, or one of the same name.
    """
    if not (isinstance(pq_cls, type) and issubclass(pq_cls, PQLayer) and hasattr(pq_cls, "_FLOAT_MODULE")):
        raise TypeError(f"register_pq_layer: expected a PQLayer subclass with a _FLOAT_MODULE, got {pq_cls!r}")
    dense = pq_cls._FLOAT_MODULE
    clash = _BY_DENSE.get(dense) or pq_class_by_dense_name(dense.__name__)
    if clash is not None and clash is not pq_cls:
        raise ValueError(f"register_pq_layer: {dense.__name__} already has the PQ layer {clash.__name__}")
    _BY_DENSE[dense] = pq_cls
    return pq_cls


def pq_layer_classes() -> dict[type[nn.Module], type[PQLayer]]:
    """Dense class -> PQ class, in registration order."""
    return dict(_BY_DENSE)


def pq_class_for(module: nn.Module) -> type[PQLayer] | None:
    """The PQ class that replaces ``module``, or None.

    ``module`` is a registered dense class, a subclass of one that keeps its forward (overrides neither
    ``forward`` nor ``_conv_forward``), or either wrapped by ``quant_noise`` (quantizing drops the wrapper and
    keeps the weight); see :mod:`quantnoise_kernels._modules`. A PQ layer is not a dense layer: None.
    """
    if isinstance(module, PQLayer):
        return None
    return _BY_DENSE.get(behaves_as(module, _BY_DENSE))


def why_not_quantizable(module: nn.Module) -> str:
    """Why :func:`pq_class_for` gives None for ``module`` (for error messages)."""
    return refusal(module, _BY_DENSE)


def config_class_names(module: nn.Module) -> list[str]:
    """The class names a config may list ``module`` under, most specific first: its own class (without the
    ``quant_noise`` wrapper, whose class fairseq never sees), then the dense class its PQ layer replaces."""
    names = [unwrapped_class(module).__name__]
    pq_cls = pq_class_for(module)
    if pq_cls is not None and pq_cls._FLOAT_MODULE.__name__ not in names:
        names.append(pq_cls._FLOAT_MODULE.__name__)
    return names


def pq_class_by_dense_name(name: str) -> type[PQLayer] | None:
    """The PQ class registered for the dense class called ``name`` (as files store it), or None."""
    return next((pq for dense, pq in _BY_DENSE.items() if dense.__name__ == name), None)


def is_pq_layer(module: nn.Module) -> bool:
    """True for a PQ layer (any :class:`PQLayer`)."""
    return isinstance(module, PQLayer)


for _cls in (PQLinear, PQEmbedding, PQConv1d, PQConv2d):
    register_pq_layer(_cls)
