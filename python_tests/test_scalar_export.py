"""Real int8 export, ``scalar.to_int8`` (issue 8 item 6)."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from quantnoise_kernels import scalar as sq

# Int8Linear quantizes its input per tensor to 7 bits (fbgemm on AVX2): relative error of a layer's
# output against F.linear(x, Q(W), b), Gaussian inputs. Documented in the README.
LINEAR_RTOL = 3e-2


def _rel(a, b):
    return float((a - b).detach().norm() / b.detach().norm())


@pytest.mark.parametrize("method", ["tensor", "channel", "histogram"])
@pytest.mark.parametrize(("bits", "symmetric"), [(8, False), (8, True), (4, False), (2, True)])
def test_exported_weights_equal_the_fake_quantized_ones(method, bits, symmetric):
    layer = sq.IntLinear(64, 40, method=method, bits=bits, symmetric=symmetric).eval()
    x = torch.randn(7, 64)
    y_eval = layer(x)  # observes the parameters
    exported = sq.Int8Linear.from_int(layer, layer._qcache.qparams)
    w_q = layer._qcache.qparams.fake_quantize(layer.weight.detach())
    assert torch.equal(exported.dequantized_weight(), w_q)
    assert _rel(exported(x), y_eval) < LINEAR_RTOL


def _model() -> nn.Module:
    return nn.Sequential(
        nn.Embedding(100, 64, padding_idx=1), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.Tanh()
    )


def test_to_int8_matches_the_fake_quantized_eval():
    model = _model()
    sq.quantize_model_(model, p=0.1, bits=8, update_step=100, method="channel")
    idx = torch.randint(0, 100, (4, 16))
    model(idx)  # one training forward: observes every layer and its output
    model.eval()
    y_eval = model(idx)
    exported = sq.to_int8(model)
    assert [type(m).__name__ for m in exported] == ["Int8Embedding", "Int8Linear", "ReLU", "Int8Linear", "Tanh"]
    assert type(model[1]) is sq.IntLinear  # not in place by default
    y = exported(idx)
    assert y.shape == y_eval.shape and _rel(y, y_eval) < 2 * LINEAR_RTOL
    # the embedding is exact: its rows are the fake-quantized rows, its output quantizer the same
    torch.testing.assert_close(exported[0](idx), model[0](idx), rtol=0, atol=0)


def test_state_dict_round_trip_and_file_size(tmp_path):
    model = nn.Sequential(nn.Linear(1024, 1024))
    dense_file = tmp_path / "dense.pt"
    torch.save(model.state_dict(), dense_file)
    sq.quantize_model_(model, method="tensor", quantize_activations=False)
    exported = sq.to_int8(model)
    int8_file = tmp_path / "int8.pt"
    torch.save(exported.state_dict(), int8_file)
    sd = exported.state_dict()
    assert sd["0.weight_int8"].dtype == torch.int8 and set(sd) == {"0.weight_int8", "0.scale", "0.zero_point", "0.bias"}
    ratio = dense_file.stat().st_size / int8_file.stat().st_size
    assert ratio >= 3.9, ratio

    fresh = nn.Sequential(nn.Linear(1024, 1024))
    sq.quantize_model_(fresh, method="tensor", quantize_activations=False)
    fresh = sq.to_int8(fresh)
    fresh.load_state_dict(torch.load(int8_file, weights_only=True))
    x = torch.randn(3, 1024)
    assert torch.equal(fresh(x), exported(x))
    with pytest.raises(RuntimeError, match="weight_int8"):
        fresh.load_state_dict({"0.scale": sd["0.scale"]})


def test_whole_model_pickles():
    model = _model()
    sq.quantize_model_(model, method="tensor")
    model.eval()
    exported = sq.to_int8(model)
    idx = torch.randint(0, 100, (2, 5))
    y = exported(idx)
    buf = io.BytesIO()
    torch.save(exported, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    assert torch.equal(loaded(idx), y)


def test_conv_export():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, padding_mode="circular"))
    sq.quantize_model_(model, method="channel", quantize_activations=False)
    model.eval()
    x = torch.randn(2, 3, 9, 9)
    y_eval = model(x)
    exported = sq.to_int8(model)
    torch.testing.assert_close(exported(x), y_eval, rtol=1e-5, atol=1e-5)
    assert exported[0].weight_int8.dtype == torch.int8 and "conv.weight" not in exported.state_dict()


def test_embedding_export_gathers_rows():
    emb = nn.Sequential(nn.Embedding(30, 16))
    sq.quantize_model_(emb, method="channel", quantize_activations=False)
    emb.eval()
    idx = torch.tensor([[3, 29, 0], [1, 1, 7]])
    y_eval = emb(idx)
    exported = sq.to_int8(emb, inplace=True)
    assert exported is emb and type(emb[0]) is sq.Int8Embedding
    torch.testing.assert_close(emb(idx), y_eval, rtol=0, atol=0)


def test_errors():
    with pytest.raises(ValueError, match="has no IntLinear"):
        sq.to_int8(nn.Sequential(nn.Linear(4, 4)))
    model = nn.Sequential(nn.Embedding(10, 4, max_norm=1.0))
    sq.quantize_model_(model)
    with pytest.raises(ValueError, match="'0' is an Embedding with max_norm"):
        sq.to_int8(model, inplace=True)
    assert type(model[0]) is sq.IntEmbedding
    with pytest.raises(RuntimeError, match="CPU only"):
        sq.Int8Linear.from_int(sq.IntLinear(4, 4).eval(), sq.observe(torch.randn(4, 4), sq.QuantGrid()))(
            torch.randn(1, 4, device="meta")
        )


def test_held_bytes_counts_the_packed_int8_weight():
    """fbgemm keeps Int8Linear's weight outside the parameters and buffers; held_bytes must see it."""
    from quantnoise_kernels.pq.size_tracker import held_bytes

    out, inp = 32, 64
    model = nn.Sequential(nn.Linear(inp, out))
    sq.quantize_model_(model, p=1.0, bits=8, update_step=1)
    exported = sq.to_int8(model)
    # int8 weight + float32 bias + one float32 scale + one int32 zero point (per tensor)
    assert held_bytes(exported).total == out * inp + 4 * out + 4 + 4


def test_held_bytes_counts_every_one_of_many_same_shape_int8_layers():
    """Each Int8Linear's unpacked tensors are new: a freed one's address must not make the next layer's
    look already counted (the MiniLM demo's int8 row varied from 14.1 to 15.3 MB between calls)."""
    from quantnoise_kernels.pq.size_tracker import held_bytes

    out, inp, n = 32, 64, 12
    model = nn.Sequential(*[nn.Linear(inp, out if i == n - 1 else inp) for i in range(n)])
    sq.quantize_model_(model, p=1.0, bits=8, update_step=1)
    exported = sq.to_int8(model)
    expected = sum(m.out_features * inp + 4 * m.out_features + 8 for m in model)
    assert [held_bytes(exported).total for _ in range(3)] == [expected] * 3
