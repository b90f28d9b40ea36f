"""Compact save/load of PQ models (bit-exact round trip) and import of fairseq iPQ state_dicts."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from quantnoise_kernels import reference
from quantnoise_kernels.pq import (
    PQConv2d,
    PQEmbedding,
    PQLinear,
    from_fairseq_state_dict,
    load_compressed,
    quantize_model_,
    save_compressed,
    to_fairseq_order,
)

BLOCKS = {
    "Linear": ("in_features", {"*": 4}),
    "Embedding": ("embedding_dim", {"*": 4}),
    "Conv2d": ("kernel_size", {"(3, 3)": 9, "*": 4}),
}


def _n_centroids(k: int) -> dict:
    return {
        "Linear": ("in_features", {"*": k}),
        "Embedding": ("embedding_dim", {"*": k}),
        "Conv2d": ("groups", {"*": k}),
    }


class Net(nn.Module):
    """Embedding (padding_idx, tied to the head), conv (grouped, reflect padding), BatchNorm buffers, Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(30, 16, padding_idx=0)
        self.conv = nn.Conv2d(4, 8, 3, padding=1, groups=2, padding_mode="reflect")
        self.conv1x1 = nn.Conv2d(8, 8, 1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8 * 4 * 4, 16)
        self.norm = nn.LayerNorm(16)
        self.head = nn.Linear(16, 30, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, tokens: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        h = self.bn(self.conv1x1(F.relu(self.conv(image))))
        h = self.fc(h.flatten(1)) + self.emb(tokens).mean(1)
        return self.head(self.norm(h))


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor([[0, 3, 7], [5, 29, 1]]), torch.randn(2, 4, 4, 4)


def _quantized_net(k: int = 16) -> Net:
    torch.manual_seed(0)
    net = Net()
    net.train()
    net(*_inputs())  # BatchNorm running stats: non-trivial buffers
    net.eval()
    quantize_model_(net, None, ["emb|conv|fc"], BLOCKS, _n_centroids(k), verbose=False, seed=0)
    return net


def _assert_state_equal(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert sa[key].dtype == sb[key].dtype and torch.equal(sa[key], sb[key]), key


def test_save_load_round_trip_bit_exact(tmp_path):
    net = _quantized_net()
    assert isinstance(net.emb, PQEmbedding) and isinstance(net.head, PQLinear) and isinstance(net.conv, PQConv2d)
    path = tmp_path / "model.qnk"
    save_compressed(net, path)
    torch.manual_seed(99)
    fresh = Net().eval()  # different initial weights
    names = load_compressed(fresh, path)
    assert sorted(names) == ["conv", "conv1x1", "emb", "fc", "head"]
    assert isinstance(fresh.emb, PQEmbedding) and fresh.emb.padding_idx == 0
    assert fresh.conv.padding_mode == "reflect" and fresh.conv.groups == 2
    assert fresh.emb.centroids is fresh.head.centroids, "tying restored"
    _assert_state_equal(net, fresh)
    tokens, image = _inputs()
    assert torch.equal(net(tokens, image), fresh(tokens, image))


def test_save_load_more_than_256_centroids(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 8))
    quantize_model_(model, None, [r"0"], BLOCKS, _n_centroids(300), n_iter=3, verbose=False, seed=0)
    assert model[0].n_centroids == 300
    save_compressed(model, tmp_path / "m.qnk")
    assert torch.load(tmp_path / "m.qnk", weights_only=True)["layers"][0]["codes"].dtype == torch.int16
    fresh = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 8))
    load_compressed(fresh, tmp_path / "m.qnk")
    _assert_state_equal(model, fresh)
    x = torch.randn(3, 64)
    assert torch.equal(model(x), fresh(x))


def test_saved_file_is_compact(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(512, 512), nn.Linear(512, 512))
    dense_path, path = tmp_path / "dense.pt", tmp_path / "model.qnk"
    torch.save(model.state_dict(), dense_path)
    blocks = {"Linear": ("in_features", {"*": 8})}
    quantize_model_(model, None, [r"\d"], blocks, {"Linear": ("in_features", {"*": 256})}, n_iter=2, verbose=False)
    assert model[0].centroids.dtype == torch.float32  # trainable by any optimizer; the file can be fp16
    save_compressed(model, path, centroid_dtype=torch.float16)
    payload = 2 * (512 * 64 + 256 * 8 * 2 + 512 * 4)  # uint8 codes + fp16 centroids + fp32 bias
    size = path.stat().st_size
    assert size < payload + 8 * 1024, f"{size} B for {payload} B of payload"
    assert dense_path.stat().st_size / size > 20
    data = torch.load(path, weights_only=True)
    assert data["layers"][0]["codes"].dtype == torch.uint8 and data["layers"][0]["codes"].shape == (512, 64)
    assert data["layers"][0]["centroids"].dtype == torch.float16


def test_load_compressed_errors(tmp_path):
    net = _quantized_net()
    path = tmp_path / "model.qnk"
    save_compressed(net, path)

    class Wider(Net):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(8 * 4 * 4, 32)
            self.norm = nn.LayerNorm(32)
            self.head = nn.Linear(32, 30)

    with pytest.raises(ValueError, match=r"'fc' has a weight of shape \(32, 128\)"):
        load_compressed(Wider(), path)

    class Renamed(Net):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Conv2d(8, 16, 1)

    with pytest.raises(ValueError, match="'fc' is a Conv2d in the model, the file holds a PQLinear"):
        load_compressed(Renamed(), path)
    torch.save({"a": torch.zeros(1)}, tmp_path / "plain.pt")
    with pytest.raises(ValueError, match="is not a quantnoise_kernels.pq.compressed file"):
        load_compressed(Net(), tmp_path / "plain.pt")


# ----------------------------------------------------------------------------------------------
# fairseq import


def _fairseq_checkpoint(model: nn.Module, specs: dict[str, tuple[int, int]]) -> dict:
    """A fairseq iPQ state_dict: for each quantized layer random fp32 centroids, int64 assignments in fairseq's
    block order, counts and the bias; every other entry as the dense model holds it."""
    sd = {}
    for name, module in model.named_modules():
        if name in specs:
            k, bs = specs[name]
            n_blocks = module.weight.numel() // bs
            assignments = torch.randint(0, k, (n_blocks,))
            sd[f"{name}.centroids"] = torch.randn(k, bs)
            sd[f"{name}.assignments"] = assignments
            sd[f"{name}.counts"] = torch.bincount(assignments).float()
            if getattr(module, "bias", None) is not None:
                sd[f"{name}.bias"] = torch.randn_like(module.bias)
    quantized = tuple(n + "." for n in specs)
    for key, value in model.state_dict().items():
        if not key.startswith(quantized):
            sd[key] = value.clone() + 1.0 if value.is_floating_point() else value.clone()
    return sd


def test_from_fairseq_state_dict_equals_fairseq_reconstruction():
    torch.manual_seed(0)
    net = Net()
    net.head.weight = nn.Parameter(net.head.weight.detach().clone())  # fairseq unties on quantization
    specs = {"emb": (64, 8), "conv": (32, 9), "conv1x1": (16, 4), "fc": (256, 8)}
    sd = _fairseq_checkpoint(net, specs)
    fresh = Net()
    fresh.head.weight = nn.Parameter(fresh.head.weight.detach().clone())
    names = from_fairseq_state_dict(fresh, {"model": sd})
    assert sorted(names) == sorted(specs)
    for name, (k, bs) in specs.items():
        layer = fresh.get_submodule(name)
        shape = net.get_submodule(name).weight.shape
        expected = reference.pq_decode_fairseq(sd[f"{name}.centroids"], sd[f"{name}.assignments"], shape)
        assert layer.to_dense().weight.shape == shape
        assert torch.equal(layer.to_dense().weight, expected), name  # fp32 centroids kept: exact
        assert torch.equal(to_fairseq_order(layer.interchange_codes()), sd[f"{name}.assignments"])
        assert layer.n_centroids == k and layer.block_size == bs
    assert torch.equal(fresh.fc.bias.detach(), sd["fc.bias"])
    assert torch.equal(fresh.bn.running_mean, sd["bn.running_mean"])
    # forward: the dense model holding fairseq's reconstructed weights
    dense = Net()
    dense.head.weight = nn.Parameter(dense.head.weight.detach().clone())
    dense_sd = {k: v for k, v in sd.items() if not k.endswith((".centroids", ".assignments", ".counts"))}
    for name in specs:
        dense_sd[f"{name}.weight"] = reference.pq_decode_fairseq(
            sd[f"{name}.centroids"], sd[f"{name}.assignments"], net.get_submodule(name).weight.shape
        )
    dense.load_state_dict(dense_sd)
    fresh.eval(), dense.eval()
    tokens, image = _inputs()
    torch.testing.assert_close(fresh(tokens, image), dense(tokens, image), rtol=1e-5, atol=1e-5)


def test_from_fairseq_state_dict_fp16_option_and_errors():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 8))
    sd = _fairseq_checkpoint(model, {"0": (32, 4)})
    fresh = nn.Sequential(nn.Linear(16, 8))
    from_fairseq_state_dict(fresh, sd, centroid_dtype=torch.float16)
    assert fresh[0].centroids.dtype == torch.float16

    bad = dict(sd, **{"0.assignments": sd["0.assignments"][:-1]})
    with pytest.raises(ValueError, match="assignments must be 1-D with out \\* row / block_size = 8 \\* 16 / 4 = 32"):
        from_fairseq_state_dict(nn.Sequential(nn.Linear(16, 8)), bad)
    bad = dict(sd, **{"0.assignments": sd["0.assignments"].clone().fill_(32)})
    with pytest.raises(ValueError, match=r"assignments must lie in \[0, 32\), got range \[32, 32\]"):
        from_fairseq_state_dict(nn.Sequential(nn.Linear(16, 8)), bad)
    bad = dict(sd, **{"0.centroids": torch.randn(32, 3)})
    with pytest.raises(ValueError, match=r"block_size must divide the row length of weight \(16 .*got block_size=3"):
        from_fairseq_state_dict(nn.Sequential(nn.Linear(16, 8)), bad)
    with pytest.raises(RuntimeError, match="unexpected keys \\['extra'\\]"):
        from_fairseq_state_dict(nn.Sequential(nn.Linear(16, 8)), dict(sd, extra=torch.zeros(1)))
    with pytest.raises(ValueError, match="has no module 'missing'"):
        from_fairseq_state_dict(nn.Sequential(nn.Linear(16, 8)), dict(sd, **{"missing.assignments": torch.zeros(1)}))


def test_quantize_then_export_to_fairseq_order_round_trips():
    """Our layers' codes converted to fairseq's order import back to the same weights."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 16), nn.Embedding(20, 8))
    blocks = {"Linear": ("in_features", {"*": 8}), "Embedding": ("embedding_dim", {"*": 4})}
    quantize_model_(model, None, [r"\d"], blocks, _n_centroids(16), verbose=False, centroid_dtype=torch.float32)
    sd = {
        "0.centroids": model[0].centroids.detach(),
        "0.assignments": to_fairseq_order(model[0].interchange_codes()),
        "0.bias": model[0].bias.detach(),
        "1.centroids": model[1].centroids.detach(),
        "1.assignments": to_fairseq_order(model[1].interchange_codes()),
    }
    fresh = nn.Sequential(nn.Linear(32, 16), nn.Embedding(20, 8))
    from_fairseq_state_dict(fresh, sd)
    _assert_state_equal(model, fresh)
