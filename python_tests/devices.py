"""The devices every op test runs on: the CPU, the emulated CUDA kernels, and CUDA.

* ``cpu``: the CPU kernels.
* ``cuda-emu``: the CUDA kernels (csrc/cuda/*_kernels.cuh) run on CPU threads by the emulation
  harness (csrc/emu/). The test receives ``"cpu"`` as its device; the ``cuda_emu`` marker makes
  conftest route every op that has an emulated kernel to it for the test's duration.
* ``cuda``: a real GPU (marked ``cuda``; skipped without one).

``QUANTNOISE_TEST_DEVICE=cpu,cuda`` (comma-separated) restricts the list.
"""

from __future__ import annotations

import os

import pytest

ALL_DEVICES = ["cpu", "cuda-emu", "cuda"]


def selected_devices() -> list[str]:
    """The device names this run tests (``QUANTNOISE_TEST_DEVICE`` or all)."""
    env = os.environ.get("QUANTNOISE_TEST_DEVICE")
    return env.split(",") if env else list(ALL_DEVICES)


def device_params() -> list:
    """``pytest.param`` per device, with the ``cuda`` / ``cuda_emu`` markers."""
    params = []
    for d in selected_devices():
        if d == "cuda-emu":
            params.append(pytest.param("cpu", id="cuda-emu", marks=pytest.mark.cuda_emu))
        elif d.startswith("cuda"):
            params.append(pytest.param(d, marks=pytest.mark.cuda))
        else:
            params.append(d)
    return params


CPU_ISAS = ["avx512", "avx2", "portable"]  # QUANTNOISE_CPU_ISA's values, widest first


def runnable_cpu_isas() -> list[str]:
    """The CPU paths this machine runs (``QUANTNOISE_CPU_ISA`` values whose features it has)."""
    import quantnoise_kernels

    return [isa for isa in CPU_ISAS if not quantnoise_kernels._C.cpu_isa_missing(isa)]


def runs_cuda_kernel(device: str) -> bool:
    """True when the ops run their CUDA kernels: on a GPU, or emulated (the ``cuda-emu`` device,
    whose tensors are on the CPU). For tolerances that differ between the CPU and CUDA kernels."""
    if device.startswith("cuda"):
        return True
    import sys

    emu = sys.modules.get("emu")
    return bool(emu is not None and emu.EMULATING)
