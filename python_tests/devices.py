"""The devices every op test runs on: the CPU always, and CUDA (skipped without a GPU).

``QUANTNOISE_TEST_DEVICE=cpu`` (comma-separated) restricts the list.
"""

from __future__ import annotations

import os

import pytest

ALL_DEVICES = ["cpu", "cuda"]


def device_params() -> list:
    """``pytest.param`` per device; CUDA ones carry the ``cuda`` marker (conftest skips them without a GPU)."""
    env = os.environ.get("QUANTNOISE_TEST_DEVICE")
    devices = env.split(",") if env else ALL_DEVICES
    return [pytest.param(d, marks=pytest.mark.cuda) if d.startswith("cuda") else d for d in devices]
