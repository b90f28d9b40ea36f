"""Calibration capture for activation-aware iPQ (issue 10): ``quantize_model_(..., calibration=...)``.

The streamed second moments against the ones computed from all inputs at once (Linear, Conv2d, Conv1d,
Embedding), lower output error than plain iPQ at the same bytes on held-out inputs, the batch forms, hooks
removed and training flags restored, all-or-nothing on failure. Budget: ~5 s."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from quantnoise_kernels import pq
from quantnoise_kernels.pq.calibration import run_calibration

CFG_BS = {
    "Linear": ("in_features", {"*": 4}),
    "Conv2d": ("in_channels", {"*": 9}),
    "Embedding": ("embedding_dim", {"*": 4}),
}
CFG_K = {
    "Linear": ("in_features", {"*": 16}),
    "Conv2d": ("in_channels", {"*": 16}),
    "Embedding": ("embedding_dim", {"*": 16}),
}


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(50, 16)
        self.fc1 = nn.Linear(16, 32)
        self.fc2 = nn.Linear(32, 8)
        self.drop = nn.Dropout(0.1)

    def forward(self, ids):
        return self.fc2(self.drop(torch.relu(self.fc1(self.emb(ids)))))


def test_streamed_moments_match_all_inputs():
    lin, conv2, conv1, emb = nn.Linear(12, 3), nn.Conv2d(2, 4, 3, padding=1), nn.Conv1d(3, 2, 2), nn.Embedding(9, 8)
    model = nn.ModuleDict(dict(lin=lin, conv2=conv2, conv1=conv1, emb=emb))
    xs = [torch.randn(5, 7, 12), torch.randn(6, 7, 12)]
    images, seqs, ids = torch.randn(3, 2, 5, 5), torch.randn(4, 3, 6), torch.randint(0, 9, (4, 5))

    def run(m):
        for x in xs:
            m["lin"](x)
        m["conv2"](images)
        m["conv1"](seqs)
        m["emb"](ids)

    layers = [("lin", lin, 4), ("conv2", conv2, 6), ("conv1", conv1, 2), ("emb", emb, 4)]
    hs = run_calibration(model, layers, run, damp=0.0)
    x = torch.cat([t.reshape(-1, 12) for t in xs]).double()
    want = torch.einsum("tgd,tge->gde", x.view(-1, 3, 4), x.view(-1, 3, 4)) / x.shape[0]
    torch.testing.assert_close(hs["lin"].double(), want, rtol=1e-5, atol=1e-6)
    cols = F.unfold(images, 3, padding=1).transpose(1, 2).reshape(-1, 18).double().view(-1, 3, 6)
    close = {"rtol": 1e-5, "atol": 1e-6}
    torch.testing.assert_close(hs["conv2"].double(), torch.einsum("tgd,tge->gde", cols, cols) / cols.shape[0], **close)
    cols1 = seqs.unfold(2, 2, 1).permute(0, 2, 1, 3).reshape(-1, 6).double().view(-1, 3, 2)
    torch.testing.assert_close(
        hs["conv1"].double(), torch.einsum("tgd,tge->gde", cols1, cols1) / cols1.shape[0], **close
    )
    freq = torch.bincount(ids.reshape(-1), minlength=9).float() / ids.numel()
    torch.testing.assert_close(hs["emb"], freq[:, None].expand(9, 8).reshape(-1, 4))
    diag = run_calibration(model, layers[:1], run, kind="diag", damp=0.0)["lin"]
    torch.testing.assert_close(diag.double(), want.diagonal(0, -2, -1), **close)


@pytest.mark.parametrize("kind", ["full", "diag"])
def test_calibrated_ipq_has_lower_output_error_at_the_same_bytes(kind):
    """The layer's output error on held-out inputs (what activation-aware k-means minimises), same K and blocks."""
    g = torch.Generator().manual_seed(0)
    # Anisotropic inputs, correlated inside each block of 4 (what the per-block H captures)
    mixing = torch.block_diag(*[torch.randn(4, 4, generator=g) for _ in range(8)]) * torch.logspace(-1.5, 1, 32)
    calib = [torch.randn(64, 32, generator=g) @ mixing for _ in range(4)]
    held = torch.randn(256, 32, generator=g) @ mixing
    torch.manual_seed(0)
    dense = nn.Sequential(nn.Linear(32, 64))
    errors, sizes = {}, {}
    for mode in ("plain", "aware"):
        model = copy.deepcopy(dense)
        tracker = pq.SizeTracker(model)
        kwargs = {"calibration": calib, "calibration_h": kind} if mode == "aware" else {}
        pq.quantize_model_(model, tracker, "0", CFG_BS, CFG_K, n_iter=10, seed=0, verbose=False, **kwargs)
        with torch.no_grad():
            errors[mode] = float((model(held) - dense(held)).norm() / (dense(held) - dense[0].bias).norm())
        sizes[mode] = str(tracker)
    assert sizes["plain"] == sizes["aware"]
    assert errors["aware"] < (0.75 if kind == "full" else 0.85) * errors["plain"], errors  # diag ignores correlations


def test_batch_forms_hooks_and_flags():
    model = Net().train()
    model.fc2.eval()
    ids = torch.randint(0, 50, (4, 6))
    for calibration in ([ids], [(ids,)], [{"ids": ids}], lambda m: m(ids)):
        m = copy.deepcopy(model)
        pq.quantize_model_(m, None, "fc1", CFG_BS, CFG_K, n_iter=2, seed=0, verbose=False, calibration=calibration)
        assert pq.is_pq_layer(m.fc1)
        assert m.training and not m.fc2.training and m.drop.training
        assert not m.fc2._forward_hooks and not m.emb._forward_hooks


def test_failing_calibration_leaves_the_model_as_it_was():
    model = Net().train()
    before = copy.deepcopy(model.state_dict())

    def broken(m):
        m(torch.randint(0, 50, (2, 3)))
        raise RuntimeError("data loader died")

    with pytest.raises(RuntimeError, match="data loader died"):
        pq.quantize_model_(model, None, "fc1|fc2", CFG_BS, CFG_K, n_iter=2, verbose=False, calibration=broken)
    assert type(model.fc1) is nn.Linear and not model.fc1._forward_hooks and model.training and model.drop.training
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    with pytest.raises(ValueError, match="calibration_h must be one of"):
        pq.quantize_model_(model, None, "fc1", CFG_BS, CFG_K, verbose=False, calibration=[], calibration_h="low")
    with pytest.raises(ValueError, match="calibration_damp must be a finite number >= 0, got -1"):
        pq.quantize_model_(model, None, "fc1", CFG_BS, CFG_K, verbose=False, calibration=[], calibration_damp=-1)
    assert type(model.fc1) is nn.Linear


def test_embedding_rows_are_weighted_by_frequency():
    torch.manual_seed(0)
    model = Net()
    hot = torch.randint(0, 3, (16, 8))  # only rows 0..2 are looked up
    pq.quantize_model_(model, None, "emb", CFG_BS, CFG_K, n_iter=5, seed=0, verbose=False, calibration=[hot])
    torch.manual_seed(0)
    dense = Net()
    plain = copy.deepcopy(dense)
    pq.quantize_model_(plain, None, "emb", CFG_BS, CFG_K, n_iter=5, seed=0, verbose=False)
    rows = slice(0, 3)
    err_aware = (model.emb.to_dense().weight[rows] - dense.emb.weight[rows]).norm()
    err_plain = (plain.emb.to_dense().weight[rows] - dense.emb.weight[rows]).norm()
    assert err_aware < 0.7 * err_plain, (err_aware, err_plain)
