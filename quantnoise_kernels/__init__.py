"""quantnoise_kernels: Quant-Noise training, iPQ compression and compressed inference kernels.

Importing the package loads the compiled ops (``torch.ops.quantnoise.*``) and then the Python
registrations (fake kernels, autograd) in :mod:`quantnoise_kernels.ops`.
"""

from __future__ import annotations

import torch  # noqa: F401  (loads libtorch, which _C links against)

try:
    from . import _C  # noqa: F401  (loads the op library; must precede ops/)
except ImportError as error:  # never fall back silently to slow Python code
    raise ImportError(
        "quantnoise_kernels: the compiled extension quantnoise_kernels._C is missing or does not load "
        f"({error}). Build it with `pip install --no-build-isolation -e .` (or `make build`) after "
        "installing torch; for CUDA set CUDA_HOME and TORCH_CUDA_ARCH_LIST, see README.md."
    ) from error

from . import ops, reference  # noqa: E402
from .clustering import KMeansResult, kmeans  # noqa: E402
from .noise import quant_noise, quant_noise_weight, remove_quant_noise  # noqa: E402

__all__ = [
    "cpu_isa",
    "ops",
    "reference",
    "quant_noise",
    "quant_noise_weight",
    "remove_quant_noise",
    "kmeans",
    "KMeansResult",
]
__version__ = "0.1.0"


def cpu_isa() -> str:
    """The instruction-set path the CPU kernels take now: ``"avx512"``, ``"avx2"`` or ``"portable"``.

    The widest path this CPU runs (avx512: AVX-512 F/BW/VL; avx2: AVX2 + FMA), capped by the
    environment variable ``QUANTNOISE_CPU_ISA=avx512|avx2|portable``, which the kernels read at
    every call. A cap the CPU cannot honour runs its widest path and warns once; an unknown value
    raises ``ValueError`` (here and in every op with ISA-specific code).
    """
    return _C.cpu_isa()
