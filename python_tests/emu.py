"""The CUDA-emulation test extension (csrc/emu/, DESIGN §5): built on first use, test-only.

``cuda_emulation()`` makes the ``quantnoise`` ops run their *CUDA* kernels, emulated on CPU
threads, for CPU tensors: for every op whose emulated launcher is registered (under the spare
dispatch key ``PrivateUse3``, see csrc/emu/launcher.h), the CPU kernel is overridden for the
duration by a redispatch to that key. Autograd, fake kernels and wrappers are unchanged, so a
test parametrized with the ``cuda-emu`` device exercises the whole op through the CUDA kernel.

``QUANTNOISE_SANITIZE=1`` builds the extension with ``-fsanitize=address,undefined`` (the
process must then preload libasan, as ``make test-asan`` does).
"""

from __future__ import annotations

import contextlib
import functools
import glob
import os
import re
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from torch.utils import cpp_extension

ROOT = Path(__file__).resolve().parent.parent
EMU_KEY = "PrivateUse3"
EMULATING = False  # True inside cuda_emulation()
SANITIZE_FLAGS = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-fno-sanitize=vptr"]
# The race check's instrumentation (csrc/emu/racecheck.h): compile-time only, no TSan runtime is
# linked; csrc/emu/racecheck.cpp defines the __tsan_* entry points. GCC cannot combine it with
# -fsanitize=address, so the sanitizer build runs without race checking.
RACECHECK_FLAGS = ["-fsanitize=thread", "--param=tsan-instrument-func-entry-exit=0"]


def sanitized() -> bool:
    return os.environ.get("QUANTNOISE_SANITIZE", "0") == "1"


@functools.cache
def load() -> None:
    """Build (incrementally, ninja) and load the emulation extension into this process."""
    sanitize = sanitized()
    name = "quantnoise_emu_asan" if sanitize else "quantnoise_emu"
    build_dir = ROOT / "build" / name
    build_dir.mkdir(parents=True, exist_ok=True)
    # The emulated launchers and the host helpers they link (csrc/host/, as the real build); not
    # csrc/*.cpp: the main extension defines the schemas and the Python module.
    sources = sorted(glob.glob(str(ROOT / "csrc" / "emu" / "*.cpp")) + glob.glob(str(ROOT / "csrc" / "host" / "*.cpp")))
    opt = ["-O1", "-g1", *SANITIZE_FLAGS] if sanitize else ["-O2", "-g0", *RACECHECK_FLAGS]
    cpp_extension.load(
        name,
        sources,
        # shim/ first: it stands in for the CUDA headers a .cu launcher includes (pq_emu.cpp).
        extra_include_paths=[
            str(ROOT / "csrc" / "emu" / "shim"),
            str(ROOT / "csrc" / "include"),
            str(ROOT / "csrc" / "emu"),
        ],
        extra_cflags=[*opt, "-Wall"],
        extra_ldflags=SANITIZE_FLAGS if sanitize else [],
        build_directory=str(build_dir),
        is_python_module=False,
        verbose=False,
    )


def emulated_ops() -> list[str]:
    """Names of the ``quantnoise`` ops that have an emulated CUDA kernel."""
    load()
    names = torch._C._dispatch_get_registrations_for_dispatch_key(EMU_KEY)
    return sorted(n.split("::", 1)[1].split(".")[0] for n in names if n.startswith("quantnoise::"))


def ops_with_cuda_kernels() -> list[str]:
    """Ops that csrc/cuda/*.cu registers for the CUDA key (parsed from the sources: this build has no CUDA)."""
    found = set()
    for path in glob.glob(str(ROOT / "csrc" / "cuda" / "*.cu")):
        text = Path(path).read_text()
        if "TORCH_LIBRARY_IMPL(quantnoise, CUDA" in text:
            found.update(re.findall(r'm\.impl\(\s*"([a-z0-9_]+)"', text))
    return sorted(found)


def set_schedule(policy: str, seed: int = 0) -> None:
    """Order in which the threads of a block run: ``forward``, ``reverse`` or ``random`` (seeded)."""
    load()
    torch.ops.quantnoise_emu_test.set_schedule(policy, seed)


def _redispatch(op: torch._ops.OpOverload):
    keyset = torch._C.DispatchKeySet(getattr(torch._C.DispatchKey, EMU_KEY))

    def kernel(*args, **kwargs):
        return op.redispatch(keyset, *args, **kwargs)

    return kernel


def _missing(name: str):
    def kernel(*args, **kwargs):
        raise NotImplementedError(
            f"quantnoise::{name} has a CUDA kernel (csrc/cuda/*.cu) but no emulated launcher: add "
            f"csrc/emu/{name}_emu.cpp (checklist in csrc/README.md)"
        )

    return kernel


@contextlib.contextmanager
def cuda_emulation() -> Iterator[list[str]]:
    """Within the block, CPU tensors go through the emulated CUDA kernels; yields the op names.

    An op with a CUDA kernel but no emulated launcher raises NotImplementedError, so its
    ``cuda-emu`` tests fail instead of silently testing the CPU kernel again.
    """
    names = emulated_ops()
    lib = torch.library.Library("quantnoise", "IMPL")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"(?s).*Overriding a previously registered kernel")
        for name in names:
            lib.impl(name, _redispatch(getattr(torch.ops.quantnoise, name).default), "CPU")
        for name in sorted(set(ops_with_cuda_kernels()) - set(names)):
            lib.impl(name, _missing(name), "CPU")
    global EMULATING
    EMULATING = True
    try:
        yield names
    finally:
        EMULATING = False
        lib._destroy()
