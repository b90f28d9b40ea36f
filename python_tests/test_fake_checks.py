"""Every fake kernel runs the real kernel's argument checks: same exception type, same message.

Each case is one bad argument. The op runs once on CPU tensors (the C++ checks, csrc/checks.cpp) and once
under ``FakeTensorMode`` and on the ``meta`` device (the Python mirror, quantnoise_kernels/ops/_checks.py,
which is what ``torch.compile`` runs); the three errors must be identical.
"""

from __future__ import annotations

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import quantnoise_kernels  # noqa: F401  (registers the ops and the fake kernels)

OPS = torch.ops.quantnoise
U8, I8 = torch.uint8, torch.int8


def _seed(*shape, dtype=torch.int64):
    return torch.full(shape, 3, dtype=dtype)


def _block_noise(weight=None, seed=None, p=0.5, block_size=4, noise="drop", centroids=None, rescale=True):
    weight = torch.randn(4, 8) if weight is None else weight
    seed = _seed() if seed is None else seed
    return OPS.block_noise.default, (weight, seed, p, block_size, 0, rescale, True, noise, centroids)


def _noisy_linear(x=None, weight=None, bias=None, block_size=4, p=0.5):
    x = torch.randn(3, 8) if x is None else x
    weight = torch.randn(5, 8) if weight is None else weight
    return OPS.noisy_linear.default, (x, weight, bias, _seed(), p, block_size)


def _noisy_linear_bw(grad=None, weight=None):
    grad = torch.randn(3, 5) if grad is None else grad
    weight = torch.randn(5, 8) if weight is None else weight
    return OPS.noisy_linear_backward_input.default, (grad, weight, _seed(), 0.5, 4)


def _kmeanspp_init(x=None, first=None, uniforms=None):
    x = torch.randn(1, 4, 2) if x is None else x
    first = _seed(1) if first is None else first
    uniforms = torch.rand(1, 3, dtype=torch.float64) if uniforms is None else uniforms
    return OPS.kmeanspp_init.default, (x, first, uniforms)


def _kmeanspp_step(dmin=None, centroid=None):
    dmin = torch.zeros(1, 4) if dmin is None else dmin
    centroid = torch.zeros(1, 2) if centroid is None else centroid
    return OPS.kmeanspp_step.default, (torch.randn(1, 4, 2), dmin, centroid)


def _kmeanspp_sample(dmin=None, chunk_weights=None, target=None):
    dmin = torch.zeros(1, 4) if dmin is None else dmin
    chunk_weights = torch.zeros(1, 1, dtype=torch.float64) if chunk_weights is None else chunk_weights
    target = torch.zeros(1, dtype=torch.float64) if target is None else target
    return OPS.kmeanspp_sample.default, (dmin, chunk_weights, target)


def _codes(out=4, n_blocks=2, dtype=U8):
    return torch.randint(0, 8, (out, n_blocks)).to(dtype)


def _pq_decode(codes=None, centroids=None, shape=(4, 16), scale=None, zp=None, out_dtype=None):
    codes = _codes() if codes is None else codes
    centroids = torch.randn(8, 8) if centroids is None else centroids
    return OPS.pq_decode.default, (codes, centroids, list(shape), scale, zp, False, out_dtype)


def _pq_linear(x=None, codes=None, bias=None, act_bits=0, granularity="tensor", path="auto", transposed=False):
    x = torch.randn(2, 16) if x is None else x
    codes = _codes() if codes is None else codes
    return OPS.pq_linear.default, (
        x,
        codes,
        torch.randn(8, 8),
        bias,
        None,
        None,
        transposed,
        act_bits,
        granularity,
        path,
    )


def _pq_embedding(indices=None, codes=None, centroids=None, out_dtype=None):
    indices = torch.tensor([0, 3]) if indices is None else indices
    codes = _codes() if codes is None else codes
    centroids = torch.randn(8, 8) if centroids is None else centroids
    return OPS.pq_embedding.default, (indices, codes, centroids, None, None, out_dtype)


def _pq_linear_bw(grad=None, x=None, centroids=None, input_grad=True, centroids_grad=True):
    grad = torch.randn(2, 4) if grad is None else grad
    x = torch.randn(2, 16) if x is None else x
    centroids = torch.randn(8, 8) if centroids is None else centroids
    scale = torch.ones(1) if centroids.dtype == I8 else None
    return OPS.pq_linear_backward.default, (
        grad,
        x,
        _codes(),
        centroids,
        scale,
        None,
        False,
        input_grad,
        centroids_grad,
    )


def _pq_embedding_bw(grad=None, indices=None, codes=None, n_centroids=8):
    grad = torch.randn(2, 16) if grad is None else grad
    indices = torch.tensor([0, 3]) if indices is None else indices
    codes = _codes() if codes is None else codes
    return OPS.pq_embedding_backward.default, (grad, indices, codes, n_centroids)


CASES = {
    "block_noise noise": lambda: _block_noise(noise="gauss"),
    "block_noise weight dtype": lambda: _block_noise(weight=torch.zeros(4, 8, dtype=torch.int32)),
    "block_noise weight rank": lambda: _block_noise(weight=torch.randn(8)),
    "block_noise block_size 0": lambda: _block_noise(block_size=0),
    "block_noise block_size divides": lambda: _block_noise(weight=torch.randn(4, 3, 3), block_size=2),
    "block_noise p negative": lambda: _block_noise(p=-0.25),
    "block_noise p nan": lambda: _block_noise(p=float("nan")),
    "block_noise p 1 with rescale": lambda: _block_noise(p=1.0),
    "block_noise seed dtype": lambda: _block_noise(seed=_seed(dtype=torch.int32)),
    "block_noise seed numel": lambda: _block_noise(seed=_seed(2)),
    "block_noise centroids for drop": lambda: _block_noise(centroids=torch.randn(4, 4)),
    "block_noise centroids missing": lambda: _block_noise(noise="centroid"),
    "block_noise centroids shape": lambda: _block_noise(noise="centroid", centroids=torch.randn(4, 2)),
    "block_noise centroids dtype": lambda: _block_noise(noise="centroid", centroids=torch.randn(4, 4).double()),
    "noisy_linear weight rank": lambda: _noisy_linear(weight=torch.randn(5, 2, 4)),
    "noisy_linear block_size": lambda: _noisy_linear(block_size=3),
    "noisy_linear input dtype": lambda: _noisy_linear(x=torch.randn(3, 8).double()),
    "noisy_linear input shape": lambda: _noisy_linear(x=torch.randn(3, 7)),
    "noisy_linear bias dtype": lambda: _noisy_linear(bias=torch.zeros(5, dtype=torch.float16)),
    "noisy_linear bias shape": lambda: _noisy_linear(bias=torch.zeros(4)),
    "noisy_linear p": lambda: _noisy_linear(p=2.0),
    "noisy_linear_backward weight rank": lambda: _noisy_linear_bw(weight=torch.randn(40)),
    "noisy_linear_backward grad shape": lambda: _noisy_linear_bw(grad=torch.randn(3, 8)),
    "kmeans_assign x dtype": lambda: (OPS.kmeans_assign.default, (torch.zeros(1, 4, 2).double(), torch.randn(1, 2, 2))),
    "kmeans_assign c dtype": lambda: (OPS.kmeans_assign.default, (torch.randn(1, 4, 2), torch.zeros(1, 2, 2).int())),
    "kmeans_assign x rank": lambda: (OPS.kmeans_assign.default, (torch.randn(4, 2), torch.randn(1, 2, 2))),
    "kmeans_assign c rank": lambda: (OPS.kmeans_assign.default, (torch.randn(1, 4, 2), torch.randn(2, 2))),
    "kmeans_assign batch": lambda: (OPS.kmeans_assign.default, (torch.randn(2, 4, 2), torch.randn(1, 2, 2))),
    "kmeans_assign dim": lambda: (OPS.kmeans_assign.default, (torch.randn(1, 4, 2), torch.randn(1, 2, 3))),
    "kmeans_assign K": lambda: (OPS.kmeans_assign.default, (torch.randn(1, 4, 1), torch.randn(1, 65537, 1))),
    "kmeans_assign K 0": lambda: (OPS.kmeans_assign.default, (torch.randn(1, 4, 1), torch.randn(1, 0, 1))),
    "kmeans_update x dtype": lambda: (OPS.kmeans_update.default, (torch.zeros(1, 4, 2).double(), _seed(1, 4), 2)),
    "kmeans_update codes dtype": lambda: (OPS.kmeans_update.default, (torch.randn(1, 4, 2), _seed(1, 4).int(), 2)),
    "kmeans_update x rank": lambda: (OPS.kmeans_update.default, (torch.randn(4, 2), _seed(1, 4), 2)),
    "kmeans_update codes shape": lambda: (OPS.kmeans_update.default, (torch.randn(1, 4, 2), _seed(1, 3), 2)),
    "kmeans_update K": lambda: (OPS.kmeans_update.default, (torch.randn(1, 4, 2), _seed(1, 4), 65537)),
    "kmeanspp_init x dtype": lambda: _kmeanspp_init(x=torch.zeros(1, 4, 2).double()),
    "kmeanspp_init x rank": lambda: _kmeanspp_init(x=torch.randn(4, 2)),
    "kmeanspp_init first dtype": lambda: _kmeanspp_init(first=torch.zeros(1, dtype=torch.int32)),
    "kmeanspp_init uniforms dtype": lambda: _kmeanspp_init(uniforms=torch.rand(1, 3)),
    "kmeanspp_init first shape": lambda: _kmeanspp_init(first=_seed(2)),
    "kmeanspp_init uniforms shape": lambda: _kmeanspp_init(uniforms=torch.rand(3, dtype=torch.float64)),
    "kmeanspp_init K": lambda: _kmeanspp_init(uniforms=torch.rand(1, 65536, dtype=torch.float64)),
    "kmeanspp_init N 0": lambda: _kmeanspp_init(x=torch.randn(1, 0, 2)),
    "kmeanspp_step dmin dtype": lambda: _kmeanspp_step(dmin=torch.zeros(1, 4).double()),
    "kmeanspp_step centroid dtype": lambda: _kmeanspp_step(centroid=torch.zeros(1, 2).int()),
    "kmeanspp_step dmin shape": lambda: _kmeanspp_step(dmin=torch.zeros(1, 5)),
    "kmeanspp_step centroid shape": lambda: _kmeanspp_step(centroid=torch.zeros(1, 3)),
    "kmeanspp_sample dmin dtype": lambda: _kmeanspp_sample(dmin=torch.zeros(1, 4).double()),
    "kmeanspp_sample weights dtype": lambda: _kmeanspp_sample(chunk_weights=torch.zeros(1, 1)),
    "kmeanspp_sample target dtype": lambda: _kmeanspp_sample(target=torch.zeros(1)),
    "kmeanspp_sample dmin rank": lambda: _kmeanspp_sample(dmin=torch.zeros(4)),
    "kmeanspp_sample weights shape": lambda: _kmeanspp_sample(chunk_weights=torch.zeros(1, 2, dtype=torch.float64)),
    "kmeanspp_sample target shape": lambda: _kmeanspp_sample(target=torch.zeros(2, dtype=torch.float64)),
    "pq_decode codes dtype": lambda: _pq_decode(codes=_codes(dtype=torch.int64)),
    "pq_decode codes rank": lambda: _pq_decode(codes=torch.zeros(8, dtype=U8)),
    "pq_decode centroids dtype": lambda: _pq_decode(centroids=torch.zeros(8, 8, dtype=torch.int32)),
    "pq_decode centroids rank": lambda: _pq_decode(centroids=torch.randn(64)),
    "pq_decode centroids empty": lambda: _pq_decode(centroids=torch.randn(0, 8)),
    "pq_decode int8 without scale": lambda: _pq_decode(centroids=torch.zeros(8, 8, dtype=I8)),
    "pq_decode scale for float": lambda: _pq_decode(scale=torch.ones(1)),
    "pq_decode scale numel": lambda: _pq_decode(centroids=torch.zeros(8, 8, dtype=I8), scale=torch.ones(3)),
    "pq_decode zero point numel": lambda: _pq_decode(
        centroids=torch.zeros(8, 8, dtype=I8), scale=torch.ones(1), zp=torch.ones(2, 4)
    ),
    "pq_decode shape": lambda: _pq_decode(shape=(4, 15)),
    "pq_decode shape out": lambda: _pq_decode(shape=(5, 16)),
    "pq_decode shape rank": lambda: _pq_decode(shape=(64,)),
    "pq_decode out_dtype": lambda: _pq_decode(out_dtype=torch.int32),
    "pq_linear x dtype": lambda: _pq_linear(x=torch.zeros(2, 16, dtype=torch.int32)),
    "pq_linear x rank": lambda: _pq_linear(x=torch.tensor(1.0)),
    "pq_linear x features": lambda: _pq_linear(x=torch.randn(2, 15)),
    "pq_linear bias dtype": lambda: _pq_linear(bias=torch.zeros(4, dtype=torch.int64)),
    "pq_linear bias shape": lambda: _pq_linear(bias=torch.zeros(3)),
    "pq_linear act_bits": lambda: _pq_linear(act_bits=1),
    "pq_linear act_granularity": lambda: _pq_linear(act_bits=8, granularity="row"),
    "pq_linear path": lambda: _pq_linear(path="fast"),
    "pq_linear transposed codes rank": lambda: _pq_linear(codes=torch.zeros(2, 4, 1, dtype=U8), transposed=True),
    "pq_embedding indices dtype": lambda: _pq_embedding(indices=torch.tensor([0.0, 1.0])),
    "pq_embedding codes dtype": lambda: _pq_embedding(codes=_codes(dtype=torch.int16)),
    "pq_embedding out_dtype": lambda: _pq_embedding(out_dtype=torch.int64),
    "pq_linear_backward grad dtype": lambda: _pq_linear_bw(grad=torch.zeros(2, 4, dtype=torch.int64)),
    "pq_linear_backward grad shape": lambda: _pq_linear_bw(grad=torch.randn(2, 5)),
    "pq_linear_backward grad rank": lambda: _pq_linear_bw(grad=torch.tensor(1.0)),
    "pq_linear_backward x missing": lambda: (lambda op, a: (op, (a[0], None, *a[2:])))(*_pq_linear_bw()),
    "pq_linear_backward int8 centroids": lambda: _pq_linear_bw(centroids=torch.zeros(8, 8, dtype=I8)),
    "pq_linear_backward x dtype": lambda: _pq_linear_bw(x=torch.zeros(2, 16, dtype=torch.int32)),
    "pq_linear_backward x shape": lambda: _pq_linear_bw(x=torch.randn(3, 16)),
    "pq_embedding_backward codes dtype": lambda: _pq_embedding_bw(codes=_codes(dtype=torch.int16)),
    "pq_embedding_backward codes rank": lambda: _pq_embedding_bw(codes=torch.zeros(4, dtype=U8)),
    "pq_embedding_backward n_centroids": lambda: _pq_embedding_bw(n_centroids=0),
    "pq_embedding_backward grad dtype": lambda: _pq_embedding_bw(grad=torch.zeros(2, 16, dtype=torch.int32)),
    "pq_embedding_backward grad shape": lambda: _pq_embedding_bw(grad=torch.randn(2, 15)),
    "pq_embedding_backward grad rank": lambda: _pq_embedding_bw(grad=torch.randn(2, 1, 16)),
    "pq_embedding_backward indices dtype": lambda: _pq_embedding_bw(indices=torch.tensor([0.0, 1.0])),
}


def _error(fn) -> tuple[type, str]:
    try:
        fn()
    except (ValueError, TypeError, RuntimeError) as error:
        return type(error), str(error)
    raise AssertionError("no error raised")


def _convert(args, to):
    return tuple(to(a) if isinstance(a, torch.Tensor) else a for a in args)


@pytest.mark.parametrize("case", list(CASES))
def test_fake_kernel_raises_the_cpu_kernels_error(case):
    op, args = CASES[case]()
    real = _error(lambda: op(*args))
    assert real[0] in (ValueError, TypeError), real
    mode = FakeTensorMode()
    fake_args = _convert(args, mode.from_tensor)
    with mode:
        fake = _error(lambda: op(*fake_args))
    assert fake == real
    # a seed stays on the CPU (the kernels read it there); everything else goes to the meta device
    meta_args = _convert(args, lambda t: t if t.dim() == 0 and t.dtype == torch.int64 else t.to("meta"))
    assert _error(lambda: op(*meta_args)) == (real[0], real[1].replace(" cpu", " meta"))
