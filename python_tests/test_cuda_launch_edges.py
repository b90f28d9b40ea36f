"""The CUDA kernels at their launch constants' edges, on every device (CPU as the control).

Sizes come from the kernels' own constants, parsed from csrc/cuda/*.cuh (launch_constants.py), so
they follow the constants when those change; the other dimensions are small, so each emulated case
takes about a second. What other files already cover is not repeated here: kmeans_assign_weighted's
centroid tiles (test_kmeans_weighted.py), kmeanspp's partial last chunk (N = 2100 in
test_kmeanspp.py and test_cuda_vs_cpu.py), noisy_linear's CPU chunks that start mid-Philox-group
(test_noisy_linear.py), pq_linear_backward's row chunks (M = 17, 33 in test_pq_backward.py), and a
second grid-stride step of every grid-stride kernel (test_cuda_grid_stride.py).

- pq_linear: more than one input tile of the gemv kernel (kGemvInTile, the last partial), more than
  one row and output tile of the tiled GEMM (kTileM, kTileN), a codebook above kGemvMaxSmemC that
  the gemv kernel reads from global memory;
- kmeans_assign: three shared-memory centroid tiles (kKMeansAssignSmemBytes), the last partial,
  with exact ties across tiles (the lowest index wins);
- pq_linear_backward: K in slices of bins (above kBwdSmemBytes for one row, the last slice partial)
  and fewer rows per chunk than kBwdMaxRows;
- pq_embedding_backward: the codebook gradient above kEmbBwdSmemBytes, accumulated in global memory;
- block_noise: centroid noise with a codebook above kCentroidMaxSmemC (read from global memory),
  and ``rows`` whose row length starts rows in the middle of a Philox group of four blocks.
"""

from __future__ import annotations

import pytest
import torch
from devices import device_params
from launch_constants import constant

from quantnoise_kernels import ops, reference

PQ = "pq_linear_kernels.cuh"
GEMV_IN_TILE = constant(PQ, "kGemvInTile")
GEMV_MAX_SMEM_C = constant(PQ, "kGemvMaxSmemC")
TILE_M, TILE_N = constant(PQ, "kTileM"), constant(PQ, "kTileN")
KMEANS_SMEM = constant("kmeans_kernels.cuh", "kKMeansAssignSmemBytes")
BWD_MAX_ROWS = constant("pq_linear_backward_kernels.cuh", "kBwdMaxRows")
BWD_SMEM = constant("pq_linear_backward_kernels.cuh", "kBwdSmemBytes")
EMB_BWD_SMEM = constant("pq_embedding_kernels.cuh", "kEmbBwdSmemBytes")
CENTROID_MAX_SMEM_C = constant("block_noise_kernels.cuh", "kCentroidMaxSmemC")
PHILOX_LANES = 4  # blocks per Philox draw (reference.block_noise_mask)

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


@pytest.mark.parametrize("device", device_params())
def test_kmeans_assign_across_centroid_tiles_with_ties(device):
    """Three centroid tiles of the CUDA kernel (kmeans_assign_tile_k: KMEANS_SMEM / 4 / (D + 1)
    centroids), the last partial. Integer data: every score is exact and ties abound; centroids 0
    and ``tile_k + 5`` (unique values) have copies in later tiles, which must never win."""
    dim = 4
    tile_k = KMEANS_SMEM // 4 // (dim + 1)
    k = 2 * tile_k + tile_k // 3
    x, c = torch.randint(-3, 4, (2, 300, dim)).float(), torch.randint(-6, 7, (2, k, dim)).float()
    c[:, 0], c[:, tile_k + 5] = 10.0, -10.0
    c[:, tile_k], c[:, -1], c[:, -2] = c[:, 0], c[:, 0], c[:, tile_k + 5]
    x[:, :20], x[:, 20:40] = c[:, :1], c[:, tile_k + 5 : tile_k + 6]
    codes, dist = ops.kmeans_assign(x.to(device), c.to(device))
    ref_codes, ref_dist = reference.kmeans_assign(x, c)
    assert torch.equal(codes.cpu(), ref_codes) and torch.equal(dist.cpu(), ref_dist)
    assert (ref_codes[:, :20] == 0).all() and (ref_codes[:, 20:40] == tile_k + 5).all()


def _pq_linear_grads(g: torch.Tensor, x: torch.Tensor, codes: torch.Tensor, c: torch.Tensor) -> tuple:
    """(grad_x, grad_centroids) by autograd through decode + F.linear, in float64."""
    xx, cc = x.double().requires_grad_(), c.double().requires_grad_()
    reference.pq_linear(xx, codes, cc).backward(g.double())
    return xx.grad, cc.grad


# (name, M rows, out, in, block size, K): pq_linear_backward's tiling (pq_bwd_tiling).
BWD_CASES = [
    # All K bins of one row no longer fit: one row per chunk, K in three slices, the last partial.
    ("K in slices", 3, 24, 16, 4, BWD_SMEM // 4 + 100),
    # The bins of kBwdMaxRows rows do not fit: fewer rows per chunk, and a partial last chunk.
    ("fewer rows per chunk", 2 * BWD_MAX_ROWS + 3, 24, 16, 4, BWD_SMEM // (4 * (BWD_MAX_ROWS + 1)) + 40),
]


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("case", BWD_CASES, ids=[c[0] for c in BWD_CASES])
def test_pq_linear_backward_bin_tiling(device, case):
    _, m, out, inf, bs, k = case
    rows = min(BWD_MAX_ROWS, (BWD_SMEM // k - 4) // 4)  # pq_bwd_tiling<float>(K).rows
    assert (rows <= 0) if case[0] == "K in slices" else (0 < rows < BWD_MAX_ROWS)
    codes = torch.randint(0, k, (out, inf // bs), dtype=torch.int32)
    codes[:, 0] = torch.arange(out) * (k // out)  # codes in every slice
    c, x, g = torch.randn(k, bs), torch.randn(m, inf), torch.randn(m, out)
    gx, gc = ops.pq_linear_backward(g.to(device), x.to(device), codes.to(device), c.to(device))
    rx, rc = _pq_linear_grads(g, x, codes, c)
    torch.testing.assert_close(gx.cpu().double(), rx, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(gc.cpu().double(), rc, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("device", device_params())
def test_pq_embedding_backward_codebook_gradient_in_global_memory(device):
    bs = 4
    k = EMB_BWD_SMEM // (bs * 4) + 37  # float32 bins above kEmbBwdSmemBytes
    codes = torch.randint(0, k, (50, 3), dtype=torch.int32)
    codes[:, 0] = torch.arange(50) * (k // 50)
    idx, g = torch.randint(0, 50, (6, 9)), torch.randn(6, 9, 3 * bs)
    gc = ops.pq_embedding_backward(g.to(device), idx.to(device), codes.to(device), k)
    cc = torch.zeros(k, bs, dtype=torch.float64, requires_grad=True)
    reference.pq_embedding(idx, codes, cc).backward(g.double())
    torch.testing.assert_close(gc.cpu().double(), cc.grad, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("device", device_params())
def test_centroid_noise_codebook_in_global_memory(device):
    bs = 8
    k = CENTROID_MAX_SMEM_C // (bs * 4) + 23  # float32 codebook above kCentroidMaxSmemC
    w, c = torch.randn(40, 16), torch.randn(k, bs)
    c[k - 1] = w[0, :bs]  # block 0's nearest centroid: in the last part of the codebook
    out = ops.block_noise(w.to(device), 1.0, bs, 7, noise="centroid", centroids=c.to(device))
    torch.testing.assert_close(out.cpu(), reference.block_noise_centroid(w, 1.0, bs, 7, c), rtol=0, atol=0)
    assert torch.equal(out.cpu()[0, :bs], c[k - 1])


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("noise", ["drop", "centroid"])
def test_block_noise_rows_start_mid_philox_group(device, noise):
    """``rows`` of a weight whose rows hold 5 blocks of 3: rows start in the middle of a Philox group
    of PHILOX_LANES blocks, and a CUDA thread block's 256 elements end in the middle of a block.
    Noising gathered rows must equal gathering the noised whole weight."""
    bs, per_row = 3, 5
    assert per_row % PHILOX_LANES != 0
    whole = torch.randn(90, per_row * bs)
    rows = torch.tensor([1, 77, 2, 2, 30, 89, 0, 5] * 9)
    c = torch.randn(6, bs)
    if noise == "drop":
        expected = reference.block_noise(whole, 0.5, bs, 123, offset=1)[rows]
    else:
        expected = reference.block_noise_centroid(whole, 0.5, bs, 123, c, offset=1)[rows]
    kw = {"noise": "centroid", "centroids": c.to(device)} if noise == "centroid" else {}
    got = ops.block_noise(whole[rows].to(device), 0.5, bs, 123, offset=1, rows=rows.to(device), **kw)
    assert torch.equal(got.cpu(), expected)
