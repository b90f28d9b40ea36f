"""pytest-benchmark modules (those without ``rows()``): print the machine with every run."""

from __future__ import annotations

import quantnoise_kernels  # noqa: F401
from benchmarks.machine import machine_summary


def pytest_report_header(config):
    return f"machine: {machine_summary()}"
