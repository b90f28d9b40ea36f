"""Progress bars: tqdm when it is installed (a declared dependency), the plain iterable otherwise."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["progress_bar"]


class _Silent:
    """The part of tqdm's interface the library uses, doing nothing."""

    def __init__(self, iterable: Iterable) -> None:
        self._iterable = iterable

    def __iter__(self):
        return iter(self._iterable)

    def set_postfix(self, **_: Any) -> None:
        pass


def progress_bar(iterable: Iterable, *, disable: bool = False, **kwargs: Any):
    """``tqdm.auto.tqdm(iterable, disable=disable, **kwargs)``, or a silent wrapper without tqdm."""
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency; a bare environment still runs
        return _Silent(iterable)
    return tqdm(iterable, disable=disable, **kwargs)
