"""iPQ & int8: PQ layers with int8 centroids (issue 8 item 5)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from quantnoise_kernels import pq, reference
from quantnoise_kernels.scalar import QuantGrid, observe

BLOCKS = {"Linear": ("fuzzy_name", {"*": 4}), "Embedding": ("fuzzy_name", {"*": 4})}
KS = {"Linear": ("fuzzy_name", {"*": 16}), "Embedding": ("fuzzy_name", {"*": 16})}


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(40, 16)
        self.fc = nn.Linear(16, 32)
        self.head = nn.Linear(16, 40, bias=False)
        self.head.weight = self.emb.weight  # tied

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.head(self.emb(idx)) + self.fc(self.emb(idx)).sum(-1, keepdim=True)


def _quantized(centroid_bits=None, act_bits=0, tracker=False):
    torch.manual_seed(0)
    model = Net()
    size_tracker = pq.SizeTracker(model) if tracker else None
    pq.quantize_model_(
        model, size_tracker, ["emb|fc|head"], BLOCKS, KS, verbose=False, seed=3,
        centroid_bits=centroid_bits, act_bits=act_bits,
    )  # fmt: skip
    return model, size_tracker


@pytest.mark.parametrize("bits", [8, 4])
def test_int8_centroids_are_the_fake_quantized_float_centroids(bits):
    floating, _ = _quantized()
    model, _ = _quantized(centroid_bits=bits)
    for name in ("emb", "fc"):
        layer, ref_layer = getattr(model, name), getattr(floating, name)
        assert layer.centroids.dtype == torch.int8 and not layer.centroids.requires_grad
        assert torch.equal(layer.interchange_codes(), ref_layer.interchange_codes())  # same k-means (seed)
        c = ref_layer.centroids.detach().float()
        qp = observe(c, QuantGrid(bits, "tensor"))
        expected_c = torch.fake_quantize_per_tensor_affine(c, qp.scale, qp.zero_point, 0, 2**bits - 1)
        expected = reference.pq_decode(ref_layer.interchange_codes(), expected_c, layer.weight_shape)
        assert torch.equal(layer.to_dense().weight.detach(), expected), name
        assert layer.centroid_scale.dtype == torch.float32 and layer.centroid_zero_point.dtype == torch.int32
    assert model.head.centroids is model.emb.centroids and model.head.centroid_scale is model.emb.centroid_scale


def test_forward_with_int8_activations():
    model, _ = _quantized(centroid_bits=8, act_bits=8)
    assert model.fc.act_bits == 8 and model.head.act_bits == 8
    x = torch.randn(5, 16)
    w = model.fc.to_dense().weight.detach()
    expected = F.linear(reference.act_fake_quant(x, 8), w, model.fc.bias)
    torch.testing.assert_close(model.fc(x), expected, rtol=1e-5, atol=1e-5)
    model.fc.act_bits = 0
    torch.testing.assert_close(model.fc(x), F.linear(x, w, model.fc.bias), rtol=1e-5, atol=1e-5)


def test_save_load_round_trip_is_bit_exact(tmp_path):
    model, _ = _quantized(centroid_bits=8, act_bits=8)
    path = tmp_path / "m.qnk"
    pq.save_compressed(model, path)
    fresh = Net()
    assert pq.load_compressed(fresh, path) == ["emb", "fc", "head"]
    for name in ("emb", "fc", "head"):
        a, b = getattr(model, name), getattr(fresh, name)
        assert b.centroids.dtype == torch.int8 and torch.equal(a.centroids, b.centroids), name
        assert torch.equal(a.centroid_scale, b.centroid_scale)
        assert torch.equal(a.centroid_zero_point, b.centroid_zero_point)
        assert b.act_bits == 8
    assert fresh.head.centroids is fresh.emb.centroids
    assert fresh.state_dict().keys() == model.state_dict().keys()
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in model.state_dict().items())
    idx = torch.randint(0, 40, (3, 7))
    assert torch.equal(fresh(idx), model(idx))


def test_size_tracker_counts_one_byte_per_centroid_entry():
    _, fp16 = _quantized(tracker=True)
    model, int8 = _quantized(centroid_bits=8, tracker=True)
    n_layers = 2  # emb (tied with head) and fc
    assert int8.size_centroids * 2**20 == pytest.approx(n_layers * 16 * 4 * 1)
    assert fp16.size_centroids * 2**20 == pytest.approx(n_layers * 16 * 4 * 2)
    held = int8.held_bytes()
    assert held.centroids == n_layers * (16 * 4 + 4 + 4)  # int8 entries + float32 scale + int32 zero point


def test_finetuning_trains_the_rest_not_the_int8_centroids():
    model, _ = _quantized(centroid_bits=8)
    before = model.fc.centroids.clone()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model(torch.randint(0, 40, (4, 5))).square().mean().backward()
    opt.step()
    assert torch.equal(model.fc.centroids, before) and model.fc.bias.grad is not None


def test_bad_centroid_bits_leaves_the_model_unchanged():
    model = Net()
    snapshot = copy.deepcopy(model.state_dict())
    for bad in (1, 9, 8.0):
        with pytest.raises(ValueError, match="centroid_bits must be None or an int in \\[2, 8\\]"):
            pq.quantize_model_(model, None, ["fc"], BLOCKS, KS, centroid_bits=bad)
    assert type(model.fc) is nn.Linear and all(torch.equal(model.state_dict()[k], v) for k, v in snapshot.items())
    layer = pq.PQLinear.from_float(nn.Linear(8, 4), 4, 4, seed=0).quantize_centroids_(8)
    with pytest.raises(ValueError, match="int8 already"):
        layer.quantize_centroids_(8)
