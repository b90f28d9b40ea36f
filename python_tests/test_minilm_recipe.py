"""The demo's best recipe pieces: block-output distillation (hf.block_outputs, hf.layerwise_mse), the targets check."""

from __future__ import annotations

import copy

import pytest
import torch
from tiny_bert import make_tiny_bert, tiny_sentences

from benchmarks.minilm import demo, recipes, report
from quantnoise_kernels import hf, pq


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    pytest.importorskip("transformers", reason="needs transformers: pip install -r requirements-dev.txt")
    model, tokenizer = hf.load_encoder(make_tiny_bert(str(tmp_path_factory.mktemp("bert"))), progress=False)
    batches = hf.tokenize(tokenizer, tiny_sentences(12), batch_size=4)
    return model, batches


def test_block_outputs_are_every_blocks_unpadded_tokens(tiny):
    model, batches = tiny
    batch = hf.with_hidden_states(batches)[0]
    assert batch["output_hidden_states"] is True and "output_hidden_states" not in batches[0]
    with torch.no_grad():
        got = hf.block_outputs(model(**batch), batch)
        states = model(**batches[0], output_hidden_states=True).hidden_states
    mask = batches[0]["attention_mask"]
    assert mask.min() == 0, "the batch should hold padding for this test to mean something"
    want = [
        torch.stack([states[layer][b, t] for b in range(mask.shape[0]) for t in range(mask.shape[1]) if mask[b, t]])
        for layer in range(1, len(states))
    ]
    torch.testing.assert_close(got, torch.stack(want), rtol=0, atol=0)
    with pytest.raises(ValueError, match="output_hidden_states=True"):
        hf.block_outputs(model(**batches[0]), batches[0])


def test_layerwise_mse_weights_every_layer_alike():
    gen = torch.Generator().manual_seed(0)
    teacher = torch.randn(3, 10, 8, generator=gen) * torch.tensor([1.0, 10.0, 0.1])[:, None, None]
    student = teacher + 0.1 * torch.randn(3, 10, 8, generator=gen) * teacher.abs()
    want = sum(float(((s - t) ** 2).mean() / (t**2).mean()) for s, t in zip(student, teacher))
    assert float(hf.layerwise_mse(student, teacher)) == pytest.approx(want, rel=1e-5)
    assert float(hf.layerwise_mse(teacher, teacher)) == 0.0
    scaled = hf.layerwise_mse(student * torch.tensor([5.0, 1, 1])[:, None, None], teacher * 5)
    assert float(scaled) != pytest.approx(want)  # only layer 0 scaled, the teacher of all: a real change
    assert float(hf.layerwise_mse(student * 7, teacher * 7)) == pytest.approx(want, rel=1e-5)


def test_block_distillation_lowers_every_blocks_error(tiny):
    model, batches = tiny
    student = copy.deepcopy(model)
    config = {
        "n_centroids": {"Linear": ("in_features", {"*": 8})},
        "block_sizes": {"Linear": ("fuzzy_name", {"*": 4})},
        "layers_to_quantize": [r"encoder\.layer\.\d+\.(intermediate|output)\.dense"],
    }
    pq.compress_staged(student, config, n_iter=2, seed=0, progress=False)
    data = hf.with_hidden_states(batches)

    def error() -> float:
        with torch.no_grad():
            pairs = [(hf.block_outputs(student(**b), b), hf.block_outputs(model(**b), b)) for b in data]
        return sum(float(hf.layerwise_mse(s, t)) for s, t in pairs)

    before = error()
    losses = pq.finetune_centroids(
        student, model, data, steps=30, lr=3e-3, loss=hf.layerwise_mse, output_fn=hf.block_outputs, progress=False
    )
    assert len(losses) == 30 and error() < 0.7 * before


def test_recipe_target_is_checked():
    assert recipes._target("blocks", [{"input_ids": 1}])[0] == [{"input_ids": 1, "output_hidden_states": True}]
    with pytest.raises(ValueError, match="'logits'"):
        recipes._target("logits", [])


def _row(name, whole, linear, cos, recall, ms, bytes_=1):
    return {
        "name": name, "whole_ratio": whole, "linear_ratio": linear, "cosine_mean": cos, "recall_at_10": recall,
        "whole_bytes": bytes_, "latency": {"b1x8": {"median_ms": ms}}, "pq_layers": 1,
    }  # fmt: skip


def test_target_checks_say_met_not_met_and_not_measured():
    dense = _row("dense", 1, 1, 1.0, 1.0, 10.0, bytes_=100)
    rows = [
        dense,
        _row("best", 15, 21, 0.96, 0.84, 9.0),
        _row("qn", 2, 21, 0.7, 0.5, 9),
        _row("plain", 2, 21, 0.8, 0.5, 9),
    ]
    verdicts = report.target_checks(rows, "best", demo.TARGETS, ("qn", "plain"))
    checks = {label: ok for label, ok, _ in verdicts}
    assert checks == {
        "whole model x >= 14": True,
        "Linear layers x >= 20": True,
        "mean cosine >= 0.95": True,
        "recall@10 >= 0.85": False,
        "latency b1x8 <= dense": True,
        "Quant-Noise then iPQ beats plain iPQ (same bytes)": False,
    }
    none = report.target_checks(rows[:1], None, demo.TARGETS, ("qn", "plain"))
    assert all(ok is None for _, ok, _ in none)
    text = report.format_checks(None, none)
    assert "not measured" in text and "NOT met" not in text
    assert "recall@10 >= 0.85: NOT met (0.8400)" in report.format_checks("best", verdicts)
