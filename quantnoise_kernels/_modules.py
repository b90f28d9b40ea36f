"""Which supported layer a module *behaves* as: the one rule ``quant_noise`` and the PQ registry share.

A module can stand in for a supported layer class (``nn.Linear``, ``nn.Conv2d``, ...) when its forward is that
class's forward: the class itself, a subclass that overrides none of the methods the forward runs
(``forward``, and ``_conv_forward`` for convolutions; ``NonDynamicallyQuantizableLinear`` is such a subclass),
or such a module wrapped by :func:`quantnoise_kernels.quant_noise` (the wrapper's class records the class it
wrapped). A subclass with its own forward is refused by both, with the reason: neither the noise nor a PQ layer
can reproduce a forward it does not know.
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

__all__ = ["QUANT_NOISE_BASE", "unwrapped_class", "is_noise_wrapped", "behaves_as", "refusal"]

# Class attribute of the classes quant_noise swaps in: the class the module had before wrapping.
QUANT_NOISE_BASE = "_quant_noise_base"
# The methods a layer's forward runs; a subclass overriding one of them computes something else.
_FORWARD_METHODS = ("forward", "_conv_forward")


def is_noise_wrapped(module: nn.Module) -> bool:
    """True for a module wrapped by ``quant_noise`` (decided by its class, not by an attribute)."""
    return QUANT_NOISE_BASE in type(module).__dict__


def unwrapped_class(module: nn.Module) -> type:
    """The class of ``module`` without the ``quant_noise`` wrapper."""
    cls = type(module)
    return cls.__dict__.get(QUANT_NOISE_BASE, cls)


def _overridden(cls: type, base: type) -> list[str]:
    return [m for m in _FORWARD_METHODS if hasattr(base, m) and getattr(cls, m) is not getattr(base, m)]


def behaves_as(module: nn.Module, bases: Iterable[type]) -> type | None:
    """The class of ``bases`` whose forward ``module`` runs (through a ``quant_noise`` wrapper), or None."""
    cls = unwrapped_class(module)
    for base in bases:
        if issubclass(cls, base) and not _overridden(cls, base):
            return base
    return None


def refusal(module: nn.Module, bases: Iterable[type]) -> str:
    """Why ``module`` is not one of ``bases``, as ``"a <class>, <reason>"`` (for error messages); empty when it is."""
    bases = tuple(bases)
    if behaves_as(module, bases) is not None:
        return ""
    cls = unwrapped_class(module)
    names = ", ".join(b.__name__ for b in bases)
    for base in bases:
        if issubclass(cls, base):
            methods = " and ".join(_overridden(cls, base))
            return (
                f"a {cls.__name__}, a subclass of {base.__name__} that overrides {methods}, which cannot be "
                f"reproduced (supported: {names}, and subclasses that keep their forward)"
            )
    return f"a {cls.__name__}, not one of {names} (or a subclass of one that keeps its forward)"
