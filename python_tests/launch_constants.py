"""Launch constants of the CUDA kernels, parsed from their headers so tests follow them when they change.

``constant("pq_linear_kernels.cuh", "kTileM")`` reads ``constexpr int[64_t] kTileM = <expr>;`` (or one
name of a comma-separated declaration) from ``csrc/cuda/<header>``, or from
``csrc/include/quantnoise/<header>``, and evaluates the expression: integers joined by ``*`` or
``<<``, or other constants of the same header multiplied together.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

CSRC = Path(__file__).resolve().parent.parent / "csrc"


@functools.cache
def _text(header: str) -> str:
    for folder in (CSRC / "cuda", CSRC / "include" / "quantnoise"):
        if (folder / header).exists():
            return (folder / header).read_text()
    raise FileNotFoundError(f"{header} is in neither csrc/cuda nor csrc/include/quantnoise")


def constant(header: str, name: str) -> int:
    """The value of the ``constexpr`` integer ``name`` declared in ``header`` (see the module docstring)."""
    found = re.search(rf"\b{name} = ([^,;]+)[,;]", _text(header))
    assert found, f"{name} not found in {header}"
    expr = found.group(1).replace("int64_t{1}", "1").strip()
    if "<<" in expr:
        base, shift = (int(part.strip(" ()")) for part in expr.split("<<"))
        return base << shift
    value = 1
    for factor in expr.split("*"):
        factor = factor.strip()
        value *= int(factor) if factor.isdigit() else constant(header, factor)
    return value
