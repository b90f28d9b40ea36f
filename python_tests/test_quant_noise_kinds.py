"""quant_noise(module, p, block_size, noise=...): the fake_quant and centroid kinds on modules (issue 8 item 1)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import quantnoise_kernels as qn
from quantnoise_kernels import ops, reference
from quantnoise_kernels.scalar import QuantGrid, observe


def _layer(kind: str):
    """A fresh layer (each test wraps its own), an input and a block size."""
    if kind == "Linear":
        return nn.Linear(32, 16), torch.randn(5, 32), 4
    if kind == "Embedding":
        return nn.Embedding(40, 16), torch.randint(0, 40, (6, 7)), 4
    return nn.Conv2d(4, 6, 3, padding=1), torch.randn(2, 4, 6, 6), 9


def _functional(module, x, weight):
    if isinstance(module, nn.Linear):
        return F.linear(x, weight, module.bias)
    if isinstance(module, nn.Embedding):
        return F.embedding(x, weight, module.padding_idx)
    return module._conv_forward(x, weight, module.bias)


@pytest.mark.parametrize("kind", ["Linear", "Embedding", "Conv2d"])
@pytest.mark.parametrize("method", ["tensor", "channel"])
def test_fake_quant_training_forward_matches_reference(kind, method):
    module, x, block_size = _layer(kind)
    plain = module(x)
    qn.quant_noise(module, 0.4, block_size, noise="fake_quant", bits=4, method=method)
    torch.manual_seed(3)
    out = module(x)
    torch.manual_seed(3)
    seed = int(ops.draw_seed())
    qp = observe(module.weight, QuantGrid(4, method))
    noised = reference.block_noise_fake_quant(
        module.weight.detach(), 0.4, block_size, seed, qp.scale, qp.zero_point, 0, 15
    )
    torch.testing.assert_close(out, _functional(module, x, noised), rtol=1e-5, atol=1e-5)
    module.eval()
    assert torch.equal(module(x), plain), "eval is the plain layer"


def test_fake_quant_grid_refreshes_every_update_step_training_forwards():
    layer = qn.quant_noise(nn.Linear(8, 8), 0.5, 1, noise="fake_quant", method="tensor", update_step=2)
    x = torch.randn(2, 8)
    layer(x)
    first = layer.quant_noise_qparams.qparams
    layer(x)
    assert layer.quant_noise_qparams.qparams is first
    layer(x)
    assert layer.quant_noise_qparams.qparams is not first


def test_centroid_kind():
    centroids = torch.randn(16, 8)
    layer = qn.quant_noise(nn.Linear(32, 4), 0.5, 8, noise="centroid", centroids=centroids)
    assert "quant_noise_centroids" not in layer.state_dict()
    x = torch.randn(3, 32)
    torch.manual_seed(1)
    out = layer(x)
    torch.manual_seed(1)
    seed = int(ops.draw_seed())
    noised = reference.block_noise_centroid(layer.weight.detach(), 0.5, 8, seed, centroids)
    torch.testing.assert_close(out, F.linear(x, noised, layer.bias), rtol=1e-5, atol=1e-5)
    qn.remove_quant_noise(layer)
    assert "quant_noise_centroids" not in dict(layer.named_buffers())


def _whole_table_kind(noise: str, weight: torch.Tensor, centroids: torch.Tensor) -> dict:
    if noise == "fake_quant":
        qp = observe(weight, QuantGrid(8, "channel"))
        return {"noise": noise, "scale": qp.scale, "zero_point": qp.zero_point, "quant_min": 0, "quant_max": 255}
    return {"noise": "centroid", "centroids": centroids} if noise == "centroid" else {}


@pytest.mark.parametrize("noise", ["drop", "fake_quant", "centroid"])
@pytest.mark.parametrize("options", [{}, {"sparse": True}, {"scale_grad_by_freq": True}, {"straight_through": False}])
def test_embedding_noises_the_looked_up_rows_as_the_whole_table(noise, options):
    """A wrapped nn.Embedding noises only the rows it looks up (block_noise's rows), and that equals a lookup in
    the whole noised table (padding_idx, sparse, scale_grad_by_freq, both gradients)."""
    st = options.pop("straight_through", True)
    emb = nn.Embedding(500, 32, padding_idx=3, **options)
    ref = nn.Embedding(500, 32, padding_idx=3, **options)
    ref.load_state_dict(emb.state_dict())
    centroids = torch.randn(16, 8)
    kw = {"noise": noise, "straight_through": st}
    kw |= {"method": "channel"} if noise == "fake_quant" else {"centroids": centroids} if noise == "centroid" else {}
    qn.quant_noise(emb, 0.3, 8, **kw)
    idx = torch.randint(0, 500, (4, 9))
    idx[0, 0] = 3
    idx[1, :3] = 7  # repeated rows
    torch.manual_seed(5)
    out = emb(idx)
    torch.manual_seed(5)
    seed = int(ops.draw_seed())
    table = ops.block_noise(
        ref.weight, 0.3, 8, seed, straight_through=st, **_whole_table_kind(noise, ref.weight, centroids)
    )
    expected = F.embedding(idx, table, 3, None, 2.0, ref.scale_grad_by_freq, ref.sparse)
    assert torch.equal(out, expected)
    g = torch.randn_like(out)
    out.backward(g)
    expected.backward(g)
    got, want = emb.weight.grad, ref.weight.grad
    assert got.is_sparse == emb.sparse  # the looked-up rows' gradient stays sparse
    torch.testing.assert_close(got.to_dense(), want.to_dense(), rtol=1e-6, atol=1e-6)


def test_embedding_max_norm_renormalises_the_weight_as_nn_embedding():
    emb = nn.Embedding(20, 8, max_norm=1.0)
    with torch.no_grad():
        emb.weight.mul_(5)
    plain = nn.Embedding(20, 8, max_norm=1.0)
    plain.load_state_dict(emb.state_dict())
    qn.quant_noise(emb, 0.2, 4)
    idx = torch.tensor([1, 2, 2, 7])
    emb(idx)
    plain(idx)
    assert torch.equal(emb.weight, plain.weight)  # the looked-up rows renormalised in place, as nn.Embedding


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"noise": "gauss"}, ValueError, r"noise must be one of \('drop', 'fake_quant', 'centroid'\), got 'gauss'"),
        ({"noise": "fake_quant", "bits": 9}, ValueError, r"bits must be an int in \[2, 8\], got 9"),
        ({"noise": "fake_quant", "bits": 1}, ValueError, r"bits must be an int in \[2, 8\], got 1"),
        ({"noise": "fake_quant", "method": "kmeans"}, ValueError, r"method must be one of"),
        ({"noise": "fake_quant", "update_step": 0}, ValueError, r"update_step must be a positive int, got 0"),
        ({"noise": "fake_quant", "p": 1.5}, ValueError, r"p must be in \[0, 1\], got 1.5"),
        ({"noise": "fake_quant", "p": -0.5}, ValueError, r"p must be in \[0, 1\], got -0.5"),
        ({"noise": "centroid"}, ValueError, r"centroids go with noise='centroid'"),
        ({"noise": "centroid", "centroids": torch.randn(4, 3)}, ValueError, r"centroids must have shape \[K, 4\]"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, exc, match):
    layer = nn.Linear(8, 8)
    p = kwargs.pop("p", 0.2)
    with pytest.raises(exc, match=match):
        qn.quant_noise(layer, p, 4, **kwargs)
    assert type(layer) is nn.Linear


def test_nan_weight_is_a_clear_error():
    layer = qn.quant_noise(nn.Linear(8, 8), 0.2, 1, noise="fake_quant")
    with torch.no_grad():
        layer.weight[1, 2] = float("nan")
    with pytest.raises(ValueError, match=r"Linear\.weight holds 1 NaN/inf values"):
        layer(torch.randn(2, 8))


def test_fake_quant_p1_trains_fully_quantized_and_gradient_is_clamped_ste():
    layer = qn.quant_noise(nn.Linear(16, 4), 1.0, 1, noise="fake_quant", bits=8, method="tensor")
    x = torch.randn(3, 16)
    out = layer(x)
    qp = layer.quant_noise_qparams.qparams
    w_q = torch.fake_quantize_per_tensor_affine(layer.weight.detach(), qp.scale, qp.zero_point, 0, 255)
    torch.testing.assert_close(out, F.linear(x, w_q, layer.bias), rtol=1e-5, atol=1e-5)
    out.sum().backward()
    # fairseq's clamp(w, -s*z, s*(qmax-z)) gradient; with a rounded zero point the extremes may fall just outside
    inside = reference.fake_quant_clamp_mask(layer.weight.detach(), qp.scale, qp.zero_point, 0, 255)
    assert inside.float().mean() > 0.9
    torch.testing.assert_close(layer.weight.grad, (torch.ones(3, 4).t() @ x) * inside)
