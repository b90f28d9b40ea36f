"""The machine a benchmark ran on: CPU model, cores, threads, torch, the ISA path our CPU kernels
take, the load average. Printed with every table (absolute times mean nothing without it)."""

from __future__ import annotations

import os
import platform
import re
from functools import cache

import torch

import quantnoise_kernels

__all__ = ["cpu_model", "cpu_flags", "isa_path", "machine_info", "machine_summary", "machine_slug", "load_text"]


@cache
def _cpuinfo() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return f.read()
    except OSError:
        return ""


def cpu_model() -> str:
    """``model name`` from /proc/cpuinfo (virtual machines may shorten it, e.g. "AMD EPYC")."""
    found = re.search(r"^model name\s*:\s*(.+)$", _cpuinfo(), re.M)
    return found.group(1).strip() if found else (platform.processor() or platform.machine())


def cpu_flags() -> set[str]:
    found = re.search(r"^flags\s*:\s*(.+)$", _cpuinfo(), re.M)
    return set(found.group(1).split()) if found else set()


def isa_path() -> str:
    """The CPU path our kernels take: the widest the CPU runs, capped by ``QUANTNOISE_CPU_ISA``."""
    return quantnoise_kernels.cpu_isa()


def load_text(load: list[float] | None = None) -> str:
    one, five, fifteen = load if load is not None else os.getloadavg()
    return f"load average {one:.2f} / {five:.2f} / {fifteen:.2f} (1 / 5 / 15 min)"


def machine_info() -> dict:
    """Everything the report header prints, as JSON-able values."""
    return {
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "isa": isa_path(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "load": list(os.getloadavg()),
    }


def machine_summary(info: dict | None = None) -> str:
    m = info or machine_info()
    cuda = f"CUDA {m['cuda']}" if m["cuda"] else "no CUDA device"
    return (
        f"{m['cpu_model']}, {m['cores']} cores, {m['threads']} threads, torch {m['torch']}, ISA path {m['isa']}, {cuda}"
    )


def machine_slug(info: dict | None = None) -> str:
    """File name of this machine's report, e.g. ``amd-epyc-avx2-2c``."""
    m = info or machine_info()
    model = re.sub(r"\((r|tm)\)|cpu|processor|@.*$", "", m["cpu_model"].lower())
    model = re.sub(r"[^a-z0-9]+", "-", model).strip("-")
    return f"{model}-{m['isa']}-{m['cores']}c"
