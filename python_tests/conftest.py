"""Shared test set-up: fresh seeds per test, the device list, the cuda and cuda_emu markers."""

from __future__ import annotations

import os
import random
from pathlib import Path

# torch.compile's caches key a compiled graph by the forward graph, not by the Python autograd
# formulas of custom ops: a cache shared with another checkout of this library (the default
# /tmp/torchinductor_<user>) can hand back a backward that calls ops this build does not have.
# Set before torch is imported: torch fixes its cache directory (and sets this variable itself)
# the first time it needs one.
ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(ROOT / "build" / "torchinductor"))

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import quantnoise_kernels  # noqa: E402, F401  (loads the ops once, before any test)


@pytest.fixture(autouse=True)
def _seed_everything():
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)


@pytest.fixture(autouse=True)
def _cuda_emulation(request):
    """Tests on the ``cuda-emu`` device run the ops through their emulated CUDA kernels."""
    if request.node.get_closest_marker("cuda_emu") is None:
        yield
        return
    from emu import cuda_emulation

    with cuda_emulation():
        yield


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; none visible")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)
