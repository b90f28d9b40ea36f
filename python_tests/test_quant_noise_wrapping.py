"""quant_noise's wrapper as a module users save, copy and nest (issue 13): pickling and torch.save of wrapped
modules, the warning when a parent reads a wrapped child's weight directly (nn.MultiheadAttention), and
remove_quant_noise deciding by the class, not by an attribute."""

from __future__ import annotations

import copy
import io
import pickle
import warnings

import pytest
import torch
from torch import nn

import quantnoise_kernels as qn
from quantnoise_kernels.noise import noised_weight


class Tagged(nn.Linear):
    """A module-level subclass that keeps nn.Linear's forward."""


def _model() -> nn.Sequential:
    return nn.Sequential(
        qn.quant_noise(nn.Embedding(10, 8), 0.3, 4),
        qn.quant_noise(nn.Linear(8, 8), 0.3, 4),
        qn.quant_noise(Tagged(8, 8), 0.2, 8, rescale=False, straight_through=False),
        qn.quant_noise(nn.Conv1d(8, 8, 1), 0.3, 8),
    )


def _forward(model: nn.Sequential, seed: int) -> torch.Tensor:
    torch.manual_seed(seed)
    h = model[2](model[1](model[0](torch.tensor([[1, 2, 3]]))))
    return model[3](h.transpose(1, 2))


def _roundtrip_pickle(model):
    return pickle.loads(pickle.dumps(model))


def _roundtrip_torch_save(model):
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


@pytest.mark.parametrize("roundtrip", [_roundtrip_pickle, _roundtrip_torch_save, copy.deepcopy])
def test_wrapped_modules_pickle_and_copy(roundtrip):
    model = _model()
    restored = roundtrip(model)
    for original, copied in zip(model, restored):
        assert type(copied) is type(original)  # the same wrapper class, found again
        assert copied.quant_noise_config == original.quant_noise_config
        assert torch.equal(copied.weight, original.weight) and copied.weight is not original.weight
    torch.testing.assert_close(_forward(restored, 7), _forward(model, 7), rtol=0, atol=0)  # same noise, same seed
    qn.remove_quant_noise(restored[2])
    assert type(restored[2]) is Tagged


def test_remove_quant_noise_decides_by_the_class_not_an_attribute():
    module = nn.Linear(4, 4)
    module.quant_noise_config = "not a wrapper"  # an unwrapped module that merely has the attribute
    with pytest.raises(ValueError, match="module Linear is not wrapped by quant_noise"):
        qn.remove_quant_noise(module)
    assert type(module) is nn.Linear
    plain = nn.Module()
    plain.quant_noise_config = 1
    with pytest.raises(ValueError, match="not wrapped"):
        qn.remove_quant_noise(plain)
    assert type(plain) is nn.Module
    with pytest.raises(ValueError, match="not wrapped"):
        noised_weight(module)


def test_a_wrapped_child_whose_weight_the_parent_reads_directly_warns():
    """nn.MultiheadAttention passes out_proj.weight to F.multi_head_attention_forward: out_proj's forward never
    runs, so the noise never applies (two forwards at p = 0.9 are identical). The first training backward says so."""
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 2)
    qn.quant_noise(mha.out_proj, 0.9, 8)
    q = torch.randn(3, 1, 16)
    out, _ = mha(q, q, q)
    assert torch.equal(out, mha(q, q, q)[0])  # no noise: the reason for the warning
    with pytest.warns(UserWarning, match="NonDynamicallyQuantizableLinear received a gradient in training, but the"):
        out.sum().backward()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per module
        mha(q, q, q)[0].sum().backward()


def test_no_warning_when_the_noise_is_applied():
    layer = qn.quant_noise(nn.Linear(8, 8), 0.5, 4)
    parent_read = qn.quant_noise(nn.Linear(8, 8), 0.5, 4)
    x = torch.randn(2, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        layer(x).sum().backward()
        # a parent that reads the weight itself, through noised_weight: the noise applies, no warning
        nn.functional.linear(x, noised_weight(parent_read)).sum().backward()
        layer.eval()
        frozen = qn.quant_noise(nn.Linear(8, 8), 0.5, 4).eval()  # eval: no noise is expected
        nn.functional.linear(x, frozen.weight).sum().backward()
