"""Files written before the PQ package's restructure (issue 12) still load, and today's writer writes the same
format.

``data/pq_compressed_v1.qnk`` (5.8 KB) was written by ``save_compressed`` of main at 8904bf5 (the code before
the restructure) for :class:`Tiny` below, after ``torch.manual_seed(0)``, one training forward (BatchNorm
statistics) and ``quantize_model_(m, None, ["emb|conv|fc"], BLOCKS, KS, verbose=False, seed=0)``. It holds a
PQEmbedding, a grouped reflect-padded PQConv2d, a PQLinear reachable under two names (``same_module_as``) and
a PQLinear tied to the embedding (``tied_to``).
"""

from __future__ import annotations

import copy
import os

import torch
import torch.nn.functional as F
from torch import nn

from quantnoise_kernels import reference
from quantnoise_kernels.pq import PQConv2d, PQEmbedding, PQLinear, load_compressed, save_compressed

FIXTURE = os.path.join(os.path.dirname(__file__), "data", "pq_compressed_v1.qnk")


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(6, 4, padding_idx=0)
        self.conv = nn.Conv2d(2, 4, 3, padding=1, groups=2, padding_mode="reflect")
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(16, 4)
        self.head = nn.Linear(4, 6, bias=False)
        self.head.weight = self.emb.weight
        self.shared = self.fc

    def forward(self, tokens: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        h = self.bn(F.relu(self.conv(image)))
        h = self.fc(F.adaptive_avg_pool2d(h, 2).flatten(1)) + self.emb(tokens).mean(1)
        return self.head(h)


def _raw():
    return torch.load(FIXTURE, weights_only=True)


def test_old_file_loads_into_a_fresh_model():
    raw = _raw()
    entries = {e["name"]: e for e in raw["layers"]}
    model = Tiny().eval()
    assert load_compressed(model, FIXTURE) == ["emb", "conv", "fc", "head", "shared"]
    assert isinstance(model.emb, PQEmbedding) and model.emb.padding_idx == 0
    assert isinstance(model.conv, PQConv2d) and model.conv.groups == 2 and model.conv.padding_mode == "reflect"
    assert isinstance(model.fc, PQLinear) and model.shared is model.fc
    assert isinstance(model.head, PQLinear) and model.head.centroids is model.emb.centroids
    for name in ("emb", "conv", "fc"):
        layer, entry = getattr(model, name), entries[name]
        assert torch.equal(layer.interchange_codes().long(), entry["codes"].long()), name
        assert layer.centroids.dtype == entry["centroids"].dtype and torch.equal(layer.centroids, entry["centroids"])
        if entry["bias"] is not None:
            assert torch.equal(layer.bias.detach(), entry["bias"])
        # the decoded weight is the file's codebook lookup (reference decode, not the code under test)
        expected = reference.pq_decode(entry["codes"], entry["centroids"].float(), entry["weight_shape"])
        assert torch.equal(layer.to_dense().weight.detach().reshape(expected.shape), expected), name
    for key, value in raw["state_dict"].items():
        assert torch.equal(model.state_dict()[key], value), key

    # The loaded model computes what the dense model with the decoded weights computes.
    dense = copy.deepcopy(model)
    for name in ("emb", "conv", "fc"):
        setattr(dense, name, getattr(model, name).to_dense())
    dense.shared = dense.fc
    dense.head = model.head.to_dense()
    tokens, image = torch.tensor([[1, 2, 0], [5, 3, 3]]), torch.randn(2, 2, 4, 4)
    torch.testing.assert_close(model(tokens, image), dense(tokens, image), rtol=1e-5, atol=1e-6)


def test_todays_writer_writes_the_old_format(tmp_path):
    model = Tiny().eval()
    load_compressed(model, FIXTURE)
    save_compressed(model, tmp_path / "again.qnk")
    old, new = _raw(), torch.load(tmp_path / "again.qnk", weights_only=True)
    assert new.keys() == old.keys() and new["format"] == old["format"] and new["version"] == old["version"]
    assert len(new["layers"]) == len(old["layers"])
    for a, b in zip(old["layers"], new["layers"]):
        assert a.keys() == b.keys(), a["name"]
        for key in a:
            if isinstance(a[key], torch.Tensor):
                assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), (a["name"], key)
            else:
                assert a[key] == b[key], (a["name"], key)
    assert new["state_dict"].keys() == old["state_dict"].keys()
    assert all(torch.equal(new["state_dict"][k], v) for k, v in old["state_dict"].items())
