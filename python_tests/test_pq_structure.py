"""The PQ package's structure: the layer registry, config()/from_config(), the plan/apply split of
quantize_model_, and the one fairseq reader."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from quantnoise_kernels import reference
from quantnoise_kernels.pq import (
    PQConv1d,
    PQConv2d,
    PQEmbedding,
    PQLayer,
    PQLinear,
    from_fairseq_state_dict,
    quantize_model_,
    register_pq_layer,
    to_fairseq_order,
)
from quantnoise_kernels.pq.pipeline import apply_plan, plan_quantization
from quantnoise_kernels.pq.registry import is_pq_layer, pq_class_by_dense_name, pq_class_for, pq_layer_classes

DENSE = [
    nn.Linear(12, 6),
    nn.Linear(12, 6, bias=False),
    nn.Embedding(10, 8, padding_idx=2, max_norm=1.5, scale_grad_by_freq=True),
    nn.Conv1d(4, 6, 3, stride=2, padding=1, groups=2, padding_mode="reflect"),
    nn.Conv2d(4, 6, (3, 1), dilation=(2, 1), padding=(1, 0), bias=False),
]


def test_registry_maps_each_dense_class_to_its_pq_layer():
    assert pq_layer_classes() == {
        nn.Linear: PQLinear,
        nn.Embedding: PQEmbedding,
        nn.Conv1d: PQConv1d,
        nn.Conv2d: PQConv2d,
    }
    assert pq_class_for(nn.Conv1d(2, 2, 1)) is PQConv1d and pq_class_for(nn.LayerNorm(4)) is None
    assert pq_class_by_dense_name("Conv2d") is PQConv2d and pq_class_by_dense_name("Conv3d") is None
    assert is_pq_layer(PQLinear.from_float(nn.Linear(8, 4), 4, 4, n_iter=1)) and not is_pq_layer(nn.Linear(8, 4))
    with pytest.raises(TypeError, match="expected a PQLayer subclass"):
        register_pq_layer(nn.Linear)

    class Other(PQLinear):
        pass

    with pytest.raises(ValueError, match="Linear already has the PQ layer PQLinear"):
        register_pq_layer(Other)


@pytest.mark.parametrize("dense", DENSE, ids=lambda m: type(m).__name__)
def test_from_float_config_from_config_to_dense(dense):
    pq_cls = pq_class_for(dense)
    layer = pq_cls.from_float(dense, 2, 4, n_iter=2, seed=0)
    assert isinstance(layer, PQLayer) and layer.config() == pq_cls.config_of(dense)
    again = pq_cls.from_config(layer.config(), layer.centroids, layer.interchange_codes(), layer.bias)
    assert type(again) is pq_cls and again.config() == layer.config()
    for key, value in layer.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key
    back = layer.to_dense()
    assert type(back) is type(dense) and pq_cls.config_of(back) == pq_cls.config_of(dense)
    assert (getattr(back, "bias", None) is None) == (getattr(dense, "bias", None) is None)
    decoded = reference.pq_decode(layer.interchange_codes(), layer.centroids.float(), tuple(dense.weight.shape))
    assert torch.equal(back.weight.detach(), decoded)
    with pytest.raises(ValueError, match="config has unknown keys"):
        pq_cls.from_config(dict(layer.config(), extra=1), layer.centroids, layer.interchange_codes())


def test_pq_layer_checks_codes_and_bias():
    c, codes = torch.randn(4, 4), torch.zeros(6, 3, dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"bias must have shape \(6,\)"):
        PQLinear(c, codes, torch.zeros(5), 12, 6)
    with pytest.raises(TypeError, match="codes must be an integer tensor"):
        PQLinear(c, codes.float(), None, 12, 6)
    with pytest.raises(ValueError, match="block_size must be positive, got 0"):
        PQLinear(torch.randn(4, 0), codes, None, 12, 6)
    with pytest.raises(ValueError, match="takes no bias"):
        PQEmbedding.from_config(PQEmbedding.config_of(nn.Embedding(6, 12)), c, codes, torch.zeros(6))


class Two(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(16, 16), nn.Linear(16, 8)


def _snapshot(model: nn.Module):
    return {k: v.clone() for k, v in model.state_dict().items()}, [type(m) for m in model.modules()]


def test_plan_changes_nothing_and_apply_replaces():
    model = Two()
    before = _snapshot(model)
    blocks, ks = {"Linear": ("in_features", {"*": 4})}, {"Linear": ("in_features", {"*": 8})}
    plan = plan_quantization(model, ["a|b"], blocks, ks)
    assert [(p.name, p.pq_cls, p.block_size, p.n_centroids) for p in plan.layers] == [
        ("a", PQLinear, 4, 8),
        ("b", PQLinear, 4, 8),
    ]
    after = _snapshot(model)
    assert before[1] == after[1] and all(torch.equal(before[0][k], v) for k, v in after[0].items())
    assert apply_plan(model, plan, verbose=False, n_iter=2, seed=0) == ["a", "b"]
    assert isinstance(model.a, PQLinear) and isinstance(model.b, PQLinear)


def test_every_layer_is_built_before_any_is_replaced():
    """k-means fails on the second layer (every block of b is zero: its clusters stay empty, and warnings are
    errors here): the first one must still be dense."""
    model = Two()
    with torch.no_grad():
        model.b.weight.zero_()
    before = _snapshot(model)
    blocks, ks = {"Linear": ("in_features", {"*": 4})}, {"Linear": ("in_features", {"*": 8})}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(UserWarning, match="kmeans: 7 of 8 clusters are empty"):
            quantize_model_(model, None, ["a|b"], blocks, ks, n_iter=2, verbose=False)
    after = _snapshot(model)
    assert before[1] == after[1] and all(torch.equal(before[0][k], v) for k, v in after[0].items())


def _fairseq_sd(with_bias: bool = True) -> dict:
    centroids = torch.randn(8, 4)
    sd = {"0.centroids": centroids, "0.assignments": torch.randint(0, 8, (8 * 16 // 4,)), "0.counts": torch.ones(8)}
    if with_bias:
        sd["0.bias"] = torch.randn(8)
    return sd


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda sd: sd.pop("0.bias"), r"'0.bias' is missing for a layer with a bias"),
        (lambda sd: sd.update({"0.centroids": torch.randn(8)}), r"'0.centroids' must be a \[K, block_size\] tensor"),
    ],
)
def test_both_fairseq_paths_raise_the_same_error(make, match):
    """from_fairseq_state_dict and quantize_model_(n_iter=0, state_dict=...) read checkpoints alike."""
    sd = _fairseq_sd()
    make(sd)
    blocks, ks = {"Linear": ("in_features", {"*": 4})}, {"Linear": ("in_features", {"*": 8})}
    with pytest.raises(ValueError, match=match):
        from_fairseq_state_dict(nn.Sequential(nn.Linear(16, 8)), sd)
    model = nn.Sequential(nn.Linear(16, 8))
    with pytest.raises(ValueError, match=match):
        quantize_model_(model, None, ["0"], blocks, ks, n_iter=0, state_dict=sd)
    assert type(model[0]) is nn.Linear


def test_both_fairseq_paths_build_the_same_layer():
    sd = _fairseq_sd()
    a, b = nn.Sequential(nn.Linear(16, 8)), nn.Sequential(nn.Linear(16, 8))
    from_fairseq_state_dict(a, sd)
    blocks, ks = {"Linear": ("in_features", {"*": 4})}, {"Linear": ("in_features", {"*": 8})}
    quantize_model_(b, None, ["0"], blocks, ks, n_iter=0, state_dict=sd, verbose=False)
    assert torch.equal(to_fairseq_order(a[0].interchange_codes()), sd["0.assignments"])
    for key, value in a.state_dict().items():
        assert torch.equal(b.state_dict()[key], value), key
