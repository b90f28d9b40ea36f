"""The Python scalars of the op wrappers, converted to what the schemas take, or refused.

Half of the op layer's validation: the tensor checks shared with the C++ kernels are in :mod:`._checks` (run by
the kernels and the fake kernels); these run in the wrappers, before the dispatcher turns a Python value into an
``int`` or a ``float``, where a silent conversion would hide a mistake (``block_size=4.5`` truncated to 4,
``rescale="no"`` read as True, a seed of 2**64 overflowing with a message that names nothing). Messages are
prefixed ``quantnoise::<op>:`` like the kernels'. Symbolic values (``torch.compile`` with dynamic shapes) pass.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["int_arg", "float_arg", "bool_arg", "seed_arg", "shape_arg", "check_keywords"]

_SYMBOLIC = (torch.SymInt, torch.SymFloat, torch.SymBool)


def int_arg(op: str, name: str, value) -> int:
    """An integer (``int``, a NumPy integer, ``operator.index``-able); floats and bools are refused."""
    if isinstance(value, _SYMBOLIC):
        return value
    if not isinstance(value, bool):
        try:
            return operator.index(value)
        except TypeError:
            pass
    raise TypeError(f"quantnoise::{op}: {name} must be an int, got {value!r} ({type(value).__name__})")


def float_arg(op: str, name: str, value) -> float:
    """A real number (``int`` or ``float``, NumPy scalars included); bools, strings and tensors are refused."""
    if isinstance(value, _SYMBOLIC):
        return value
    if isinstance(value, bool) or isinstance(value, (str, bytes, Tensor)):
        raise TypeError(f"quantnoise::{op}: {name} must be a number, got {value!r} ({type(value).__name__})")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TypeError(f"quantnoise::{op}: {name} must be a number, got {value!r} ({type(value).__name__})") from None


def bool_arg(op: str, name: str, value) -> bool:
    """``True``/``False`` (or the ints 0 and 1); anything else is refused rather than read by truthiness."""
    if isinstance(value, _SYMBOLIC):
        return value
    if isinstance(value, bool) or (not isinstance(value, float) and value in (0, 1)):
        return bool(value)
    raise TypeError(f"quantnoise::{op}: {name} must be a bool, got {value!r} ({type(value).__name__})")


def seed_arg(op: str, value) -> Tensor:
    """A seed: an int in ``[-2**63, 2**63)`` (made a 0-d int64 tensor) or a tensor (checked by the kernel)."""
    if isinstance(value, Tensor):
        return value
    seed = int_arg(op, "seed", value)
    if isinstance(seed, int) and not -(2**63) <= seed < 2**63:
        raise ValueError(f"quantnoise::{op}: seed must be in [-2**63, 2**63) (a 64-bit Philox key), got {seed}")
    return torch.tensor(seed, dtype=torch.int64)


def shape_arg(op: str, shape) -> list[int]:
    """A shape: a sequence of ints (``torch.Size``, list, tuple); the kernel checks it against its tensors."""
    if isinstance(shape, (str, bytes)) or not isinstance(shape, (Sequence, torch.Size)):
        raise TypeError(f"quantnoise::{op}: shape must be a sequence of ints, got {shape!r}")
    sizes = [int_arg(op, "shape", s) for s in shape]
    negative = [s for s in sizes if isinstance(s, int) and s < 0]
    if negative:
        raise ValueError(f"quantnoise::{op}: shape must hold sizes >= 0, got {list(sizes)}")
    return sizes


def check_keywords(function: str, keywords: dict, allowed: tuple[str, ...]) -> None:
    """Refuse a keyword of ``**keywords`` that is not in ``allowed`` as Python refuses it for an explicit signature
    (``TypeError: function() got an unexpected keyword argument 'name'``); for wrappers typed ``**kw: Unpack[...]``."""
    for name in keywords:
        if name not in allowed:
            raise TypeError(f"{function}() got an unexpected keyword argument {name!r}")
