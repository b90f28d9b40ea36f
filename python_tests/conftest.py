"""Shared test set-up: fresh seeds per test, the device list, the cuda marker."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

import quantnoise_kernels  # noqa: F401  (loads the ops once, before any test)


@pytest.fixture(autouse=True)
def _seed_everything():
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; none visible")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
