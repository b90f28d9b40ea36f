"""torchao, imported once without the log lines it prints on a CPU build of torch.

On import torchao logs a warning per prebuilt CUDA or other-Python extension it cannot load, and torch
warns that torchao registers an Enum as a pytree constant: noise for our users. Both loggers are set to
ERROR for the import only. ``transformers`` imports torchao too when it is installed, so the CLI and the
demo call this before loading a model (later imports are no-ops).
"""

from __future__ import annotations

import logging
from types import ModuleType

__all__ = ["import_torchao_quietly"]


def import_torchao_quietly(module: str = "torchao") -> ModuleType:
    """``importlib.import_module(module)`` (a torchao module) with torchao's and torch's ``_pytree``
    loggers at ERROR meanwhile. Raises ImportError, naming the install command, when torchao is missing."""
    import importlib

    quiet = [logging.getLogger(name) for name in ("torchao", "torch.utils._pytree")]
    levels = [one.level for one in quiet]
    for one in quiet:
        one.setLevel(logging.ERROR)
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(f"quantnoise_kernels needs torchao for {module} (pip install torchao)") from error
    finally:
        for one, level in zip(quiet, levels):
            one.setLevel(level)
