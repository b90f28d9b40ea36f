"""pq_linear's CUDA kernels at their launch constants' edges, on every device (CPU as the control).

The sizes come from csrc/cuda/pq_linear_kernels.cuh (parsed, so they follow the constants): more
than one input tile of the gemv kernel (kGemvInTile, with a partial last tile), more than one row
and output tile of the tiled GEMM (kTileM, kTileN), and a codebook above kGemvMaxSmemC that the
gemv kernel reads from global memory instead of shared memory. The other dimensions are small, so
the emulated cases take about a second.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from devices import device_params

from quantnoise_kernels import ops, reference

KERNELS = (Path(__file__).resolve().parent.parent / "csrc" / "cuda" / "pq_linear_kernels.cuh").read_text()


def _constant(name: str) -> int:
    """``constexpr int[64_t] name = <expr>;`` from the kernels' header, evaluated (integers, * only)."""
    found = re.search(rf"\b{name} = ([0-9 *]+)[,;]", KERNELS)
    assert found, f"{name} not found in pq_linear_kernels.cuh"
    value = 1
    for factor in found.group(1).split("*"):
        value *= int(factor)
    return value


GEMV_IN_TILE = _constant("kGemvInTile")
GEMV_MAX_SMEM_C = _constant("kGemvMaxSmemC")
TILE_M, TILE_N = _constant("kTileM"), _constant("kTileN")

# (name, M rows, out, in, block size, K, path); "lut" is the gemv kernel on a CUDA device.
CASES = [
    ("gemv, two input tiles, the last partial", 3, 40, GEMV_IN_TILE + 3 * 4, 4, 16, "lut"),
    ("gemv, three input tiles", 5, 8, 2 * GEMV_IN_TILE + 8, 8, 32, "lut"),
    ("tile, two row and two output tiles", TILE_M + 6, TILE_N + 5, 40, 8, 16, "tile"),
    ("gemv, codebook in global memory", 2, 8, 16, 8, GEMV_MAX_SMEM_C // (8 * 4) + 64, "lut"),
]


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_pq_linear_across_tiles_and_fallbacks(device, case):
    _, m, out, inf, bs, k, path = case
    if "global memory" in case[0]:
        assert k * bs * 4 > GEMV_MAX_SMEM_C
    codes = torch.randint(0, k, (out, inf // bs)).to(torch.uint8 if k <= 256 else torch.int32)
    c, x, bias = torch.randn(k, bs), torch.randn(m, inf), torch.randn(out)
    ref = reference.pq_linear(x.double(), codes, c.double(), bias.double())
    for transposed in (False, True):
        packed = ops.pq_pack_codes(codes) if transposed else codes
        y = ops.pq_linear(
            x.to(device), packed.to(device), c.to(device), bias.to(device), codes_transposed=transposed, path=path
        )
        torch.testing.assert_close(y.cpu().double(), ref, rtol=1e-4, atol=1e-4)
