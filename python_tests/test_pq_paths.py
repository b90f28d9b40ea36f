"""Every CPU code path of the PQ kernels (QUANTNOISE_CPU_ISA=avx512|avx2|portable) against the reference.

pq_linear's LUT path has a one-row kernel, a kernel for chunks of rows (16 rows on avx512, 8 on avx2 and
portable), two ways to share the work between threads (whole chunks, or input blocks with partial sums),
and the avx512 one-row register kernel; pq_linear_backward has the same three ISA bodies. The cases
cover the row counts around each switch, uint8 and int32 codes, the unrolled block sizes (4, 8, 9, 16)
and a generic one (3), both code layouts. An avx512 case skips, saying so, on a CPU without AVX-512.
Time budget: ~15 s.
"""

from __future__ import annotations

import pytest
import torch
from devices import runnable_cpu_isas

from quantnoise_kernels import ops, reference


def _close(y, ref, rtol=1e-5):
    scale = ref.abs().max().clamp(min=1e-30)
    err = ((y.double() - ref.double()).abs().max() / scale).item()
    assert err <= rtol, f"max error {err:.3e} relative to max |ref|"


# (out, in, block_size, K): unrolled block sizes 4, 8, 9, 16, a generic 3; int32 codes for K > 256.
SHAPES = [(72, 64, 8, 256), (40, 36, 4, 300), (50, 45, 9, 64), (33, 48, 16, 16), (20, 30, 3, 7)]
ROWS = [1, 2, 3, 7, 8, 9, 15, 16, 17, 24, 33, 64]


def _layer(out, inf, bs, K):
    codes = torch.randint(0, K, (out, inf // bs)).to(torch.uint8 if K <= 256 else torch.int32)
    return codes, torch.randn(K, bs)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_pq_linear_every_path_and_row_count(isa, shape):
    codes, c = _layer(*shape)
    packed = ops.pq_pack_codes(codes)
    bias = torch.randn(shape[0])
    for m in ROWS:
        x = torch.randn(m, shape[1])
        ref = reference.pq_linear(x.double(), codes, c.double(), bias.double())
        _close(ops.pq_linear(x, packed, c, bias, codes_transposed=True, path="lut"), ref)
        _close(ops.pq_linear(x, codes, c, bias, path="lut"), ref)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_pq_linear_thread_splits(isa, threads):
    """Outputs split between threads (one row), whole row chunks per thread, or input blocks per thread."""
    codes, c = _layer(1000, 256, 8, 256)
    packed = ops.pq_pack_codes(codes)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for m in (1, 5, 16, 24, 40, 129):
            x = torch.randn(m, 256)
            ref = reference.pq_linear(x.double(), codes, c.double())
            _close(ops.pq_linear(x, packed, c, codes_transposed=True), ref)
    finally:
        torch.set_num_threads(old)


def test_pq_linear_paths_agree_with_fp16_centroids(isa):
    """The layer's storage (fp16 centroids, packed codes) on a 1024 x 512 layer, every batch regime."""
    codes, c = _layer(1024, 512, 8, 256)
    c16 = c.half()
    packed = ops.pq_pack_codes(codes)
    for m in (1, 4, 16, 100):
        x = torch.randn(m, 512)
        _close(
            ops.pq_linear(x, packed, c16, codes_transposed=True), reference.pq_linear(x.double(), codes, c16.double())
        )


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_pq_linear_backward_every_path(isa, shape):
    codes, c = _layer(*shape)
    packed = ops.pq_pack_codes(codes)
    for m in (1, 9, 17, 40):
        x, g = torch.randn(m, shape[1]), torch.randn(m, shape[0])
        gx, gc = ops.pq_linear_backward(g, x, packed, c, codes_transposed=True)
        xx = x.double().requires_grad_()
        cc = c.double().requires_grad_()
        reference.pq_linear(xx, codes, cc).backward(g.double())
        _close(gx, xx.grad)
        _close(gc, cc.grad)


def test_every_path_gives_the_same_product():
    """The paths differ only in summation order: within float32 rounding of each other."""
    codes, c = _layer(300, 128, 8, 256)
    packed = ops.pq_pack_codes(codes)
    x = torch.randn(20, 128)
    outs = []
    with pytest.MonkeyPatch.context() as mp:
        for name in runnable_cpu_isas():
            mp.setenv("QUANTNOISE_CPU_ISA", name)
            outs.append(ops.pq_linear(x, packed, c, codes_transposed=True))
    for y in outs[1:]:
        _close(y, outs[0])
