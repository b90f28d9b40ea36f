"""Bad-input matrix, the eight ops (issue 13): block_noise, noisy_linear, kmeans_assign, kmeans_update,
kmeanspp_init, pq_decode, pq_linear, pq_embedding. Each case: a clear error naming the argument, or the reference's
result; inputs unchanged.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from bad_inputs import Case, run_case

from quantnoise_kernels import ops, reference

META = "meta"
NAN, INF = float("nan"), float("inf")
HUGE = 2**33  # rows past 2**31 and 2**32: sizes must be 64-bit all the way (meta tensors, no memory)


def close(expected_fn):
    """A check: the result equals ``expected_fn(args, kwargs)`` (NaN where the reference has NaN)."""

    def check(result, args, kwargs):
        expected = expected_fn(args, kwargs)
        results = result if isinstance(result, tuple) else (result,)
        expecteds = expected if isinstance(expected, tuple) else (expected,)
        for r, e in zip(results, expecteds):
            assert r.shape == e.shape and r.dtype == e.dtype, (r.shape, e.shape, r.dtype, e.dtype)
            if r.device.type != "meta":
                torch.testing.assert_close(r, e, rtol=1e-5, atol=1e-5, equal_nan=True)

    return check


def meta_shape(*shapes):
    """A check for meta inputs: the outputs have these shapes (the fake kernel's arithmetic, 64-bit)."""

    def check(result, args, kwargs):
        results = result if isinstance(result, tuple) else (result,)
        assert [tuple(r.shape) for r in results] == [tuple(s) for s in shapes]
        assert all(r.device.type == "meta" for r in results)

    return check


def call(fn, *args, **kwargs):
    return lambda: (fn, args, kwargs)


def w(*shape, dtype=torch.float32, device="cpu", fill=None):
    t = torch.randn(*shape, dtype=dtype) if device != META else torch.empty(*shape, dtype=dtype, device=META)
    if fill is not None:
        t.view(-1)[0] = fill
    return t


def u8(*shape, high=4, device="cpu"):
    if device == META:
        return torch.empty(*shape, dtype=torch.uint8, device=META)
    return torch.randint(0, high, shape, dtype=torch.uint8)


def grad_of(fn, *tensors, output: int = 0):
    """The gradient of ``sum(fn()[output] * g)`` for a fixed ``g``, with respect to ``tensors``."""
    out = fn()
    out = out[output] if isinstance(out, tuple) else out
    g = torch.linspace(-1, 1, out.numel()).reshape(out.shape)
    return torch.autograd.grad((out * g).sum(), tensors)


def same_grads(op_fn, ref_fn, n_inputs, output: int = 0):
    """A check for requires_grad inputs: the op's gradients (of its output ``output``) equal the reference's
    (plain torch autograd)."""

    def check(result, args, kwargs):
        inputs = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad][:n_inputs]
        got = grad_of(lambda: op_fn(*args, **kwargs), *inputs, output=output)
        want = grad_of(lambda: ref_fn(*args, **kwargs), *inputs)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)

    return check


# ------------------------------------------------------------------------------------------ block_noise

BN = ops.block_noise


def _bn_ref(args, kwargs):
    weight, p, bs, seed = args
    return reference.block_noise(weight, p, bs, seed)


BLOCK_NOISE = [
    Case(
        "block_noise",
        "dtype",
        "int weight",
        call(BN, torch.ones(4, 8, dtype=torch.int32), 0.5, 4, 1),
        TypeError,
        "weight must be float32",
    ),
    Case(
        "block_noise",
        "rank",
        "1-D weight",
        call(BN, w(8), 0.5, 4, 1),
        ValueError,
        "weight must have at least 2 dimensions",
    ),
    Case(
        "block_noise",
        "shape",
        "block 3 of row 8",
        call(BN, w(4, 8), 0.5, 3, 1),
        ValueError,
        "block_size must divide the row length of weight",
    ),
    Case(
        "block_noise",
        "shape",
        "centroids of block 3",
        call(BN, w(4, 8), 0.5, 4, 1, noise="centroid", centroids=w(5, 3)),
        ValueError,
        r"centroids must have shape \[K, block_size=4\]",
    ),
    Case("block_noise", "range", "p 1.5", call(BN, w(4, 8), 1.5, 4, 1), ValueError, r"p must be in \[0, 1\], got 1.5"),
    Case(
        "block_noise",
        "range",
        "seed 2**64",
        call(BN, w(4, 8), 0.5, 4, 2**64),
        ValueError,
        r"seed must be in \[-2\*\*63, 2\*\*63\)",
    ),
    Case(
        "block_noise",
        "range",
        "noise kind",
        call(BN, w(4, 8), 0.5, 4, 1, noise="gauss"),
        ValueError,
        "noise must be one of",
    ),
    Case(
        "block_noise",
        "type",
        "block_size 4.5",
        call(BN, w(4, 8), 0.5, 4.5, 1),
        TypeError,
        "block_size must be an int, got 4.5",
    ),
    Case(
        "block_noise",
        "type",
        "rescale 'no'",
        call(BN, w(4, 8), 0.5, 4, 1, rescale="no"),
        TypeError,
        "rescale must be a bool",
    ),
    Case(
        "block_noise", "nonfinite", "p NaN", call(BN, w(4, 8), NAN, 4, 1), ValueError, r"p must be in \[0, 1\], got nan"
    ),
    Case(
        "block_noise",
        "nonfinite",
        "NaN and inf weights",
        call(BN, w(4, 8, fill=NAN) * torch.tensor([1, INF] * 4), 0.5, 4, 1),
        check=close(_bn_ref),
    ),
    Case(
        "block_noise",
        "device",
        "seed on meta",
        call(BN, w(4, 8), 0.5, 4, torch.tensor(1, device=META)),
        ValueError,
        "seed must be on the CPU or on cpu, got meta",
    ),
    Case(
        "block_noise",
        "device",
        "centroids on meta",
        call(BN, w(4, 8), 0.5, 4, 1, noise="centroid", centroids=w(5, 4, device=META)),
        ValueError,
        "centroids must be on weight's device cpu, got meta",
    ),
    Case("block_noise", "empty", "no rows", call(BN, w(0, 8), 0.5, 4, 1), check=close(_bn_ref)),
    Case(
        "block_noise", "huge", f"{HUGE} rows", call(BN, w(HUGE, 8, device=META), 0.5, 4, 1), check=meta_shape((HUGE, 8))
    ),
    Case(
        "block_noise",
        "grad",
        "leaf weight",
        call(BN, w(4, 8).requires_grad_(), 0.5, 4, 1),
        check=same_grads(BN, lambda wt, p, bs, s: wt / (1 - p), 1),
    ),
]

# ------------------------------------------------------------------------------------------ noisy_linear

NL = ops.noisy_linear


def _nl_ref(args, kwargs):
    x, weight, bias, p, bs, seed = args
    return F.linear(x, reference.block_noise(weight.detach(), p, bs, seed), bias)


NOISY_LINEAR = [
    Case(
        "noisy_linear",
        "dtype",
        "double input",
        call(NL, w(3, 8, dtype=torch.float64), w(5, 8), None, 0.5, 4, 1),
        TypeError,
        "input must have weight's dtype Float, got Double",
    ),
    Case(
        "noisy_linear",
        "rank",
        "3-D weight",
        call(NL, w(3, 8), w(5, 2, 4), None, 0.5, 4, 1),
        ValueError,
        r"weight must have shape \[out, in\]",
    ),
    Case(
        "noisy_linear",
        "shape",
        "input width 7",
        call(NL, w(3, 7), w(5, 8), None, 0.5, 4, 1),
        ValueError,
        r"input must have shape \[\.\.\., 8\]",
    ),
    Case(
        "noisy_linear",
        "shape",
        "bias of 3",
        call(NL, w(3, 8), w(5, 8), w(3), 0.5, 4, 1),
        ValueError,
        r"bias must have shape \[5\]",
    ),
    Case(
        "noisy_linear",
        "range",
        "p 1 with rescale",
        call(NL, w(3, 8), w(5, 8), None, 1.0, 4, 1),
        ValueError,
        r"p must be in \[0, 1\)",
    ),
    Case(
        "noisy_linear",
        "type",
        "block_size '4'",
        call(NL, w(3, 8), w(5, 8), None, 0.5, "4", 1),
        TypeError,
        "block_size must be an int, got '4'",
    ),
    Case(
        "noisy_linear",
        "nonfinite",
        "inf input",
        call(NL, w(3, 8, fill=INF), w(5, 8), w(5), 0.5, 4, 1),
        check=close(_nl_ref),
    ),
    Case(
        "noisy_linear",
        "device",
        "input on meta",
        call(NL, w(3, 8, device=META), w(5, 8), None, 0.5, 4, 1),
        ValueError,
        "input must be on weight's device cpu, got meta",
    ),
    Case(
        "noisy_linear",
        "device",
        "bias on meta",
        call(NL, w(3, 8), w(5, 8), w(5, device=META), 0.5, 4, 1),
        ValueError,
        r"bias must have shape \[5\] on cpu, got shape \[5\] on meta",
    ),
    Case("noisy_linear", "empty", "no rows", call(NL, w(0, 8), w(5, 8), w(5), 0.5, 4, 1), check=close(_nl_ref)),
    Case(
        "noisy_linear",
        "huge",
        f"{HUGE} rows",
        call(NL, w(HUGE, 8, device=META), w(5, 8, device=META), None, 0.5, 4, 1),
        check=meta_shape((HUGE, 5)),
    ),
    Case(
        "noisy_linear",
        "grad",
        "input and weight",
        call(NL, w(3, 8).requires_grad_(), w(5, 8).requires_grad_(), w(5), 0.5, 4, 1),
        check=same_grads(
            NL,
            lambda x, wt, b, p, bs, s: F.linear(
                x, reference.block_noise(wt.detach(), p, bs, s) + (wt - wt.detach()) / (1 - p), b
            ),
            2,
        ),
    ),
    Case("noisy_linear", "empty", "in_features 0", call(NL, w(3, 0), w(5, 0), w(5), 0.5, 1, 1), check=close(_nl_ref)),
]

# ------------------------------------------------------------------------------------------ k-means ops

KA, KU = ops.kmeans_assign, ops.kmeans_update


def _ka_ref(args, kwargs):
    x, c = (a.detach().double() for a in args[:2])
    codes, dist = reference.kmeans_assign(x, c)  # exact distances in float64: no overflow at 1e20
    return codes, dist.float()


KMEANS_ASSIGN = [
    Case(
        "kmeans_assign",
        "dtype",
        "double x",
        call(KA, w(1, 9, 4, dtype=torch.float64), w(1, 3, 4)),
        TypeError,
        "x must be float32, float16 or bfloat16, got dtype Double",
    ),
    Case(
        "kmeans_assign",
        "dtype",
        "int centroids",
        call(KA, w(1, 9, 4), torch.ones(1, 3, 4, dtype=torch.int32)),
        TypeError,
        "centroids must be float32, float16 or bfloat16, got dtype Int",
    ),
    Case(
        "kmeans_assign",
        "rank",
        "4-D x",
        call(KA, w(1, 1, 9, 4), w(1, 3, 4)),
        ValueError,
        r"x must have 3 dimensions \[B, N, D\]",
    ),
    Case(
        "kmeans_assign",
        "shape",
        "D mismatch",
        call(KA, w(1, 9, 4), w(1, 3, 5)),
        ValueError,
        "centroids must have x's dimension D=4",
    ),
    Case(
        "kmeans_assign",
        "range",
        "K = 0",
        call(KA, w(1, 9, 4), w(1, 0, 4)),
        ValueError,
        "centroids must hold between 1 and 65536 centroids, got K=0",
    ),
    Case(
        "kmeans_assign",
        "range",
        "K = 65537",
        call(KA, w(1, 9, 4, device=META), w(1, 65537, 4, device=META)),
        ValueError,
        "centroids must hold between 1 and 65536 centroids",
    ),
    Case(
        "kmeans_assign",
        "nonfinite",
        "NaN centroid first",
        call(KA, w(1, 9, 4), torch.cat([torch.full((1, 1, 4), NAN), w(1, 4, 4)], 1)),
        check=close(_ka_ref),
    ),
    Case(
        "kmeans_assign",
        "device",
        "centroids on meta",
        call(KA, w(1, 9, 4), w(1, 3, 4, device=META)),
        ValueError,
        "centroids must be on x's device cpu, got meta",
    ),
    Case("kmeans_assign", "empty", "N = 0", call(KA, w(2, 0, 4), w(2, 3, 4)), check=close(_ka_ref)),
    Case(
        "kmeans_assign",
        "huge",
        f"N = {HUGE}",
        call(KA, w(1, HUGE, 4, device=META), w(1, 3, 4, device=META)),
        check=meta_shape((1, HUGE), (1, HUGE)),
    ),
    Case(
        "kmeans_assign",
        "grad",
        "x and centroids",
        call(KA, w(1, 9, 4).requires_grad_(), w(1, 3, 4).requires_grad_()),
        check=same_grads(
            KA,
            lambda x, c: ((x - c[0][reference.kmeans_assign(x.detach(), c.detach())[0][0]].unsqueeze(0)) ** 2).sum(-1),
            2,
            output=1,
        ),
    ),
    Case(
        "kmeans_assign",
        "range",
        "centroid norms 1e20",
        call(KA, w(1, 9, 4) * 1e20, w(1, 5, 4) * 1e20),
        check=close(_ka_ref),
    ),
]


def _ku_ref(args, kwargs):
    x, codes, k = args
    return reference.kmeans_update(x.detach().double(), codes, k)


def _codes(n, k=3, batch=1):
    return torch.randint(0, k, (batch, n))


KMEANS_UPDATE = [
    Case(
        "kmeans_update",
        "dtype",
        "int32 codes",
        call(KU, w(1, 9, 4), _codes(9).int(), 3),
        TypeError,
        "codes must be int64, got dtype Int",
    ),
    Case(
        "kmeans_update",
        "rank",
        "codes 1-D for 3-D x",
        call(KU, w(1, 9, 4), torch.zeros(9, dtype=torch.int64), 3),
        ValueError,
        r"codes must have shape \[B, N\] = \[1, 9\]",
    ),
    Case(
        "kmeans_update",
        "shape",
        "codes of N + 1",
        call(KU, w(1, 9, 4), _codes(10), 3),
        ValueError,
        r"codes must have shape \[B, N\] = \[1, 9\], got \[1, 10\]",
    ),
    Case(
        "kmeans_update",
        "range",
        "code = K",
        call(KU, w(1, 9, 4), torch.full((1, 9), 3), 3),
        ValueError,
        r"codes must lie in \[0, n_centroids=3\), got 3",
    ),
    Case(
        "kmeans_update",
        "range",
        "K = 0",
        call(KU, w(1, 9, 4), _codes(9), 0),
        ValueError,
        r"n_centroids must be in \[1, 65536\], got 0",
    ),
    Case(
        "kmeans_update",
        "type",
        "K = 2.5",
        call(KU, w(1, 9, 4), _codes(9), 2.5),
        TypeError,
        "n_centroids must be an int, got 2.5",
    ),
    Case("kmeans_update", "nonfinite", "NaN x", call(KU, w(1, 9, 4, fill=NAN), _codes(9), 3), check=close(_ku_ref)),
    Case(
        "kmeans_update",
        "device",
        "codes on meta",
        call(KU, w(1, 9, 4), torch.zeros(1, 9, dtype=torch.int64, device=META), 3),
        ValueError,
        "codes must be on x's device cpu, got meta",
    ),
    Case("kmeans_update", "empty", "N = 0", call(KU, w(1, 0, 4), _codes(0), 3), check=close(_ku_ref)),
    Case(
        "kmeans_update",
        "huge",
        f"N = {HUGE}",
        call(KU, w(1, HUGE, 4, device=META), torch.empty(1, HUGE, dtype=torch.int64, device=META), 3),
        check=meta_shape((1, 3, 4), (1, 3)),
    ),
    Case(
        "kmeans_update",
        "grad",
        "x",
        call(KU, w(1, 9, 4).requires_grad_(), _codes(9), 3),
        check=same_grads(KU, lambda x, c, k: torch.zeros(1, k, 4).index_add(1, c[0], x), 1),
    ),
]

KPP = ops.kmeanspp_init


def _kpp_ref(args, kwargs):
    return reference.kmeanspp_init(args[0].detach(), args[1], args[2])


def _u(batch, k, device="cpu"):
    if device == META:
        return torch.empty(batch, k - 1, dtype=torch.float64, device=META)
    return torch.rand(batch, k - 1, dtype=torch.float64)


KMEANSPP_INIT = [
    Case(
        "kmeanspp_init",
        "dtype",
        "double x",
        call(KPP, w(1, 9, 4, dtype=torch.float64), torch.zeros(1, dtype=torch.int64), _u(1, 3)),
        TypeError,
        "x must be float32, float16 or bfloat16, got dtype Double",
    ),
    Case(
        "kmeanspp_init",
        "dtype",
        "float32 uniforms",
        call(KPP, w(1, 9, 4), torch.zeros(1, dtype=torch.int64), torch.rand(1, 2)),
        TypeError,
        "uniforms must be float64, got dtype Float",
    ),
    Case(
        "kmeanspp_init",
        "rank",
        "4-D x",
        call(KPP, w(1, 1, 9, 4), torch.zeros(1, dtype=torch.int64), _u(1, 3)),
        ValueError,
        r"x must have 3 dimensions \[B, N, D\]",
    ),
    Case(
        "kmeanspp_init",
        "shape",
        "first of B + 1",
        call(KPP, w(1, 9, 4), torch.zeros(2, dtype=torch.int64), _u(1, 3)),
        ValueError,
        r"first must have shape \[B\] = \[1\], got \[2\]",
    ),
    Case(
        "kmeanspp_init",
        "range",
        "first = N",
        call(KPP, w(1, 9, 4), torch.tensor([9]), _u(1, 3)),
        ValueError,
        r"first must lie in \[0, N=9\), got values in \[9, 9\]",
    ),
    Case(
        "kmeanspp_init",
        "range",
        "uniform = 1",
        call(KPP, w(1, 9, 4), torch.tensor([0]), torch.ones(1, 2, dtype=torch.float64)),
        ValueError,
        r"uniforms must lie in \[0, 1\), got values in \[1, 1\]",
    ),
    Case(
        "kmeanspp_init",
        "nonfinite",
        "NaN x",
        call(KPP, w(1, 9, 4, fill=NAN), torch.tensor([0]), _u(1, 3)),
        ValueError,
        "x must be finite",
    ),
    Case(
        "kmeanspp_init",
        "device",
        "uniforms on meta",
        call(KPP, w(1, 9, 4), torch.tensor([0]), _u(1, 3, device=META)),
        ValueError,
        "uniforms must be on x's device cpu, got meta",
    ),
    Case(
        "kmeanspp_init",
        "empty",
        "B = 0",
        call(KPP, w(0, 9, 4), torch.zeros(0, dtype=torch.int64), _u(0, 3)),
        check=close(_kpp_ref),
    ),
    Case(
        "kmeanspp_init",
        "huge",
        f"N = {HUGE}",
        call(KPP, w(1, HUGE, 4, device=META), torch.empty(1, dtype=torch.int64, device=META), _u(1, 5, device=META)),
        check=meta_shape((1, 5)),
    ),
    Case(
        "kmeanspp_init",
        "grad",
        "x",
        call(KPP, w(1, 9, 4).requires_grad_(), torch.tensor([2]), _u(1, 4)),
        check=close(_kpp_ref),
    ),
]

# ------------------------------------------------------------------------------------------ PQ ops

PD, PL, PE = ops.pq_decode, ops.pq_linear, ops.pq_embedding


def _pd_ref(args, kwargs):
    return reference.pq_decode(args[0], args[1].detach(), args[2])


def _pl_ref(args, kwargs):
    x, codes, c = args[:3]
    bias = args[3] if len(args) > 3 else None
    return reference.pq_linear(x.detach(), codes, c.detach(), bias, act_bits=kwargs.get("act_bits", 0))


def _pe_ref(args, kwargs):
    return reference.pq_embedding(args[0], args[1], args[2].detach())


PQ_DECODE = [
    Case(
        "pq_decode",
        "dtype",
        "int64 codes",
        call(PD, torch.zeros(5, 2, dtype=torch.int64), w(4, 4), (5, 8)),
        TypeError,
        "codes must be uint8 or int32, got dtype Long",
    ),
    Case(
        "pq_decode",
        "dtype",
        "int32 centroids",
        call(PD, u8(5, 2), torch.ones(4, 4, dtype=torch.int32), (5, 8)),
        TypeError,
        "centroids must be float32, float16, bfloat16, float64 or int8",
    ),
    Case(
        "pq_decode",
        "rank",
        "1-D codes",
        call(PD, u8(10), w(4, 4), (5, 8)),
        ValueError,
        r"codes must be 2-D \[out, n_blocks\]",
    ),
    Case(
        "pq_decode",
        "shape",
        "shape of 9 per row",
        call(PD, u8(5, 2), w(4, 4), (5, 9)),
        ValueError,
        r"shape must be \[out=5, \.\.\.\] with n_blocks \* block_size = 8",
    ),
    Case(
        "pq_decode",
        "range",
        "code = K",
        call(PD, torch.full((5, 2), 4, dtype=torch.uint8), w(4, 4), (5, 8)),
        ValueError,
        r"codes must be in \[0, n_centroids=4\)",
    ),
    Case(
        "pq_decode",
        "range",
        "negative shape",
        call(PD, u8(5, 2), w(4, 4), (5, -8)),
        ValueError,
        r"shape must hold sizes >= 0, got \[5, -8\]",
    ),
    Case(
        "pq_decode",
        "type",
        "shape 'abc'",
        call(PD, u8(5, 2), w(4, 4), "abc"),
        TypeError,
        "shape must be a sequence of ints",
    ),
    Case("pq_decode", "nonfinite", "NaN centroid", call(PD, u8(5, 2), w(4, 4, fill=NAN), (5, 8)), check=close(_pd_ref)),
    Case(
        "pq_decode",
        "device",
        "centroids on meta",
        call(PD, u8(5, 2), w(4, 4, device=META), (5, 8)),
        ValueError,
        "codes and centroids must be on cpu, got cpu and meta",
    ),
    Case("pq_decode", "empty", "out = 0", call(PD, u8(0, 2), w(4, 4), (0, 8)), check=close(_pd_ref)),
    Case(
        "pq_decode",
        "huge",
        f"out = {HUGE}",
        call(PD, u8(HUGE, 2, device=META), w(4, 4, device=META), (HUGE, 8)),
        check=meta_shape((HUGE, 8)),
    ),
    Case(
        "pq_decode",
        "grad",
        "centroids",
        call(PD, u8(5, 2), w(4, 4).requires_grad_(), (5, 8)),
        check=same_grads(PD, lambda c, C, s: C[c.long()].reshape(s), 1),
    ),
]

PQ_LINEAR = [
    Case(
        "pq_linear",
        "dtype",
        "int x",
        call(PL, torch.ones(3, 8, dtype=torch.int32), u8(5, 2), w(4, 4)),
        TypeError,
        "x must be float32, float16, bfloat16 or float64, got dtype Int",
    ),
    Case(
        "pq_linear",
        "dtype",
        "float codes",
        call(PL, w(3, 8), torch.zeros(5, 2), w(4, 4)),
        TypeError,
        "codes must be uint8 or int32, got dtype Float",
    ),
    Case(
        "pq_linear",
        "rank",
        "0-d x",
        call(PL, torch.tensor(1.0), u8(5, 2), w(4, 4)),
        ValueError,
        "x must have at least 1 dimension",
    ),
    Case(
        "pq_linear",
        "shape",
        "x width 7",
        call(PL, w(3, 7), u8(5, 2), w(4, 4)),
        ValueError,
        "x must have in_features = n_blocks \\* block_size = 2 \\* 4 = 8",
    ),
    Case(
        "pq_linear",
        "shape",
        "bias of 3",
        call(PL, w(3, 8), u8(5, 2), w(4, 4), w(3)),
        ValueError,
        r"bias must have shape \[out_features=5\]",
    ),
    Case(
        "pq_linear",
        "range",
        "act_bits 1",
        call(PL, w(3, 8), u8(5, 2), w(4, 4), act_bits=1),
        ValueError,
        r"act_bits must be 0 \(no activation fake-quant\) or in \[2, 16\], got 1",
    ),
    Case(
        "pq_linear",
        "range",
        "code = K",
        call(PL, w(3, 8), torch.full((5, 2), 4, dtype=torch.uint8), w(4, 4)),
        ValueError,
        r"codes must be in \[0, n_centroids=4\)",
    ),
    Case(
        "pq_linear",
        "type",
        "act_bits 8.5",
        call(PL, w(3, 8), u8(5, 2), w(4, 4), act_bits=8.5),
        TypeError,
        "act_bits must be an int, got 8.5",
    ),
    Case("pq_linear", "nonfinite", "NaN x", call(PL, w(3, 8, fill=NAN), u8(5, 2), w(4, 4), w(5)), check=close(_pl_ref)),
    Case(
        "pq_linear",
        "device",
        "bias on meta",
        call(PL, w(3, 8), u8(5, 2), w(4, 4), w(5, device=META)),
        ValueError,
        "bias must be on cpu, got meta",
    ),
    Case(
        "pq_linear",
        "device",
        "codes on meta",
        call(PL, w(3, 8), u8(5, 2, device=META), w(4, 4)),
        ValueError,
        "codes and centroids must be on cpu, got meta and cpu",
    ),
    Case("pq_linear", "empty", "no rows", call(PL, w(0, 8), u8(5, 2), w(4, 4), w(5)), check=close(_pl_ref)),
    Case(
        "pq_linear",
        "huge",
        f"{HUGE} rows",
        call(PL, w(HUGE, 8, device=META), u8(5, 2, device=META), w(4, 4, device=META)),
        check=meta_shape((HUGE, 5)),
    ),
    Case(
        "pq_linear",
        "grad",
        "x and centroids",
        call(PL, w(3, 8).requires_grad_(), u8(5, 2), w(4, 4).requires_grad_()),
        check=same_grads(PL, lambda x, c, C: F.linear(x, C[c.long()].reshape(5, 8)), 2),
    ),
    Case(
        "pq_linear",
        "nonfinite",
        "NaN x, act_bits 8",
        call(PL, w(3, 8, fill=NAN), u8(5, 2), w(4, 4), w(5), act_bits=8),
        check=close(_pl_ref),
    ),
    Case("pq_linear", "empty", "in_features 0", call(PL, w(3, 0), u8(5, 0), w(4, 4), w(5)), check=close(_pl_ref)),
]

PQ_EMBEDDING = [
    Case(
        "pq_embedding",
        "dtype",
        "float indices",
        call(PE, torch.zeros(3), u8(5, 2), w(4, 4)),
        TypeError,
        "indices must be int64 or int32, got dtype Float",
    ),
    Case(
        "pq_embedding",
        "rank",
        "1-D codes",
        call(PE, torch.zeros(3, dtype=torch.int64), u8(10), w(4, 4)),
        ValueError,
        r"codes must be 2-D \[out, n_blocks\]",
    ),
    Case(
        "pq_embedding",
        "shape",
        "1-D centroids",
        call(PE, torch.zeros(3, dtype=torch.int64), u8(5, 2), w(16)),
        ValueError,
        r"centroids must be 2-D \[n_centroids, block_size\]",
    ),
    Case(
        "pq_embedding",
        "range",
        "index 5 of 5 rows",
        call(PE, torch.tensor([0, 5]), u8(5, 2), w(4, 4)),
        ValueError,
        r"indices must be in \[0, num_embeddings=5\), got values in \[0, 5\]",
    ),
    Case(
        "pq_embedding",
        "range",
        "negative index",
        call(PE, torch.tensor([-1]), u8(5, 2), w(4, 4)),
        ValueError,
        r"indices must be in \[0, num_embeddings=5\)",
    ),
    Case(
        "pq_embedding",
        "type",
        "out_dtype int",
        call(PE, torch.zeros(3, dtype=torch.int64), u8(5, 2), w(4, 4), out_dtype=torch.int32),
        TypeError,
        "out_dtype must be a float dtype, got Int",
    ),
    Case(
        "pq_embedding",
        "nonfinite",
        "inf centroid",
        call(PE, torch.tensor([0, 3, 4]), u8(5, 2), w(4, 4, fill=INF)),
        check=close(_pe_ref),
    ),
    Case(
        "pq_embedding",
        "device",
        "codes on meta",
        call(PE, torch.zeros(3, dtype=torch.int64), u8(5, 2, device=META), w(4, 4)),
        ValueError,
        "codes and centroids must be on cpu, got meta and cpu",
    ),
    Case(
        "pq_embedding",
        "empty",
        "no indices",
        call(PE, torch.zeros(0, dtype=torch.int64), u8(5, 2), w(4, 4)),
        check=close(_pe_ref),
    ),
    Case(
        "pq_embedding",
        "huge",
        f"{HUGE} indices",
        call(PE, torch.empty(HUGE, dtype=torch.int64, device=META), u8(5, 2, device=META), w(4, 4, device=META)),
        check=meta_shape((HUGE, 8)),
    ),
    Case(
        "pq_embedding",
        "grad",
        "centroids",
        call(PE, torch.tensor([0, 3, 3]), u8(5, 2), w(4, 4).requires_grad_()),
        check=same_grads(PE, lambda i, c, C: C[c.long()].reshape(5, 8)[i], 1),
    ),
]

CASES = (
    BLOCK_NOISE + NOISY_LINEAR + KMEANS_ASSIGN + KMEANS_UPDATE + KMEANSPP_INIT + PQ_DECODE + PQ_LINEAR + PQ_EMBEDDING
)


def test_every_op_gets_eight_kinds_of_bad_input():
    kinds: dict[str, set[str]] = {}
    for case in CASES:
        kinds.setdefault(case.entry, set()).add(case.kind)
    assert len(kinds) == 8
    assert all(len(k) >= 8 for k in kinds.values()), {e: sorted(k) for e, k in kinds.items()}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case):
    run_case(case)
