"""``pq.finetune_centroids`` / ``pq.distill`` and ``pq.compress_staged`` on small real architectures."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from quantnoise_kernels import pq

BLOCKS = {"Linear": ("fuzzy_name", {"*": 4})}
CENTROIDS = {"Linear": ("in_features", {"*": 16})}


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 16))


def _compressed(teacher: nn.Module) -> nn.Module:
    student = copy.deepcopy(teacher)
    pq.quantize_model_(student, None, [r"0|2"], BLOCKS, CENTROIDS, verbose=False, seed=0, centroid_dtype=torch.float16)
    return student


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_finetune_centroids_lowers_the_distillation_loss():
    teacher = _mlp()
    student = _compressed(teacher)
    data = [torch.randn(64, 32) for _ in range(4)]
    before = _snapshot(student)
    codes = [m.interchange_codes().clone() for m in (student[0], student[2])]

    def mse() -> float:
        with torch.no_grad():
            return sum(float(F.mse_loss(student(x), teacher(x))) for x in data)

    start = mse()
    losses = pq.finetune_centroids(student, teacher, data, steps=60, lr=1e-2, progress=False)
    assert len(losses) == 60 and mse() < 0.85 * start
    # codes never move, the centroids keep their dtype, biases are not trained without train_float
    assert all(torch.equal(c, m.interchange_codes()) for c, m in zip(codes, (student[0], student[2])))
    assert student[0].centroids.dtype == torch.float16 and not torch.equal(student[0].centroids, before["0.centroids"])
    assert torch.equal(student[0].bias, before["0.bias"])
    assert all(p.grad is None for p in student.parameters())


def test_train_float_also_trains_the_rest():
    teacher = _mlp()
    student = _compressed(teacher)
    before = _snapshot(student)
    pq.finetune_centroids(student, teacher, [torch.randn(8, 32)], steps=3, lr=1e-2, train_float=True, progress=False)
    assert not torch.equal(student[0].bias, before["0.bias"])


def test_tied_centroids_stay_shared_and_flags_restored():
    teacher = nn.Sequential(nn.Linear(16, 16), nn.Linear(16, 16))
    teacher[1].weight = teacher[0].weight
    student = copy.deepcopy(teacher)
    pq.quantize_model_(student, None, [r"\d"], BLOCKS, CENTROIDS, verbose=False, seed=0, centroid_dtype=torch.float16)
    assert student[0].centroids is student[1].centroids
    student[0].bias.requires_grad_(False)
    pq.finetune_centroids(student, teacher, [torch.randn(8, 16)], steps=2, progress=False)
    assert student[0].centroids is student[1].centroids and student[0].centroids.dtype == torch.float16
    assert student[0].centroids.requires_grad and not student[0].bias.requires_grad and student[1].bias.requires_grad


def test_kl_loss_matches_a_plain_reference():
    """One SGD-free check of the KL objective: distill's first loss equals the hand-written KL at T=2."""
    teacher = _mlp()
    student = _compressed(teacher)
    x = torch.randn(16, 32)
    with torch.no_grad():
        s, t = student(x) / 2, teacher(x) / 2
        expected = (F.softmax(t, -1) * (F.log_softmax(t, -1) - F.log_softmax(s, -1))).sum(-1).mean() * 4
    losses = pq.finetune_centroids(student, teacher, [x], steps=1, loss="kl", temperature=2.0, progress=False)
    assert losses[0] == pytest.approx(float(expected), rel=1e-5)


def test_output_fn_dict_batches_and_cosine():
    class Enc(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(32, 32)

        def forward(self, x, mask):
            return {"last_hidden_state": self.proj(x) * mask.unsqueeze(-1)}

    teacher = Enc()
    student = copy.deepcopy(teacher)
    pq.quantize_model_(student, None, ["proj"], BLOCKS, CENTROIDS, verbose=False, seed=0)
    data = [{"x": torch.randn(4, 5, 32), "mask": torch.ones(4, 5)}]
    losses = pq.finetune_centroids(
        student,
        teacher,
        data,
        steps=3,
        loss="cosine",
        output_fn=lambda out, b: out["last_hidden_state"].mean(1),
        progress=False,
    )
    assert len(losses) == 3 and 0.0 <= losses[0] <= 2.0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"lr": 0.0}, "lr"),
        ({"steps": 0}, "steps"),
        ({"loss": "l1"}, "loss"),
        ({"temperature": -1.0}, "temperature"),
    ],
)
def test_bad_arguments_leave_the_model_unchanged(kwargs, message):
    teacher = _mlp()
    student = _compressed(teacher)
    before = _snapshot(student)
    with pytest.raises(ValueError, match=message):
        pq.finetune_centroids(student, teacher, [torch.randn(4, 32)], progress=False, **kwargs)
    after = student.state_dict()
    assert all(torch.equal(before[k], after[k]) and before[k].dtype == after[k].dtype for k in before)


def test_no_pq_layer_and_empty_data():
    teacher = _mlp()
    with pytest.raises(ValueError, match="no PQ layer"):
        pq.finetune_centroids(copy.deepcopy(teacher), teacher, [torch.randn(4, 32)], progress=False)
    with pytest.raises(ValueError, match="no batch"):
        pq.finetune_centroids(_compressed(teacher), teacher, [], steps=2, progress=False)


def test_compress_staged_equals_quantize_model_stage_by_stage():
    config = {"layers_to_quantize": [r"0", r"2"], "block_sizes": BLOCKS, "n_centroids": CENTROIDS}
    teacher = _mlp()
    a, b = copy.deepcopy(teacher), copy.deepcopy(teacher)
    calls = []
    tracker = pq.compress_staged(a, config, seed=5, n_iter=6, progress=False, after_stage=lambda s, m: calls.append(s))
    for step in range(2):
        pq.quantize_model_(
            b,
            None,
            config["layers_to_quantize"],
            BLOCKS,
            CENTROIDS,
            step=step,
            n_iter=6,
            seed=5 + step,
            verbose=False,
            centroid_dtype=torch.float16,  # compress_staged's default (quantize_model_'s is float32)
        )
    assert calls == [0, 1] and tracker.n_quantized_layers == 2
    for i in (0, 2):
        assert torch.equal(a[i].interchange_codes(), b[i].interchange_codes())
        assert torch.equal(a[i].centroids, b[i].centroids)


def test_plan_stages_checks_before_changing_anything():
    model = _mlp()
    before = _snapshot(model)
    bad = {
        "layers_to_quantize": [r"0", r"2"],
        "block_sizes": {"Linear": ("fuzzy_name", {"0": 4, "2": 3})},
        "n_centroids": CENTROIDS,
    }
    with pytest.raises(ValueError, match="'2'.*block size 3"):
        pq.compress_staged(model, bad, progress=False)
    too_many = {
        "layers_to_quantize": [r"2"],
        "block_sizes": BLOCKS,
        "n_centroids": {"Linear": ("in_features", {"*": 512})},
    }
    with pytest.raises(ValueError, match="512 centroids for only 256 blocks"):
        pq.plan_stages(model, too_many)
    with pytest.raises(ValueError, match="matches no layer"):
        pq.plan_stages(model, {"layers_to_quantize": ["fc"], "block_sizes": BLOCKS, "n_centroids": CENTROIDS})
    assert all(type(m) is not pq.PQLinear for m in model) and all(
        torch.equal(v, model.state_dict()[k]) for k, v in before.items()
    )
