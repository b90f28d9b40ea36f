"""Progress: tqdm bars when tqdm is installed (a declared dependency), and the log lines of ``verbose=True``."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

__all__ = ["progress_bar", "show_info"]


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


def show_info(logger: logging.Logger, message: str, *args: Any) -> None:
    """Log an INFO line a caller asked for with ``verbose=True``: while it is logged the logger is enabled for
    INFO and, where the application configured no logging handler at all, a stderr handler shows it."""
    level, handler = logger.level, None
    if not logger.isEnabledFor(logging.INFO):
        logger.setLevel(logging.INFO)
    if not logger.hasHandlers():
        handler = logging.StreamHandler()  # the current sys.stderr
        logger.addHandler(handler)
    try:
        logger.info(message, *args)
    finally:
        logger.setLevel(level)
        if handler is not None:
            logger.removeHandler(handler)
