"""Shared test set-up: fresh seeds per test, the device list, the cuda and cuda_emu markers, the CPU paths."""

from __future__ import annotations

import os
import platform
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
from devices import CPU_ISAS, runnable_cpu_isas  # noqa: E402

import quantnoise_kernels  # noqa: E402, F401  (loads the ops once, before any test)


@pytest.fixture(autouse=True)
def _seed_everything():
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)


@pytest.fixture(params=CPU_ISAS)
def isa(request, monkeypatch):
    """Runs a test on one CPU instruction-set path (``QUANTNOISE_CPU_ISA``, read by the kernels at
    every call). A path this CPU cannot run is skipped, naming the features it lacks. A test on a
    CUDA device (real or emulated) does not depend on the path: it runs once (see
    ``pytest_collection_modifyitems``)."""
    missing = quantnoise_kernels._C.cpu_isa_missing(request.param)
    if missing:
        pytest.skip(f"the {request.param} path cannot run here: this CPU ({platform.machine()}) lacks {missing}")
    monkeypatch.setenv("QUANTNOISE_CPU_ISA", request.param)
    assert quantnoise_kernels.cpu_isa() == request.param
    return request.param


@pytest.fixture(autouse=True)
def _cuda_emulation(request):
    """Tests on the ``cuda-emu`` device run the ops through their emulated CUDA kernels."""
    if request.node.get_closest_marker("cuda_emu") is None:
        yield
        return
    from emu import cuda_emulation

    with cuda_emulation():
        yield


def _isa_free(item) -> bool:
    """True for a test whose kernels do not take a CPU path: a CUDA device, real or emulated."""
    return item.get_closest_marker("cuda") is not None or item.get_closest_marker("cuda_emu") is not None


def pytest_collection_modifyitems(config, items):
    # A CUDA-device test that takes the isa fixture runs once, under the widest path this CPU has.
    widest = runnable_cpu_isas()[0]
    keep, drop = [], []
    for item in items:
        isa = getattr(getattr(item, "callspec", None), "params", {}).get("isa")
        (drop if isa is not None and isa != widest and _isa_free(item) else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; none visible")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)
