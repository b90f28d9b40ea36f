"""PQConv1d against a plain-PyTorch reference (decode + F.conv1d), gradients included; pipeline and save/load."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from devices import device_params
from pq_reference import assert_same_forward_backward, close_rel, decoded_conv
from torch import nn

from quantnoise_kernels import reference
from quantnoise_kernels.pq import PQConv1d, load_compressed, quantize_model_, save_compressed

DEVICES = device_params()

CASES = [
    dict(kernel_size=3, padding=1),
    dict(kernel_size=5, stride=2, padding=2, dilation=1),
    dict(kernel_size=3, dilation=2, groups=2, bias=False),
    dict(kernel_size=1),
    dict(kernel_size=3, padding=1, groups=2, padding_mode="reflect"),
    dict(kernel_size=2, padding=1, padding_mode="circular"),
    dict(kernel_size=3, padding=2, padding_mode="replicate", stride=3),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kw", CASES, ids=str)
def test_pqconv1d_forward_and_gradients_match_reference(device, kw):
    conv = nn.Conv1d(4, 6, **kw)
    in_per_group = 4 // conv.groups
    row = in_per_group * conv.kernel_size[0]
    bs = next(b for b in (4, 3, 2, 1) if row % b == 0)
    K = 16
    codes = torch.randint(0, K, (6, row // bs), dtype=torch.uint8).to(device)
    centroids = torch.randn(K, bs, device=device)
    bias = None if conv.bias is None else torch.randn(6, device=device)
    args = {k: v for k, v in kw.items() if k != "bias"}
    pq = PQConv1d(centroids, codes, bias, 4, 6, **args).to(device)
    x = torch.randn(3, 4, 17, device=device, requires_grad=True)
    y = pq(x)
    x_ref = x.detach().clone().requires_grad_()
    c_ref = centroids.clone().requires_grad_()
    b_ref = None if bias is None else bias.clone().requires_grad_()
    y_ref = decoded_conv(x_ref, codes, c_ref, b_ref, conv)
    assert_same_forward_backward(y, y_ref, [(x, x_ref), (pq.centroids, c_ref), (pq.bias, b_ref)])
    close_rel(pq(x[0].detach()), y_ref[0].detach())  # unbatched input [C, L]


def test_pqconv1d_from_float_round_trip_and_repr():
    conv = nn.Conv1d(8, 4, 3, stride=2, padding=1, padding_mode="circular")
    pq = PQConv1d.from_float(conv, 4, 8, n_iter=3, seed=0)
    assert pq.centroids.dtype == torch.float16 and pq.packed_codes.dtype == torch.uint8
    assert pq.kernel_size == (3,) and pq.stride == (2,) and pq.padding == (1,) and pq.padding_mode == "circular"
    dense = pq.to_dense()
    assert type(dense) is nn.Conv1d and dense.padding_mode == "circular" and dense.stride == (2,)
    x = torch.randn(2, 8, 11)
    close_rel(pq(x), dense(x))
    expected = reference.pq_decode(pq.interchange_codes(), pq.centroids.float(), tuple(conv.weight.shape))
    assert torch.equal(dense.weight.detach(), expected)
    assert torch.equal(dense.bias.detach(), conv.bias.detach())
    assert repr(pq).startswith("PQConv1d(in_channels=8, out_channels=4, kernel_size=(3,), stride=(2,)")


def test_pqconv1d_bad_inputs():
    with pytest.raises(ValueError, match="string padding 'same' is not supported"):
        PQConv1d.from_float(nn.Conv1d(4, 4, 3, padding="same"), 4, 4)
    with pytest.raises(TypeError, match="module must be a Conv1d, got Conv2d"):
        PQConv1d.from_float(nn.Conv2d(4, 4, 3), 4, 4)
    pq = PQConv1d(torch.randn(4, 4), torch.zeros(2, 3, dtype=torch.uint8), None, 4, 2, 3)
    with pytest.raises(ValueError, match=r"input must be \[C, \*spatial\] or \[N, C, \*spatial\]"):
        pq(torch.randn(2, 2, 4, 5))
    with pytest.raises(ValueError, match=r"stride must be 1 ints >= 1, got \(0,\)"):
        PQConv1d(torch.randn(4, 4), torch.zeros(2, 3, dtype=torch.uint8), None, 4, 2, 3, stride=0)


class Speech(nn.Module):
    """A fairseq-style convolutional front end: Conv1d stack, then a projection."""

    def __init__(self) -> None:
        super().__init__()
        self.convs = nn.ModuleList([nn.Conv1d(8, 16, 3, padding=1), nn.Conv1d(16, 16, 5, stride=2, groups=2)])
        self.proj = nn.Linear(16, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            x = F.relu(conv(x))
        return self.proj(x.transpose(1, 2))


def test_quantize_model_save_load_conv1d(tmp_path):
    torch.manual_seed(0)
    model = Speech()
    blocks = {"Conv1d": ("kernel_size", {"(3,)": 4, "(5,)": 5}), "Linear": ("in_features", {"*": 4})}
    ks = {"Conv1d": ("groups", {"*": 8}), "Linear": ("in_features", {"*": 8})}
    names = quantize_model_(model, None, [r"convs|proj"], blocks, ks, n_iter=3, verbose=False, seed=0)
    assert names == ["convs.0", "convs.1", "proj"]
    assert all(isinstance(c, PQConv1d) for c in model.convs) and model.convs[1].block_size == 5
    x = torch.randn(2, 8, 20)
    dense = Speech()
    for i, conv in enumerate(model.convs):
        dense.convs[i] = conv.to_dense()
    dense.proj = model.proj.to_dense()
    close_rel(model(x), dense(x))
    save_compressed(model, tmp_path / "speech.qnk")
    fresh = Speech()
    assert load_compressed(fresh, tmp_path / "speech.qnk") == names
    assert isinstance(fresh.convs[1], PQConv1d) and fresh.convs[1].stride == (2,) and fresh.convs[1].groups == 2
    assert torch.equal(model(x), fresh(x))
