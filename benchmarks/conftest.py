"""Benchmark set-up: print the machine with every run (times drift; ratios hold)."""

from __future__ import annotations

import os
import platform

import torch

import quantnoise_kernels  # noqa: F401


def machine_summary() -> str:
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
        f"CUDA {'available: ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'not available'}"
    )


def pytest_report_header(config):
    return f"machine: {machine_summary()}"
