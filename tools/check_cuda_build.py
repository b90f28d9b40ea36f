"""Check a CUDA build of quantnoise_kernels without a GPU (``make cuda-build``).

Imports the package, then checks that every ``quantnoise`` op has a CUDA kernel registered with
the dispatcher and that the extension carries device code (an ``.nv_fatbin`` section). Exits 1
with the list of problems otherwise.
"""

from __future__ import annotations

import shutil
import subprocess
import sys

import torch

import quantnoise_kernels


def main() -> int:
    so = quantnoise_kernels._C.__file__
    print(f"torch {torch.__version__} (CUDA {torch.version.cuda}); extension {so}")
    problems = []
    if torch.version.cuda is None:
        problems.append("torch is a CPU-only build")
    names = sorted(n for n in torch._C._dispatch_get_all_op_names() if n.startswith("quantnoise::"))
    if not names:
        problems.append("no quantnoise ops registered")
    for name in names:
        has = torch._C._dispatch_has_kernel_for_dispatch_key(name, "CUDA")
        print(f"  {name:<45} CUDA kernel: {'yes' if has else 'NO'}")
        if not has:
            problems.append(f"{name} has no CUDA kernel")
    if shutil.which("readelf"):
        sections = subprocess.run(["readelf", "-S", "-W", so], capture_output=True, text=True).stdout
        fatbin = ".nv_fatbin" in sections
        print(f"  device code (.nv_fatbin section): {'yes' if fatbin else 'NO'}")
        if not fatbin:
            problems.append("the extension holds no device code")
    for p in problems:
        print(f"cuda-build: FAIL: {p}")
    if not problems:
        print(f"cuda-build: OK: {len(names)} ops, each with a CUDA kernel")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
