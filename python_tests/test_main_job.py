"""The MiniLM demo and the miniature paper table, end to end on tiny inputs (a random tiny BERT, a tiny LM)."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from tiny_bert import make_tiny_bert

from benchmarks import corpus, paper_table
from benchmarks.minilm import demo, recipes, report

TINY_YAML = r"""
n_centroids:
  Linear: {key: in_features, value: {"*": 16}}
  Embedding: {key: embedding_dim, value: {"*": 16}}
block_sizes:
  Linear: {key: fuzzy_name, value: {attention: 4, "*": 8}}
  Embedding: {key: fuzzy_name, value: {"*": 8}}
layers_to_quantize:
  - encoder\.layer\.\d+\.(intermediate|output)\.dense
  - encoder\.layer\.\d+\.attention\.(self\.(query|key|value)|output\.dense)
  - embeddings\.word_embeddings
"""


def test_docstring_corpus_is_real_deterministic_english():
    sentences = corpus.docstring_sentences()
    assert len(sentences) >= 1300 and len(set(s.lower() for s in sentences)) == len(sentences)
    assert sentences == corpus.docstring_sentences()
    assert all(s[0].isupper() and s.endswith(".") and "()" not in s and "=" not in s for s in sentences)
    assert sum(" the " in f" {s.lower()} " for s in sentences) > 0.5 * len(sentences)
    text = corpus.stdlib_text(20_000)
    assert len(text) == 20_000 and text.isascii()


def test_demo_end_to_end_on_a_tiny_bert(tmp_path, monkeypatch):
    pytest.importorskip("transformers", reason="the demo needs transformers: pip install -r requirements-dev.txt")
    model_dir = make_tiny_bert(str(tmp_path / "bert"))
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY_YAML, encoding="utf-8")
    tiny = dataclasses.replace(
        demo.QUICK, n_train=32, n_held=24, finetune_steps=1, qn_steps=1, n_iter=2, shapes=((1, 8), (2, 8))
    )
    monkeypatch.setattr(demo, "QUICK", tiny)
    out = tmp_path / "out"
    args = ["--quick", "--no-progress", "--model-dir", model_dir, "--config", str(config), "--out", str(out)]
    payload = demo.run(demo.parse_args(args))

    rows = payload["rows"]
    assert [r["name"] for r in rows] == [r.name for r in recipes.ROWS]
    dense = rows[0]
    assert dense["cosine_mean"] == pytest.approx(1.0) and dense["recall_at_10"] == 1.0
    compressed = [r for r in rows if r.get("pq_layers")]
    assert compressed and all(
        r["linear_bytes"] < dense["linear_bytes"] and 0 < r["cosine_mean"] <= 1 + 1e-6 for r in compressed
    )
    assert all(set(r["latency"]) == {"b1x8", "b2x8"} for r in rows)
    assert payload["best"]["reload_identical"] is True
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["rows"] == json.loads(json.dumps(rows))
    assert (out / "results.md").read_text().count("\n|") >= len(rows)
    assert (out / "size_fidelity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report.plot_size_fidelity(str(out / "results.json"), str(tmp_path / "again.png"))  # make bench's entry point
    assert (tmp_path / "again.png").stat().st_size > 1000


def test_best_row_prefers_targets_then_ratio():
    def row(name, ratio, cos, recall=0.9, linear=21.0):
        return {
            "name": name, "pq_layers": 3, "whole_ratio": ratio, "linear_ratio": linear, "cosine_mean": cos,
            "recall_at_10": recall,
        }  # fmt: skip

    assert demo.best_row([row("a", 20, 0.96), row("b", 15, 0.97), row("c", 30, 0.5)])["name"] == "a"
    assert demo.best_row([row("a", 20, 0.96, linear=19.0), row("b", 15, 0.97)])["name"] == "b"  # Linear < 20x
    assert demo.best_row([row("a", 20, 0.80), row("b", 10, 0.99), row("c", 16, 0.85)])["name"] == "c"
    assert demo.best_row([{"name": "dense", "pq_layers": 0}]) is None


def test_perplexity_of_a_uniform_model_is_the_vocabulary_size():
    class Uniform(torch.nn.Module):
        def forward(self, tokens):
            return torch.zeros(*tokens.shape, 128)

    windows = torch.randint(0, 128, (3, 17))
    assert paper_table.perplexity(Uniform(), windows) == pytest.approx(128.0, rel=1e-6)


def test_centroid_qat_puts_every_block_on_a_centroid_with_a_straight_through_gradient():
    torch.manual_seed(0)
    weight = torch.randn(32, 16, requires_grad=True)
    qat = paper_table._CentroidQAT(weight, block_size=4, n_centroids=8)
    out = qat(weight)
    blocks = out.detach().reshape(-1, 4)
    distances = ((weight.detach().reshape(-1, 1, 4) - qat.centroids.unsqueeze(0)) ** 2).sum(-1)
    nearest = distances.argmin(1)  # each block becomes its nearest centroid
    assert torch.equal(blocks, qat.centroids[nearest])
    out.sum().backward()
    assert torch.equal(weight.grad, torch.ones_like(weight))


def test_paper_table_end_to_end_tiny(monkeypatch, capsys):
    lm = paper_table.LMConfig(dim=32, layers=1, heads=2, ffn=128, context=16, batch=4, steps=2)
    tiny = dataclasses.replace(
        paper_table.QUICK, lm=lm, text_chars=30_000, valid_tokens=256, finetune_steps=1, n_iter=2, qat_update_every=1
    )
    monkeypatch.setattr(paper_table, "QUICK", tiny)
    result = paper_table.run(paper_table.argparse.Namespace(quick=True, progress=False))
    table = result["table"]
    assert list(table) == [r.name for r in paper_table.REGIMES]
    for regime in paper_table.REGIMES:
        for column in paper_table.COLUMNS:
            cell = table[regime.name][column]
            assert 1.0 < cell["ppl"] < 200 and math.isfinite(cell["ppl"]) and cell["bytes"] > 0
    ipq, fp32 = table["no noise"]["iPQ"], table["no noise"]["fp32"]
    assert ipq["bytes"] < fp32["bytes"]
    printed = capsys.readouterr().out
    assert "| training | fp32 | int8 | int4 | iPQ + distill |" in printed and "iPQ: " in printed


def test_conclusion_reads_the_numbers():
    def cells(ppl):
        return {"iPQ": {"ppl": ppl, "bytes": 1}}

    table = {"no noise": cells(10.0), "Quant-Noise drop p=0.1": cells(9.0), "QAT (p=1)": cells(9.5)}
    assert "iPQ: Quant-Noise (Quant-Noise drop p=0.1, ppl 9.000) beat" in paper_table.conclusion(table)
    table["QAT (p=1)"] = cells(8.0)
    assert "did NOT beat" in paper_table.conclusion(table)
