"""Bad-input matrix, the module-level entry points (issue 13): quant_noise, quant_noise_weight, remove_quant_noise,
kmeans, PQ, PQLinear, PQConv2d, PQEmbedding. Each case: a clear error naming the argument, or the correct result;
inputs (and modules, on failure) unchanged."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from bad_inputs import Case, run_case
from tolerances import assert_close_in_dtype
from torch import nn

import quantnoise_kernels as qn
from quantnoise_kernels import reference
from quantnoise_kernels.pq import PQ, PQConv2d, PQEmbedding, PQLinear

META, NAN, INF = "meta", float("nan"), float("inf")
HUGE = 2**33


def call(fn, *args, **kwargs):
    return lambda: (fn, args, kwargs)


def t(*shape, dtype=torch.float32, fill=None, device="cpu"):
    if device == META:
        return torch.empty(*shape, dtype=dtype, device=META)
    x = torch.randn(*shape).to(dtype)
    if fill is not None:
        x.view(-1)[0] = fill
    return x


def codes(*shape, high=4, device="cpu"):
    if device == META:
        return torch.empty(*shape, dtype=torch.uint8, device=META)
    return torch.randint(0, high, shape, dtype=torch.uint8)


class Doubled(nn.Linear):
    def forward(self, x):
        return 2 * super().forward(x)


def _lin(*args, **kwargs):
    return lambda: nn.Linear(*args, **kwargs)


def wrapped(make, p=0.5, bs=4):
    return lambda: qn.quant_noise(make(), p, bs)


def lazy(fn, make_module, *args, **kwargs):
    """A call on a module made fresh for each run."""
    return lambda: (fn, (make_module(), *args), kwargs)


def is_wrapped(expected_shape=None):
    def check(result, args, kwargs):
        assert result is args[0] and type(result).__name__.startswith("QuantNoise")
        if expected_shape is not None:
            x = torch.empty(3, result.in_features, device=result.weight.device)
            assert tuple(result.train()(x).shape) == expected_shape

    return check


def _noised_linear_matches_reference(result, args, kwargs):
    torch.manual_seed(5)
    seed = int(qn.ops.draw_seed())
    x = torch.randn(3, result.in_features, dtype=result.weight.dtype)
    torch.manual_seed(5)
    got = result.train()(x)
    noised, bias = reference.block_noise(result.weight.detach(), 0.5, 4, seed), result.bias.detach()
    exact = F.linear(x.double(), noised.double(), bias.double())
    magnitude = F.linear(x.double().abs(), noised.double().abs(), bias.double().abs())
    assert_close_in_dtype(got, exact, F.linear(x, noised, bias), magnitude, result.in_features + 1)


QUANT_NOISE = [
    Case(
        "quant_noise",
        "type",
        "an LSTM",
        lazy(qn.quant_noise, lambda: nn.LSTM(4, 4), 0.5, 4),
        TypeError,
        "module must be one of Linear, Embedding, Conv1d, Conv2d, got LSTM",
    ),
    Case(
        "quant_noise",
        "type",
        "a subclass with its own forward",
        lazy(qn.quant_noise, lambda: Doubled(8, 8), 0.5, 4),
        TypeError,
        "module is a Doubled, a subclass of Linear that overrides forward",
    ),
    Case(
        "quant_noise",
        "rank",
        "a Conv3d",
        lazy(qn.quant_noise, lambda: nn.Conv3d(2, 2, 2), 0.5, 4),
        TypeError,
        "got Conv3d",
    ),
    Case(
        "quant_noise",
        "shape",
        "block 3 of row 8",
        lazy(qn.quant_noise, _lin(8, 4), 0.5, 3),
        ValueError,
        r"block_size must divide the row length of weight \(8",
    ),
    Case(
        "quant_noise",
        "range",
        "p = 1 with rescale",
        lazy(qn.quant_noise, _lin(8, 4), 1.0, 4),
        ValueError,
        r"p must be in \[0, 1\), got 1.0",
    ),
    Case(
        "quant_noise",
        "range",
        "wrapped twice",
        lazy(qn.quant_noise, wrapped(_lin(8, 4)), 0.5, 4),
        ValueError,
        "already wrapped",
    ),
    Case(
        "quant_noise",
        "nonfinite",
        "p NaN",
        lazy(qn.quant_noise, _lin(8, 4), NAN, 4),
        ValueError,
        r"p must be in \[0, 1\), got nan",
    ),
    Case(
        "quant_noise",
        "dtype",
        "bfloat16 layer",
        lazy(qn.quant_noise, _lin(8, 4, dtype=torch.bfloat16), 0.5, 4),
        check=_noised_linear_matches_reference,
        mutates=True,
    ),
    Case(
        "quant_noise",
        "device",
        "layer on meta",
        lazy(qn.quant_noise, _lin(8, 4, device=META), 0.5, 4),
        check=is_wrapped((3, 4)),
        mutates=True,
    ),
    Case(
        "quant_noise",
        "empty",
        "no outputs",
        lazy(qn.quant_noise, _lin(8, 0), 0.5, 4),
        check=is_wrapped((3, 0)),
        mutates=True,
    ),
    Case(
        "quant_noise",
        "huge",
        f"{HUGE} outputs on meta",
        lazy(qn.quant_noise, _lin(8, HUGE, device=META), 0.5, 4),
        check=is_wrapped((3, HUGE)),
        mutates=True,
    ),
    Case(
        "quant_noise",
        "grad",
        "p as a tensor",
        lazy(qn.quant_noise, _lin(8, 4), torch.tensor(0.5, requires_grad=True), 4),
        ValueError,
        r"p must be in \[0, 1\)",
    ),
]

QNW = qn.quant_noise_weight


def _qnw_ref(result, args, kwargs):
    torch.manual_seed(7)
    seed = int(qn.ops.draw_seed())
    torch.manual_seed(7)
    got = QNW(*args, **kwargs)
    torch.testing.assert_close(got, reference.block_noise(args[0].detach(), args[1], args[2], seed), equal_nan=True)


def _shape_only(shape):
    def check(result, args, kwargs):
        assert tuple(result.shape) == shape

    return check


def _qnw_grad(result, args, kwargs):
    weight = args[0]
    (grad,) = torch.autograd.grad(QNW(*args, **kwargs).sum(), weight)
    torch.testing.assert_close(grad, torch.full_like(weight, 1 / (1 - args[1])))  # straight-through, 1/(1-p)


QUANT_NOISE_WEIGHT = [
    Case(
        "quant_noise_weight",
        "dtype",
        "int weight",
        call(QNW, torch.ones(4, 8, dtype=torch.int32), 0.5, 4),
        TypeError,
        "weight must be float32, float16, bfloat16 or float64",
    ),
    Case(
        "quant_noise_weight",
        "rank",
        "1-D weight",
        call(QNW, t(8), 0.5, 4),
        ValueError,
        "weight must have at least 2 dimensions",
    ),
    Case(
        "quant_noise_weight",
        "shape",
        "block 3 of row 8",
        call(QNW, t(4, 8), 0.5, 3),
        ValueError,
        "block_size must divide the row length",
    ),
    Case(
        "quant_noise_weight",
        "range",
        "p -0.1",
        call(QNW, t(4, 8), -0.1, 4),
        ValueError,
        r"p must be in \[0, 1\), got -0.1",
    ),
    Case(
        "quant_noise_weight",
        "type",
        "block_size 4.0",
        call(QNW, t(4, 8), 0.5, 4.0),
        TypeError,
        "block_size must be an int",
    ),
    Case("quant_noise_weight", "nonfinite", "NaN weight", call(QNW, t(4, 8, fill=NAN), 0.5, 4), check=_qnw_ref),
    Case(
        "quant_noise_weight",
        "device",
        "weight on meta",
        call(QNW, t(4, 8, device=META), 0.5, 4),
        check=_shape_only((4, 8)),
    ),
    Case("quant_noise_weight", "empty", "no rows", call(QNW, t(0, 8), 0.5, 4), check=_shape_only((0, 8))),
    Case(
        "quant_noise_weight",
        "huge",
        f"{HUGE} rows on meta",
        call(QNW, t(HUGE, 8, device=META), 0.5, 4),
        check=_shape_only((HUGE, 8)),
    ),
    Case("quant_noise_weight", "grad", "a leaf weight", call(QNW, t(4, 8).requires_grad_(), 0.5, 4), check=_qnw_grad),
]


def _unwrapped_as(cls):
    def check(result, args, kwargs):
        assert type(result) is cls and not hasattr(result, "quant_noise_config")

    return check


def _with_attribute():
    m = nn.Linear(4, 4)
    m.quant_noise_config = "mine"
    return m


RQN = qn.remove_quant_noise
REMOVE = [
    Case(
        "remove_quant_noise",
        "type",
        "a tensor",
        call(RQN, t(4, 4)),
        ValueError,
        "module Tensor is not wrapped by quant_noise",
    ),
    Case(
        "remove_quant_noise",
        "range",
        "an unwrapped Linear",
        lazy(RQN, _lin(4, 4)),
        ValueError,
        "module Linear is not wrapped",
    ),
    Case(
        "remove_quant_noise",
        "range",
        "only the attribute",
        lazy(RQN, _with_attribute),
        ValueError,
        "module Linear is not wrapped",
    ),
    Case(
        "remove_quant_noise",
        "dtype",
        "float64 layer",
        lazy(RQN, wrapped(_lin(8, 4, dtype=torch.float64))),
        check=_unwrapped_as(nn.Linear),
        mutates=True,
    ),
    Case(
        "remove_quant_noise",
        "rank",
        "a Conv1d",
        lazy(RQN, wrapped(lambda: nn.Conv1d(4, 4, 2), bs=8)),
        check=_unwrapped_as(nn.Conv1d),
        mutates=True,
    ),
    Case(
        "remove_quant_noise",
        "shape",
        "an Embedding",
        lazy(RQN, wrapped(lambda: nn.Embedding(5, 8))),
        check=_unwrapped_as(nn.Embedding),
        mutates=True,
    ),
    Case(
        "remove_quant_noise",
        "device",
        "a meta layer",
        lazy(RQN, wrapped(_lin(8, 4, device=META))),
        check=_unwrapped_as(nn.Linear),
        mutates=True,
    ),
    Case(
        "remove_quant_noise",
        "empty",
        "no outputs",
        lazy(RQN, wrapped(_lin(8, 0))),
        check=_unwrapped_as(nn.Linear),
        mutates=True,
    ),
    Case(
        "remove_quant_noise",
        "huge",
        "huge meta layer",
        lazy(RQN, wrapped(_lin(8, HUGE, device=META))),
        check=_unwrapped_as(nn.Linear),
        mutates=True,
    ),
    Case(
        "remove_quant_noise",
        "nonfinite",
        "NaN weights",
        lazy(RQN, wrapped(lambda: nn.Linear(8, 4).requires_grad_(False).apply(lambda m: m.weight.fill_(NAN)))),
        check=_unwrapped_as(nn.Linear),
        mutates=True,
    ),
]

KM = qn.kmeans


def _kmeans_like_detached(result, args, kwargs):
    again = KM(args[0].detach().clone(), *args[1:], **kwargs)
    assert torch.equal(result.centroids, again.centroids) and torch.equal(result.codes, again.codes)
    assert not result.centroids.requires_grad


KMEANS = [
    Case(
        "kmeans",
        "dtype",
        "int x",
        call(KM, torch.ones(20, 4, dtype=torch.int64), 4),
        TypeError,
        "kmeans: x must be float32, float16, bfloat16 or float64, got dtype torch.int64",
    ),
    Case(
        "kmeans",
        "rank",
        "1-D x",
        call(KM, t(20), 4),
        ValueError,
        r"x must be \[N, D\] or \[B, N, D\], got shape \(20,\)",
    ),
    Case(
        "kmeans",
        "shape",
        "K > N",
        call(KM, t(20, 4), 21),
        ValueError,
        "n_centroids must be at most the number of vectors N=20, got 21",
    ),
    Case(
        "kmeans",
        "range",
        "K = 0",
        call(KM, t(20, 4), 0),
        ValueError,
        r"n_centroids must be an int in \[1, 65536\], got 0",
    ),
    Case(
        "kmeans",
        "range",
        "n_iter -1",
        call(KM, t(20, 4), 4, n_iter=-1),
        ValueError,
        "n_iter must be an int >= 0, got -1",
    ),
    Case(
        "kmeans",
        "range",
        "seed 2**63",
        call(KM, t(20, 4), 4, seed=2**63),
        ValueError,
        r"seed must be None or an int in \[0, 2\*\*63\)",
    ),
    Case(
        "kmeans",
        "range",
        "init",
        call(KM, t(20, 4), 4, init="kmeans||"),
        ValueError,
        "init must be 'random' or 'kmeans\\+\\+'",
    ),
    Case(
        "kmeans",
        "nonfinite",
        "inf x",
        call(KM, t(20, 4, fill=INF), 4),
        ValueError,
        "x must be finite, got 1 NaN or infinite values",
    ),
    Case(
        "kmeans",
        "nonfinite",
        "eps NaN",
        call(KM, t(20, 4), 4, eps=NAN),
        ValueError,
        "eps must be a finite number >= 0, got nan",
    ),
    Case(
        "kmeans",
        "nonfinite",
        "tol NaN",
        call(KM, t(20, 4), 4, tol=NAN),
        ValueError,
        "tol must be None or a finite number >= 0, got nan",
    ),
    Case("kmeans", "type", "K = 2.5", call(KM, t(20, 4), 2.5), ValueError, "n_centroids must be an int.*got 2.5"),
    Case(
        "kmeans",
        "device",
        "x on meta",
        call(KM, t(20, 4, device=META), 4),
        ValueError,
        "x must hold values, got a tensor on the meta device",
    ),
    Case(
        "kmeans",
        "empty",
        "no vectors",
        call(KM, t(0, 4), 1),
        ValueError,
        "n_centroids must be at most the number of vectors N=0",
    ),
    Case("kmeans", "huge", f"{HUGE} vectors on meta", call(KM, t(HUGE, 4, device=META), 4), ValueError, "meta device"),
    Case(
        "kmeans",
        "grad",
        "a weight that requires grad",
        call(KM, t(20, 4).requires_grad_(), 4, seed=0),
        check=_kmeans_like_detached,
    ),
]


def _encode(weight, block_size, n_centroids=4, **kwargs):
    pq = PQ(weight, block_size, n_centroids, n_iter=2, seed=0, **kwargs)
    return pq.encode()


def _pq_like_detached(result, args, kwargs):
    again = _encode(args[0].detach().clone(), *args[1:], **kwargs)
    assert torch.equal(result[0], again[0]) and torch.equal(result[1], again[1])


PQ_CASES = [
    Case(
        "PQ",
        "dtype",
        "int weight",
        call(_encode, torch.ones(4, 8, dtype=torch.int32), 4),
        TypeError,
        "PQ: weight must be a float tensor, got dtype torch.int32",
    ),
    Case("PQ", "rank", "1-D weight", call(_encode, t(8), 4), ValueError, "weight must have at least 2 dimensions"),
    Case(
        "PQ",
        "shape",
        "block 3 of row 8",
        call(_encode, t(4, 8), 3),
        ValueError,
        "block_size must divide the row length",
    ),
    Case(
        "PQ",
        "range",
        "K > blocks",
        call(_encode, t(4, 8), 4, 9),
        ValueError,
        "PQ: n_centroids=9 exceeds the 8 blocks of the weight",
    ),
    Case(
        "PQ",
        "range",
        "K = 0",
        call(_encode, t(4, 8), 4, 0),
        ValueError,
        r"PQ: n_centroids must be an int in \[1, 65536\], got 0",
    ),
    Case(
        "PQ",
        "nonfinite",
        "NaN weight",
        call(_encode, t(4, 8, fill=NAN), 4),
        ValueError,
        "PQ: weight must be finite, got 1 NaN or infinite",
    ),
    Case(
        "PQ",
        "device",
        "weight on meta",
        call(_encode, t(4, 8, device=META), 4),
        ValueError,
        "PQ: weight must hold values, got a tensor on the meta device",
    ),
    Case(
        "PQ",
        "empty",
        "no rows",
        call(_encode, t(0, 8), 4, 1),
        ValueError,
        "PQ: n_centroids=1 exceeds the 0 blocks of the weight",
    ),
    Case("PQ", "huge", "huge meta weight", call(_encode, t(HUGE, 8, device=META), 4), ValueError, "meta device"),
    Case(
        "PQ",
        "grad",
        "a weight that requires grad",
        call(_encode, t(4, 8).requires_grad_(), 4, 8),
        check=_pq_like_detached,
    ),
]


def _lin_layer(centroids=None, codes_=None, bias=None, in_features=8, out_features=5, **kwargs):
    centroids = t(4, 4) if centroids is None else centroids
    codes_ = codes(out_features, 2) if codes_ is None else codes_
    return PQLinear(centroids, codes_, bias, in_features, out_features, **kwargs)


def _forward_shape(x_shape, y_shape):
    def check(result, args, kwargs):
        x = torch.randn(*x_shape, device=result.centroids.device)
        assert tuple(result(x).shape) == y_shape

    return check


def _pq_linear_grad(result, args, kwargs):
    x = torch.randn(3, 8)
    result(x).sum().backward()
    expected = torch.zeros(4, 4).index_add_(
        0, result.interchange_codes().reshape(-1).long(), x.sum(0).repeat(5, 1).reshape(-1, 4)
    )
    torch.testing.assert_close(result.centroids.grad, expected)


PQ_LINEAR = [
    Case(
        "PQLinear",
        "dtype",
        "float codes",
        call(_lin_layer, codes_=torch.zeros(5, 2)),
        TypeError,
        "PQLinear: codes must be an integer tensor, got dtype torch.float32",
    ),
    Case(
        "PQLinear",
        "dtype",
        "int centroids",
        call(_lin_layer, centroids=torch.ones(4, 4, dtype=torch.int64)),
        TypeError,
        "PQLinear: centroids must be a float tensor, got dtype torch.int64",
    ),
    Case(
        "PQLinear",
        "rank",
        "1-D centroids",
        call(_lin_layer, centroids=t(16)),
        ValueError,
        r"PQLinear: centroids must be 2-D \[n_centroids, block_size\]",
    ),
    Case(
        "PQLinear",
        "shape",
        "codes for 6 outputs",
        call(_lin_layer, codes_=codes(6, 2)),
        ValueError,
        r"PQLinear: codes must have shape \(5, 2\)",
    ),
    Case(
        "PQLinear",
        "shape",
        "bias of 4",
        call(_lin_layer, bias=t(4)),
        ValueError,
        r"PQLinear: bias must have shape \(5,\)",
    ),
    Case(
        "PQLinear",
        "range",
        "code = K",
        call(_lin_layer, codes_=torch.full((5, 2), 4, dtype=torch.uint8)),
        ValueError,
        r"PQLinear: codes must be in \[0, n_centroids=4\)",
    ),
    Case(
        "PQLinear",
        "range",
        "block size 0",
        call(_lin_layer, centroids=t(4, 0)),
        ValueError,
        "PQLinear: block_size must be positive, got 0",
    ),
    Case(
        "PQLinear",
        "range",
        "negative in_features",
        call(_lin_layer, in_features=-8),
        ValueError,
        "PQLinear: in_features must be an int >= 0, got -8",
    ),
    Case(
        "PQLinear",
        "type",
        "in_features 8.5",
        call(_lin_layer, in_features=8.5),
        ValueError,
        "PQLinear: in_features must be an int >= 0, got 8.5",
    ),
    Case(
        "PQLinear",
        "nonfinite",
        "NaN centroid",
        call(_lin_layer, centroids=t(4, 4, fill=NAN)),
        ValueError,
        "PQLinear: centroids must be finite, got 1 NaN or infinite",
    ),
    Case(
        "PQLinear",
        "device",
        "codes on meta",
        call(_lin_layer, codes_=codes(5, 2, device=META)),
        ValueError,
        "PQLinear: codes must be on the centroids' device cpu, got meta",
    ),
    Case(
        "PQLinear",
        "empty",
        "no outputs",
        call(_lin_layer, codes_=codes(0, 2), out_features=0),
        check=_forward_shape((3, 8), (3, 0)),
    ),
    Case(
        "PQLinear",
        "huge",
        f"{HUGE} outputs on meta",
        call(_lin_layer, t(4, 4, device=META), codes(HUGE, 2, device=META), out_features=HUGE),
        check=_forward_shape((3, 8), (3, HUGE)),
    ),
    Case(
        "PQLinear",
        "grad",
        "centroids that require grad",
        call(_lin_layer, centroids=t(4, 4).requires_grad_()),
        check=_pq_linear_grad,
    ),
]


def _conv_layer(centroids=None, codes_=None, bias=None, in_channels=4, out_channels=6, kernel_size=3, **kwargs):
    centroids = t(4, 9) if centroids is None else centroids
    codes_ = codes(out_channels, 4) if codes_ is None else codes_
    return PQConv2d(centroids, codes_, bias, in_channels, out_channels, kernel_size, **kwargs)


def _conv_vs_dense(result, args, kwargs):
    x = torch.randn(2, 4, 7, 7)
    torch.testing.assert_close(result(x), result.to_dense()(x), rtol=1e-4, atol=1e-4)


def _conv_input(x):
    return lambda: (lambda: _conv_layer()(x), (), {})


PQ_CONV = [
    Case(
        "PQConv2d",
        "dtype",
        "int64 codes",
        call(_conv_layer, codes_=torch.zeros(6, 4, dtype=torch.int64)),
        check=_conv_vs_dense,
    ),
    Case(
        "PQConv2d",
        "rank",
        "2-D input",
        _conv_input(t(4, 4)),
        ValueError,
        r"PQConv2d: input must be \[C, \*spatial\] or \[N, C, \*spatial\]",
    ),
    Case(
        "PQConv2d",
        "shape",
        "input with 3 channels",
        _conv_input(t(1, 3, 7, 7)),
        ValueError,
        "PQConv2d: input must have in_channels=4 channels, got 3",
    ),
    Case(
        "PQConv2d",
        "shape",
        "groups 3 of 4 channels",
        call(_conv_layer, groups=3, in_channels=3, out_channels=4),
        ValueError,
        "PQConv2d: groups=3 must be positive and divide in_channels=3 and out_channels=4",
    ),
    Case(
        "PQConv2d",
        "range",
        "stride 0",
        call(_conv_layer, stride=0),
        ValueError,
        r"PQConv2d: stride must be 2 ints >= 1, got \(0, 0\)",
    ),
    Case(
        "PQConv2d",
        "range",
        "string padding",
        call(_conv_layer, padding="same"),
        ValueError,
        "PQConv2d: padding must be an int or a tuple of 2 ints, got 'same'",
    ),
    Case(
        "PQConv2d",
        "range",
        "padding mode",
        call(_conv_layer, padding_mode="mirror"),
        ValueError,
        "padding_mode must be zeros/reflect/replicate/circular",
    ),
    Case(
        "PQConv2d",
        "type",
        "kernel 2.5",
        call(_conv_layer, kernel_size=2.5),
        ValueError,
        r"PQConv2d: kernel_size must be 2 ints >= 1, got \(2.5, 2.5\)",
    ),
    Case(
        "PQConv2d",
        "nonfinite",
        "inf centroid",
        call(_conv_layer, centroids=t(4, 9, fill=INF)),
        ValueError,
        "PQConv2d: centroids must be finite",
    ),
    Case(
        "PQConv2d",
        "device",
        "bias on meta",
        call(_conv_layer, bias=t(6, device=META)),
        ValueError,
        "PQConv2d: bias must be on the centroids' device cpu, got meta",
    ),
    Case(
        "PQConv2d",
        "empty",
        "empty batch",
        _conv_input(t(0, 4, 7, 7)),
        check=lambda r, a, k: r.shape == (0, 6, 5, 5) or pytest.fail(str(r.shape)),
    ),
    Case(
        "PQConv2d",
        "huge",
        f"{HUGE} output channels on meta",
        call(_conv_layer, t(4, 9, device=META), codes(HUGE, 4, device=META), out_channels=HUGE),
        check=lambda r, a, k: r.weight_shape == (HUGE, 4, 3, 3) or pytest.fail("shape"),
    ),
    Case(
        "PQConv2d",
        "shape",
        "input too small for the kernel",
        _conv_input(t(1, 4, 2, 2)),
        ValueError,
        r"PQConv2d: input of spatial size \(2, 2\) \(padded by \(0, 0\)\) is smaller than the dilated kernel \(3, 3\)",
    ),
    Case(
        "PQConv2d",
        "grad",
        "input that requires grad",
        _conv_input(t(1, 4, 7, 7).requires_grad_()),
        check=lambda r, a, k: r.requires_grad or pytest.fail("no grad"),
    ),
]


def _emb_layer(centroids=None, codes_=None, num=5, dim=8, **kwargs):
    centroids = t(4, 4) if centroids is None else centroids
    codes_ = codes(num, 2) if codes_ is None else codes_
    return PQEmbedding(centroids, codes_, num, dim, **kwargs)


def _emb_input(indices, **kwargs):
    return lambda: (lambda: _emb_layer(**kwargs)(indices), (), {})


def _emb_vs_dense(result, args, kwargs):
    idx = torch.tensor([[0, 3], [4, 1]])
    torch.testing.assert_close(result(idx), result.to_dense()(idx))


PQ_EMBEDDING = [
    Case(
        "PQEmbedding",
        "dtype",
        "float indices",
        _emb_input(torch.zeros(3)),
        TypeError,
        "indices must be int64 or int32, got dtype Float",
    ),
    Case(
        "PQEmbedding",
        "dtype",
        "float64 centroids",
        call(_emb_layer, centroids=t(4, 4, dtype=torch.float64)),
        check=_emb_vs_dense,
    ),
    Case(
        "PQEmbedding",
        "rank",
        "1-D codes",
        call(_emb_layer, codes_=codes(10)),
        ValueError,
        r"PQEmbedding: codes must have shape \(5, 2\)",
    ),
    Case(
        "PQEmbedding",
        "shape",
        "dim 9 for block 4",
        call(_emb_layer, dim=9),
        ValueError,
        "PQEmbedding: block_size must divide the row length of weight",
    ),
    Case(
        "PQEmbedding",
        "range",
        "index 5 of 5",
        _emb_input(torch.tensor([5])),
        ValueError,
        r"indices must be in \[0, num_embeddings=5\)",
    ),
    Case(
        "PQEmbedding",
        "range",
        "padding_idx 5",
        call(_emb_layer, padding_idx=5),
        ValueError,
        "PQEmbedding: padding_idx must be within num_embeddings, got 5",
    ),
    Case(
        "PQEmbedding",
        "nonfinite",
        "NaN centroid",
        call(_emb_layer, centroids=t(4, 4, fill=NAN)),
        ValueError,
        "PQEmbedding: centroids must be finite",
    ),
    Case(
        "PQEmbedding",
        "device",
        "codes on meta",
        call(_emb_layer, codes_=codes(5, 2, device=META)),
        ValueError,
        "PQEmbedding: codes must be on the centroids' device cpu, got meta",
    ),
    Case(
        "PQEmbedding",
        "empty",
        "no indices",
        _emb_input(torch.zeros(0, dtype=torch.int64)),
        check=lambda r, a, k: r.shape == (0, 8) or pytest.fail(str(r.shape)),
    ),
    Case(
        "PQEmbedding",
        "huge",
        "huge meta table",
        call(_emb_layer, t(4, 4, device=META), codes(HUGE, 2, device=META), num=HUGE),
        check=lambda r, a, k: r.weight_shape == (HUGE, 8) or pytest.fail("shape"),
    ),
    Case(
        "PQEmbedding",
        "grad",
        "centroids that require grad",
        call(_emb_layer, centroids=t(4, 4).requires_grad_()),
        check=_emb_vs_dense,
    ),
]

CASES = QUANT_NOISE + QUANT_NOISE_WEIGHT + REMOVE + KMEANS + PQ_CASES + PQ_LINEAR + PQ_CONV + PQ_EMBEDDING


def test_every_entry_point_gets_eight_kinds_of_bad_input():
    kinds: dict[str, set[str]] = {}
    for case in CASES:
        kinds.setdefault(case.entry, set()).add(case.kind)
    assert len(kinds) == 8
    assert all(len(k) >= 8 for k in kinds.values()), {e: sorted(k) for e, k in kinds.items()}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case):
    run_case(case)
