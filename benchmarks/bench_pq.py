"""PQ matmul and embedding against dense torch on the decoded weight, fairseq's decode-every-forward,
and AQLM's CPU kernel when installed. 4096x4096, block 8, K=256, fp32 activations."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from quantnoise_kernels import ops, reference

OUT = IN = 4096
BS, K = 8, 256
BATCHES = [1, 16, 256]


def _setup():
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, K, (OUT, IN // BS), dtype=torch.uint8, generator=g)
    centroids = torch.randn(K, BS, generator=g)
    return codes, centroids


def _bytes_held(codes, centroids_fp16, bias):
    return codes.numel() * codes.element_size() + centroids_fp16.numel() * 2 + bias.numel() * bias.element_size()


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("impl", ["pq_linear", "dense", "fairseq", "aqlm"])
def test_pq_linear(benchmark, batch, impl):
    """Targets: batch 1 >= 8x faster than dense fp32 F.linear, batch 16 >= 2x, batch 256 within 1.3x."""
    codes, centroids = _setup()
    bias = torch.randn(OUT)
    x = torch.randn(batch, IN)
    benchmark.group = f"pq_linear {OUT}x{IN} bs={BS} K={K} batch {batch}"
    benchmark.extra_info["role"] = "ours" if impl == "pq_linear" else "baseline"
    if impl == "pq_linear":
        packed = ops.pq_pack_codes(codes)
        c16 = centroids.half()  # what PQLinear holds
        benchmark.extra_info["bytes_held"] = _bytes_held(codes, c16, bias)
        benchmark.extra_info["bytes_dense_fp32"] = OUT * IN * 4 + OUT * 4
        fn = lambda: ops.pq_linear(x, packed, c16, bias, codes_transposed=True)  # noqa: E731
    elif impl == "dense":
        w = ops.pq_decode(codes, centroids, (OUT, IN))
        fn = lambda: F.linear(x, w, bias)  # noqa: E731
    elif impl == "fairseq":
        if batch == 256:
            pytest.skip("decode-every-forward at batch 256 only adds the decode to dense")
        assignments = codes.t().reshape(-1).long()  # fairseq's order: block index first, then row
        fn = lambda: reference.pq_linear_fairseq(x, centroids, assignments, bias, OUT)  # noqa: E731
    else:
        if batch == 256:
            pytest.skip("AQLM's CPU kernel loops over rows one GEMV at a time: batch 256 takes minutes")
        layer = _aqlm_layer(codes, centroids, bias)
        benchmark.extra_info["role"] = "baseline"
        fn = lambda: layer(x)  # noqa: E731
        with torch.no_grad():  # warm-up: numba compiles the kernel on the first call (seconds)
            # Same product, so the error should be fp32 rounding (|y| ~ 64). It is recorded, not
            # asserted: AQLM's numba kernel accumulates `output[i] +=` inside a prange over input
            # groups, a data race across threads, and its output varies from call to call.
            expected = F.linear(x, ops.pq_decode(codes, centroids, (OUT, IN)), bias)
            benchmark.extra_info["max_abs_err"] = float((fn() - expected).abs().max())
    with torch.no_grad():
        benchmark(fn)


def _aqlm_layer(codes, centroids, bias):
    """AQLM's ``QuantizedLinear`` in format "1x8" (one codebook of 256 groups of 8 inputs) holding
    exactly our codes and centroids (scales 1), so it computes the same product. Optional extra:
    ``make bench-extras``; its CPU kernel is numba (one LUT GEMV per row, numba threads = torch's)."""
    aqlm = pytest.importorskip("aqlm")
    numba = pytest.importorskip("numba")
    numba.set_num_threads(min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))
    layer = aqlm.QuantizedLinear(
        IN, OUT, in_group_size=BS, out_group_size=1, num_codebooks=1, nbits_per_codebook=8, bias=True
    )
    with torch.no_grad():
        layer.codes.copy_(codes.view(torch.int8).reshape(OUT, IN // BS, 1))  # int8 storage of the uint8 codes
        layer.codebooks.copy_(centroids.reshape(1, K, 1, BS))
        layer.scales.fill_(1.0)
        layer.bias.copy_(bias)
    return layer


@pytest.mark.parametrize("impl", ["pq_embedding", "dense"])
def test_pq_embedding(benchmark, impl):
    """pq_embedding decodes only the rows looked up; dense F.embedding reads the fp32 table."""
    n, dim = 50000, 1024
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, K, (n, dim // BS), dtype=torch.uint8, generator=g)
    centroids = torch.randn(K, BS, generator=g)
    idx = torch.randint(0, n, (32, 128), generator=g)
    benchmark.group = f"pq_embedding {n}x{dim} bs={BS} K={K}, 4096 lookups"
    benchmark.extra_info["role"] = "ours" if impl == "pq_embedding" else "baseline"
    if impl == "pq_embedding":
        c16 = centroids.half()
        benchmark.extra_info["bytes_held"] = codes.numel() + c16.numel() * 2
        benchmark.extra_info["bytes_dense_fp32"] = n * dim * 4
        benchmark(lambda: ops.pq_embedding(idx, codes, c16, out_dtype=torch.float32))
    else:
        w = ops.pq_decode(codes, centroids, (n, dim))
        benchmark(lambda: F.embedding(idx, w))
