"""Every grid-stride CUDA kernel takes several grid-stride steps under emulation, against the CPU op.

A grid-stride kernel launches ``grid_stride_blocks(work, per_block, cap)`` blocks (cuda_compat.h)
and loops over what the grid leaves; the caps (2^20 blocks, 2^16, 4096, 256, CUDA's 65535 rows of
a grid) are far above any test's work. The emulated build also caps those grids at
``QN_EMU_GRID_STRIDE_CAP`` (read at each launch), so here every grid-stride dimension has
``GRID_STRIDE_CAP`` blocks and work for three full steps plus a partial fourth. Two blocks, not
one, so a stride of ``blockDim.x`` in place of ``blockDim.x * gridDim.x`` also shows. Grids that
must cover their work exactly (pq_linear's output tiles, ``grid_blocks``) are not shrunk: the tile
case has three output tiles, more than the cap.

Kernels (``grep -n grid_stride_blocks csrc/cuda``): block_noise's element-wise, centroid and
backward kernels (also through noisy_linear), pq_decode, pq_linear's activation fake-quant and the
row chunks of its gemv and tile kernels, pq_linear_backward's row chunks, pq_embedding and both
paths of its backward, kmeans_assign, kmeans_update, kmeans_update_weighted.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from devices import selected_devices
from emu import cuda_emulation
from launch_constants import constant

from quantnoise_kernels import ops

pytestmark = pytest.mark.skipif("cuda-emu" not in selected_devices(), reason="cuda-emu not in QUANTNOISE_TEST_DEVICE")

GRID_STRIDE_CAP = 2  # blocks of every grid-stride grid dimension under emulation
THREADS = constant("dispatch.h", "kThreadsPerBlock")
STEP = GRID_STRIDE_CAP * THREADS  # items per grid-stride step of a one-dimensional kernel
WORK = 3 * STEP + 37  # three full steps and a partial fourth
GEMV_ROWS = constant("pq_linear_kernels.cuh", "kGemvRows")
TILE_M, TILE_N = constant("pq_linear_kernels.cuh", "kTileM"), constant("pq_linear_kernels.cuh", "kTileN")
BWD_MAX_ROWS = constant("pq_linear_backward_kernels.cuh", "kBwdMaxRows")
EMB_BWD_SMEM = constant("pq_embedding_kernels.cuh", "kEmbBwdSmemBytes")


def _rows(per_block: int) -> int:
    """Rows of a kernel whose grid.y walks chunks of ``per_block`` rows: three steps and a partial fourth."""
    return 3 * GRID_STRIDE_CAP * per_block + per_block // 2 + 1


def _block_noise_cases() -> list[tuple[str, Callable[[], object]]]:
    w = torch.randn(WORK // 8 + 1, 8)  # one thread per element
    wc = torch.randn(WORK // 2 + 1, 8)  # centroid noise: one thread per block of 4
    c, g = torch.randn(12, 4), torch.randn_like(w)
    x = torch.randn(3, 8)
    bwd = torch.ops.quantnoise.block_noise_backward.default
    return [
        ("block_noise drop", lambda: ops.block_noise(w, 0.3, 4, 17, offset=2)),
        ("block_noise centroid", lambda: ops.block_noise(wc, 0.4, 4, 17, noise="centroid", centroids=c)),
        ("block_noise_backward", lambda: bwd(g, w, torch.tensor(17), 0.3, 4, 2, True, False, "drop", None)),
        ("noisy_linear", lambda: ops.noisy_linear(x, w, None, 0.3, 4, 17)),
    ]


def _pq_cases() -> list[tuple[str, Callable[[], object]]]:
    bs, k = 4, 16
    c = torch.randn(k, bs)
    codes = torch.randint(0, k, (WORK // 16 + 1, 4), dtype=torch.uint8)  # decode: WORK elements
    x = torch.randn(WORK // 16 + 1, 16)  # activation fake-quant: WORK elements
    small = torch.randint(0, k, (8, 4), dtype=torch.uint8)  # out 8, in 16
    wide = torch.randint(0, k, (2 * TILE_N + 5, 4), dtype=torch.uint8)  # three output tiles
    xg, xt = torch.randn(_rows(GEMV_ROWS), 16), torch.randn(_rows(TILE_M), 16)
    gy, xb = torch.randn(_rows(BWD_MAX_ROWS), 8), torch.randn(_rows(BWD_MAX_ROWS), 16)
    idx = torch.randint(0, codes.shape[0], (WORK // 16 + 1,))  # embedding: WORK elements
    g = torch.randn(idx.shape[0], 16)
    k_big = EMB_BWD_SMEM // (bs * 4) + 8  # the backward's codebook gradient above its shared memory
    codes_big = torch.randint(0, k_big, (codes.shape[0], 4), dtype=torch.int32)
    return [
        ("pq_decode", lambda: ops.pq_decode(codes, shape=(codes.shape[0], 16), centroids=c)),
        ("pq act fake-quant", lambda: ops.pq_linear(x, small, c, act_bits=4, act_granularity="token", path="tile")),
        ("pq_linear gemv rows", lambda: ops.pq_linear(xg, small, c, path="lut")),
        ("pq_linear tile rows, three output tiles", lambda: ops.pq_linear(xt, wide, c, path="tile")),
        ("pq_linear_backward rows", lambda: ops.pq_linear_backward(gy, xb, small, c)),
        ("pq_embedding", lambda: ops.pq_embedding(idx, codes, centroids=c)),
        ("pq_embedding_backward, shared memory", lambda: ops.pq_embedding_backward(g, idx, codes, k)),
        ("pq_embedding_backward, global memory", lambda: ops.pq_embedding_backward(g, idx, codes_big, k_big)),
    ]


def _kmeans_cases() -> list[tuple[str, Callable[[], object]]]:
    x, c = torch.randn(2, WORK, 4), torch.randn(2, 5, 4)
    codes = torch.randint(0, 5, (2, WORK))
    xw, hw = torch.randn(1, WORK + 1, 3), torch.rand(1, 2, 3) + 0.1  # 2 groups, diagonal H
    codes_w = torch.randint(0, 5, (1, WORK + 1))
    return [
        ("kmeans_assign", lambda: ops.kmeans_assign(x, c)),
        ("kmeans_update", lambda: ops.kmeans_update(x, codes, 5)),
        ("kmeans_update_weighted", lambda: ops.kmeans_update_weighted(xw, codes_w, hw, 5)),
    ]


CASES = _block_noise_cases() + _pq_cases() + _kmeans_cases()
# Bit-identical on both devices; the others sum in another order (float atomics, other kernels).
EXACT = {"block_noise drop", "block_noise centroid", "block_noise_backward", "pq_decode", "pq_embedding"}


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_grid_stride_kernels_take_several_steps(case, monkeypatch):
    name, run = case
    expected = run()
    monkeypatch.setenv("QN_EMU_GRID_STRIDE_CAP", str(GRID_STRIDE_CAP))
    with cuda_emulation():
        got = run()
    tol = {"rtol": 0, "atol": 0} if name in EXACT else {"rtol": 1e-4, "atol": 1e-4}
    torch.testing.assert_close(got, expected, **tol, msg=lambda m: f"{name}: {m}")


def test_a_bad_grid_stride_cap_is_an_error(monkeypatch):
    monkeypatch.setenv("QN_EMU_GRID_STRIDE_CAP", "0")
    with cuda_emulation(), pytest.raises(RuntimeError, match="QN_EMU_GRID_STRIDE_CAP must be a positive integer"):
        ops.pq_decode(torch.zeros(2, 1, dtype=torch.uint8), shape=(2, 4), centroids=torch.randn(1, 4))
