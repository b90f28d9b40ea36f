"""quantize_model_ on the models users have (issue 13): quant_noise-wrapped layers, subclasses, layers with fewer
blocks than K, SizeTracker's figures, and all-or-nothing: a call that fails leaves the model exactly as it was."""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch
from model_state import assert_unchanged, snapshot
from torch import nn
from torch.nn.modules.linear import NonDynamicallyQuantizableLinear

import quantnoise_kernels as qn
from quantnoise_kernels.pq import PQConv2d, PQEmbedding, PQLinear, SizeTracker, quantize_model_

BLOCKS = {
    "Linear": ("in_features", {"*": 4}),
    "Conv2d": ("kernel_size", {"(3, 3)": 9, "(1, 1)": 4}),
    "Embedding": ("embedding_dim", {"*": 4}),
}
K8 = {"Linear": ("in_features", {"*": 8}), "Conv2d": ("groups", {"*": 8}), "Embedding": ("embedding_dim", {"*": 8})}
K256 = {name: (feature, {"*": 256}) for name, (feature, _) in K8.items()}
_MB = 1024 * 1024


class Net(nn.Module):
    """Four quantizable layers in module order emb, conv, fc1, fc2 (fc2 last: failures there used to come after
    the others were replaced)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(32, 8)
        self.conv = nn.Conv2d(4, 8, 3)
        self.fc1 = nn.Linear(16, 16)
        self.fc2 = nn.Linear(16, 8)


def _quantize(model: nn.Module, tracker=None, **kwargs) -> list[str]:
    kwargs = {"n_iter": 2, "verbose": False, "seed": 0, **kwargs}
    return quantize_model_(model, tracker, [".*"], BLOCKS, kwargs.pop("ks", K8), **kwargs)


# --------------------------------------------------------------------------------------- quant_noise-wrapped


def test_wrapped_layers_quantize_like_the_layers_they_wrap():
    plain = Net()
    wrapped = copy.deepcopy(plain)
    for name, bs in (("emb", 4), ("conv", 9), ("fc1", 4), ("fc2", 4)):
        qn.quant_noise(getattr(wrapped, name), 0.2, bs)
    tracker = SizeTracker(wrapped)
    assert _quantize(wrapped, tracker) == _quantize(plain) == ["emb", "conv", "fc1", "fc2"]
    for name, cls in (("emb", PQEmbedding), ("conv", PQConv2d), ("fc1", PQLinear), ("fc2", PQLinear)):
        assert type(getattr(wrapped, name)) is cls  # the wrapper is gone, not a QuantNoise subclass
    assert plain.state_dict().keys() == wrapped.state_dict().keys()
    for key, value in plain.state_dict().items():  # the same weights gave the same codes and centroids
        assert torch.equal(wrapped.state_dict()[key], value), key
    assert tracker.n_quantized_layers == 4


def test_wrapped_layer_tied_to_a_plain_one_is_quantized_with_it():
    model = nn.ModuleDict({"emb": nn.Embedding(32, 8), "out": nn.Linear(8, 32, bias=False)})
    model["out"].weight = model["emb"].weight
    qn.quant_noise(model["emb"], 0.1, 4)
    blocks = {"Linear": ("in_features", {"*": 4}), "Embedding": ("embedding_dim", {"*": 4})}
    names = quantize_model_(model, None, ["emb"], blocks, K8, n_iter=2, verbose=False, seed=0)
    assert names == ["emb", "out"] and model["emb"].centroids is model["out"].centroids


# --------------------------------------------------------------------------------------------- subclasses


class Tagged(nn.Linear):
    """A subclass that keeps nn.Linear's forward: quantizable."""


class Doubled(nn.Linear):
    """A subclass with its own forward: neither quant_noise nor a PQLinear can reproduce it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * super().forward(x)


class OwnConv(nn.Conv2d):
    def _conv_forward(self, x, weight, bias):
        return super()._conv_forward(x, weight.abs(), bias)


@pytest.mark.parametrize("cls", [Tagged, NonDynamicallyQuantizableLinear])
def test_subclass_that_keeps_its_forward_is_quantized(cls):
    model = nn.Sequential(cls(16, 8))
    assert quantize_model_(model, None, ["0"], BLOCKS, K8, n_iter=2, verbose=False) == ["0"]  # config under "Linear"
    assert type(model[0]) is PQLinear


@pytest.mark.parametrize(
    "layer,match",
    [
        (Doubled(16, 8), "'fc2' .* is a Doubled, a subclass of Linear that overrides forward"),
        (OwnConv(16, 8, 1), "'fc2' .* is a OwnConv, a subclass of Conv2d that overrides _conv_forward"),
    ],
)
def test_subclass_with_its_own_forward_is_refused_and_nothing_changes(layer, match):
    model = Net()
    model.fc2 = layer
    before = snapshot(model)
    with pytest.raises(ValueError, match=match):
        _quantize(model)
    assert_unchanged(model, before)


def test_quant_noise_refuses_a_subclass_with_its_own_forward():
    layer = Doubled(8, 8)
    with pytest.raises(TypeError, match="module is a Doubled, a subclass of Linear that overrides forward"):
        qn.quant_noise(layer, 0.5, 4)
    assert type(layer) is Doubled and not hasattr(layer, "quant_noise_config")


def test_quant_noise_on_a_subclass_that_keeps_its_forward_noises_it():
    torch.manual_seed(0)
    tagged = Tagged(8, 8)
    plain = nn.Linear(8, 8)
    plain.load_state_dict(tagged.state_dict())
    qn.quant_noise(tagged, 0.5, 4)
    qn.quant_noise(plain, 0.5, 4)
    x = torch.randn(3, 8)
    torch.manual_seed(1)
    y_tagged = tagged(x)
    torch.manual_seed(1)
    torch.testing.assert_close(y_tagged, plain(x), rtol=0, atol=0)
    assert not torch.allclose(y_tagged, nn.functional.linear(x, tagged.weight, tagged.bias))


# ------------------------------------------------------------------------------ fewer blocks than centroids


class SmallConvs(nn.Module):
    """MobileNet's small layers: a first conv 3 -> 32 (96 blocks of 9), a depthwise 3x3 over 32 channels (32
    blocks), and a pointwise conv with enough blocks (64 * 32 / 4 = 512)."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Conv2d(3, 32, 3, padding=1)
        self.dw = nn.Conv2d(32, 32, 3, padding=1, groups=32)
        self.pw = nn.Conv2d(32, 64, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pw(self.dw(self.first(x)))


def test_fewer_blocks_than_k_reduces_k_losslessly_by_default():
    model = SmallConvs()
    with torch.no_grad():
        model.dw.weight[1] = model.dw.weight[0]  # a repeated block: 31 distinct blocks
    dense = copy.deepcopy(model)
    tracker = SizeTracker(model)
    with pytest.warns(UserWarning) as record:
        names = _quantize(model, tracker, ks=K256, centroid_dtype=torch.float32)
    messages = [str(w.message) for w in record]
    assert any(
        "layer 'first' has 96 blocks of 9, fewer than n_centroids=256: n_centroids reduced to its 96" in m
        for m in messages
    )
    assert any(
        "layer 'dw' has 32 blocks of 9, fewer than n_centroids=256: n_centroids reduced to its 31" in m
        for m in messages
    )
    assert names == ["first", "dw", "pw"]
    assert (model.first.n_centroids, model.dw.n_centroids, model.pw.n_centroids) == (96, 31, 256)
    for name in ("first", "dw"):  # lossless: the decoded weight is the weight
        assert torch.equal(getattr(model, name).to_dense().weight, getattr(dense, name).weight), name
    assert tracker.n_quantized_layers == 3
    expected_centroids = (96 * 9 + 31 * 9 + 256 * 4) * 2 / _MB  # fairseq's K * bs * 2 bytes, with the K used
    assert math.isclose(tracker.size_centroids, expected_centroids, rel_tol=1e-12)
    bits = math.log2(96) / 9 * 32 * 27 + math.log2(31) / 9 * 32 * 9 + math.log2(256) / 4 * 64 * 32
    assert math.isclose(tracker.size_index, bits / 8 / _MB, rel_tol=1e-12)


def test_fewer_blocks_skip_leaves_the_layer_dense_and_uncounted():
    model = SmallConvs()
    first, dw = model.first, model.dw
    tracker = SizeTracker(model)
    with pytest.warns(UserWarning) as record:
        names = _quantize(model, tracker, ks=K256, fewer_blocks="skip")
    messages = " | ".join(str(w.message) for w in record)
    assert "layer 'first' has 96 blocks of 9, fewer than n_centroids=256: skipped" in messages
    assert "layer 'dw' has 32 blocks of 9, fewer than n_centroids=256: skipped" in messages
    assert names == ["pw"] and model.first is first and model.dw is dw
    assert tracker.n_quantized_layers == 1
    assert math.isclose(tracker.size_non_quantized, (first.weight.numel() + dw.weight.numel() + 32 + 32 + 64) * 4 / _MB)


def test_fewer_blocks_error_raises_before_anything_changes():
    model = SmallConvs()
    before = snapshot(model)
    with pytest.raises(ValueError, match="layer 'first' has 96 blocks of 9, fewer than n_centroids=256"):
        _quantize(model, ks=K256, fewer_blocks="error")
    assert_unchanged(model, before)


# ------------------------------------------------------------------------------------------ all or nothing


def _poison(value: float):
    def make(model, kwargs):
        with torch.no_grad():
            model.fc2.weight[3, 5] = value

    return make


def _set(**updates):
    def make(model, kwargs):
        kwargs.update(updates)

    return make


def _fc2_config(key: str, value):
    def make(model, kwargs):
        base = BLOCKS if key == "blocks" else K8
        cfg = dict(base, Linear=("fuzzy_name", {"fc2": value, "*": base["Linear"][1]["*"]}))
        kwargs["blocks" if key == "blocks" else "ks"] = cfg

    return make


def _subclass_fc2(model, kwargs):
    model.fc2 = Doubled(16, 8)


def _stray_tie(model, kwargs):
    model.extra = nn.Module()
    model.extra.w = model.fc2.weight


def _fc2_zero_and_warnings_as_errors(model, kwargs):
    with torch.no_grad():
        model.fc2.weight.zero_()  # every block equal: k-means leaves 7 of 8 clusters empty and warns
    warnings.simplefilter("error")


def _checkpoint_without_fc2(model, kwargs):
    sd = {}
    for name, n_blocks, bs in (("emb", 64, 4), ("conv", 32, 9), ("fc1", 64, 4)):  # fc2's entries are missing
        sd[f"{name}.centroids"] = torch.randn(8, bs)
        sd[f"{name}.assignments"] = torch.randint(0, 8, (n_blocks,))
        if getattr(model, name).bias is not None if name != "emb" else False:
            sd[f"{name}.bias"] = torch.randn_like(getattr(model, name).bias)
    kwargs.update(n_iter=0, state_dict=sd)


FAILING = [
    ("inf weight", _poison(float("inf")), ValueError, "layer 'fc2': its weight must be finite, got 1 NaN or infinite"),
    ("NaN weight", _poison(float("nan")), ValueError, "layer 'fc2': its weight must be finite"),
    ("block size", _fc2_config("blocks", 5), ValueError, r"layer 'fc2'.*block_size must divide the row length"),
    ("K = 0", _fc2_config("ks", 0), ValueError, r"n_centroids_config\['Linear'\]\['fc2'\] must be a positive integer"),
    ("K too large", _fc2_config("ks", 70000), ValueError, r"layer 'fc2': n_centroids must be an int in \[1, 65536\]"),
    ("K not an int", _fc2_config("ks", 2.5), ValueError, "must be a positive integer, got 2.5"),
    ("fewer blocks", _set(ks=K256, fewer_blocks="error"), ValueError, "layer 'emb' has 64 blocks of 4, fewer"),
    ("subclass", _subclass_fc2, ValueError, "'fc2' .* is a Doubled, a subclass of Linear that overrides forward"),
    ("stray tie", _stray_tie, ValueError, r"the weight of 'fc2' is also registered as \['extra.w'\]"),
    ("no config", _set(ks={"Linear": K8["Linear"]}), KeyError, "layer 'emb': module type Embedding is not in"),
    ("eps NaN", _set(eps=float("nan")), ValueError, "eps must be a finite number >= 0, got nan"),
    ("n_iter", _set(n_iter=-1), ValueError, "n_iter must be an int >= 0, got -1"),
    ("max_tentatives", _set(max_tentatives=1.5), ValueError, "max_tentatives must be an int >= 0, got 1.5"),
    ("seed negative", _set(seed=-1), ValueError, r"seed must be None or an int in \[0, 2\*\*63\), got -1"),
    ("seed 2**63", _set(seed=2**63), ValueError, r"seed must be None or an int in \[0, 2\*\*63\)"),
    ("centroid dtype", _set(centroid_dtype=torch.int8), TypeError, "centroid_dtype must be one of"),
    ("fewer_blocks", _set(fewer_blocks="drop"), ValueError, "fewer_blocks must be one of"),
    ("step", _set(step=3), IndexError, r"step must be in \[0, 1\), got 3"),
    ("regex", _set(pattern="fc["), ValueError, "pattern 'fc\\[' is not a regex"),
    ("k-means fails", _fc2_zero_and_warnings_as_errors, UserWarning, "kmeans: 7 of 8 clusters are empty"),
    ("checkpoint", _checkpoint_without_fc2, ValueError, "layer 'fc2': state_dict has no 'fc2.centroids'"),
]


@pytest.mark.parametrize("make,error,match", [c[1:] for c in FAILING], ids=[c[0] for c in FAILING])
def test_failing_call_leaves_the_model_exactly_as_it_was(make, error, match):
    model = Net()
    kwargs: dict = {}
    with warnings.catch_warnings():
        make(model, kwargs)
        before = snapshot(model)
        pattern = kwargs.pop("pattern", ".*")
        blocks, ks = kwargs.pop("blocks", BLOCKS), kwargs.pop("ks", K8)
        tracker = SizeTracker(model)
        with pytest.raises(error, match=match):
            quantize_model_(model, tracker, [pattern], blocks, ks, **{"n_iter": 2, "verbose": False, **kwargs})
    assert_unchanged(model, before)
    assert tracker.n_quantized_layers == 0


def test_a_replacement_failing_half_way_puts_the_replaced_modules_back(monkeypatch):
    from quantnoise_kernels.pq import _model

    real, calls = _model.replace_module, []

    def flaky(model, name, new):
        calls.append(name)
        if len(calls) == 3:
            raise RuntimeError("planted failure")
        real(model, name, new)

    monkeypatch.setattr(_model, "replace_module", flaky)
    model = Net()
    before = snapshot(model)
    with pytest.raises(RuntimeError, match="planted failure"):
        _quantize(model)
    assert_unchanged(model, before)


def test_quantized_layers_finetune_with_adam():
    """The documented loop: quantize a stage, then Adam on the model. float16 centroid Parameters broke it (Adam's
    eps is 0 in float16: an empty cluster's zero gradient gives 0/0 = NaN); the default is float32 now."""
    torch.manual_seed(0)
    model = Net()
    _quantize(model, ks=K256 | {"Linear": ("in_features", {"*": 64})})
    assert model.fc1.centroids.dtype == torch.float32
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(3):
        optimizer.zero_grad()
        model.fc2(model.fc1(torch.randn(5, 16))).square().mean().backward()
        optimizer.step()
    assert all(torch.isfinite(p).all() for p in model.parameters())
