"""The paper's Table 1 in miniature: ``python -m benchmarks.paper_table [--quick]``.

A byte-level Transformer LM (:mod:`benchmarks.paper_lm`) is trained on the Python standard library's
docstrings and comments under each training regime (no noise; Quant-Noise ``drop`` at p = 0.05/0.1/0.2;
Quant-Noise ``fake_quant`` int8/int4; QAT, i.e. the column's own quantization on every block, p = 1), then
quantized post-training to int8, int4 and iPQ (iPQ with centroid finetuning by distillation from the
trained model, KL on the logits). It prints validation perplexity and size for every cell, as Table 1 of
Fan, Stock et al. 2020 does, and one line saying whether Quant-Noise beat QAT and no noise on these
numbers.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

import quantnoise_kernels as qn
from benchmarks.corpus import stdlib_text
from benchmarks.paper_lm import ByteLM, Corpus, LMConfig, perplexity, train_lm
from quantnoise_kernels import pq, scalar

IPQ_CONFIG = {
    "n_centroids": {"Linear": ("in_features", {"*": 256})},
    "block_sizes": {"Linear": ("fuzzy_name", {"fc": 8, "attn": 4})},
    "layers_to_quantize": [r"layers\.\d+\.fc[12]", r"layers\.\d+\.self_attn\.(q|k|v|out)_proj"],
}
COLUMNS = ("int8", "int4", "iPQ")


@dataclass(frozen=True)
class Regime:
    """A training regime: Quant-Noise kind and rate, or QAT (the column's own quantizer, p = 1)."""

    name: str
    noise: str | None = None
    p: float = 0.0
    bits: int = 8
    qat: bool = False


REGIMES = [
    Regime("no noise"),
    Regime("Quant-Noise drop p=0.05", "drop", 0.05),
    Regime("Quant-Noise drop p=0.1", "drop", 0.1),
    Regime("Quant-Noise drop p=0.2", "drop", 0.2),
    Regime("Quant-Noise fake_quant int8 p=0.1", "fake_quant", 0.1, 8),
    Regime("Quant-Noise fake_quant int4 p=0.1", "fake_quant", 0.1, 4),
    Regime("QAT (p=1)", qat=True),
]


@dataclass(frozen=True)
class Settings:
    lm: LMConfig
    text_chars: int
    valid_tokens: int
    finetune_steps: int
    n_iter: int
    qat_update_every: int


FULL = Settings(LMConfig(steps=500), 2_000_000, 65_536, 60, 15, 50)
QUICK = Settings(LMConfig(dim=64, layers=1, ffn=256, context=32, batch=16, steps=12), 100_000, 2048, 2, 3, 5)


def _noised_layers(model: nn.Module) -> list[tuple[str, int]]:
    return [(x.name, x.block_size) for stage in pq.plan_stages(model, IPQ_CONFIG) for x in stage]


class _CentroidQAT(nn.Module):
    """Parametrization: every block replaced by its nearest centroid (p = 1), straight-through gradient."""

    def __init__(self, weight: torch.Tensor, block_size: int, n_centroids: int) -> None:
        super().__init__()
        self.block_size, self.n_centroids = block_size, n_centroids
        self.register_buffer("centroids", torch.empty(0))
        self.refresh(weight, n_iter=5, seed=0)

    def refresh(self, weight: torch.Tensor, n_iter: int, seed: int) -> None:
        blocks = pq.weight_to_blocks(weight.detach().float(), self.block_size)
        self.centroids = qn.kmeans(blocks, self.n_centroids, n_iter=n_iter, seed=seed).centroids.reshape(
            -1, self.block_size
        )

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        seed = qn.ops.draw_seed()
        return qn.ops.block_noise(
            weight,
            1.0,
            self.block_size,
            seed,
            rescale=False,
            noise="centroid",
            centroids=self.centroids.to(weight.dtype),
        )


def _wrap_for_training(model: nn.Module, regime: Regime, column: str, settings: Settings):
    """Apply the regime's noise to the layers iPQ quantizes; returns (on_step hook, unwrap function)."""
    layers = _noised_layers(model)
    if regime.qat and column == "iPQ":
        params = []
        for name, block_size in layers:
            module = model.get_submodule(name)
            qat = _CentroidQAT(module.weight, block_size, IPQ_CONFIG["n_centroids"]["Linear"][1]["*"])
            parametrize.register_parametrization(module, "weight", qat)
            params.append(module)

        def on_step(step: int, _model: nn.Module) -> None:
            if step % settings.qat_update_every == 0:
                for i, module in enumerate(params):
                    module.parametrizations.weight[0].refresh(module.parametrizations.weight.original, 5, step + i)

        def unwrap() -> None:
            for module in params:
                parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)

        return on_step, unwrap
    if regime.qat or regime.noise == "fake_quant":  # issue 8's kind; p = 1 for QAT
        bits = {"int8": 8, "int4": 4}.get(column, regime.bits)
        p = 1.0 if regime.qat else regime.p
        wrapped = [qn.quant_noise(model.get_submodule(n), p, 1, noise="fake_quant", bits=bits) for n, _ in layers]
    elif regime.noise == "drop":
        wrapped = [qn.quant_noise(model.get_submodule(n), regime.p, bs) for n, bs in layers]
    else:
        wrapped = []
    return None, lambda: [qn.remove_quant_noise(m) for m in wrapped]


def _scalar_cell(model: nn.Module, bits: int, windows: torch.Tensor) -> dict[str, Any]:
    quantized = copy.deepcopy(model)
    layers = dict(_noised_layers(quantized))
    scalar.quantize_model_(quantized, p=1.0, bits=bits, update_step=1)
    n_weights = sum(model.get_submodule(n).weight.numel() for n in layers)
    rows = sum(model.get_submodule(n).weight.shape[0] for n in layers)
    dense = pq.held_bytes(model).total
    size = dense - 4 * n_weights + n_weights * bits / 8 + 8 * rows  # per-channel fp32 scale + zero point
    return {"ppl": perplexity(quantized, windows), "bytes": int(size)}


def _ipq_cell(model: nn.Module, corpus: Corpus, settings: Settings, windows: torch.Tensor, progress: bool) -> dict:
    compressed = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(1234)
    data = [corpus.batch(generator, settings.lm.batch, settings.lm.context)[:, :-1] for _ in range(16)]

    def after_stage(stage: int, m: nn.Module) -> None:
        pq.finetune_centroids(
            m,
            model,
            data,
            steps=settings.finetune_steps,
            lr=1e-3,
            loss="kl",
            progress=progress,
            desc=f"iPQ stage {stage} distill",
        )

    pq.compress_staged(
        compressed, IPQ_CONFIG, n_iter=settings.n_iter, seed=0, after_stage=after_stage, progress=progress
    )
    return {"ppl": perplexity(compressed, windows), "bytes": pq.held_bytes(compressed).total}


def _train(regime: Regime, column: str, corpus: Corpus, settings: Settings, progress: bool) -> nn.Module:
    torch.manual_seed(settings.lm.seed)
    model = ByteLM(settings.lm)
    on_step, unwrap = _wrap_for_training(model, regime, column, settings)
    losses = train_lm(model, corpus, settings.lm, on_step=on_step, progress=progress, desc=f"{regime.name} [{column}]")
    unwrap()
    print(f"  trained {regime.name} for {column}: loss {losses[0]:.3f} -> {sum(losses[-10:]) / 10:.3f}", flush=True)
    return model.eval()


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Train and quantize every cell; print and return the table."""
    start = time.perf_counter()
    settings = QUICK if args.quick else FULL
    corpus = Corpus(stdlib_text(settings.text_chars))
    windows = corpus.valid_windows(settings.lm.context, settings.valid_tokens)
    print(
        f"corpus: {corpus.train.numel()} training bytes, {windows[:, 1:].numel()} validation bytes; "
        f"threads {torch.get_num_threads()}, load {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    table: dict[str, dict[str, Any]] = {}
    for regime in REGIMES:
        row: dict[str, Any] = {}
        # QAT trains one model per column (the column's own quantizer); the other regimes one model for all
        trainings = COLUMNS if regime.qat else ("all",)
        for training in trainings:
            columns = COLUMNS if training == "all" else (training,)
            model = _train(regime, "iPQ" if training == "all" else training, corpus, settings, args.progress)
            if "fp32" not in row:  # QAT: the first model trained
                row["fp32"] = {"ppl": perplexity(model, windows), "bytes": pq.held_bytes(model).total}
            for column in columns:
                if column == "iPQ":
                    row[column] = _ipq_cell(model, corpus, settings, windows, args.progress)
                else:
                    row[column] = _scalar_cell(model, 8 if column == "int8" else 4, windows)
        table[regime.name] = row
        print(format_row(regime.name, row), flush=True)
    verdict = conclusion(table)
    print("\n" + format_table(table) + "\n\n" + verdict)
    return {"table": table, "verdict": verdict, "wall_s": time.perf_counter() - start, "quick": args.quick}


def _cell(cell: dict[str, Any] | None) -> str:
    if not cell:
        return "-"
    return f"{cell['ppl']:.3f} ({cell['bytes'] / 1e6:.3f} MB)"


def format_row(name: str, row: dict[str, Any]) -> str:
    return f"| {name} | " + " | ".join(_cell(row.get(c)) for c in ("fp32", *COLUMNS)) + " |"


def format_table(table: dict[str, dict[str, Any]]) -> str:
    """Markdown: validation perplexity per byte (size) for fp32 and each quantizer."""
    head = "| training | fp32 | int8 | int4 | iPQ + distill |\n| --- | --- | --- | --- | --- |"
    return head + "\n" + "\n".join(format_row(name, row) for name, row in table.items())


def conclusion(table: dict[str, dict[str, Any]]) -> str:
    """One line per quantizer: did the best Quant-Noise regime beat QAT and no noise (lower perplexity)?"""
    lines = []

    def ppl(name: str, column: str) -> float | None:
        cell = table.get(name, {}).get(column)
        return cell["ppl"] if cell and "ppl" in cell else None

    for column in COLUMNS:
        noisy = {n: ppl(n, column) for n in table if n.startswith("Quant-Noise") and ppl(n, column) is not None}
        base, qat = ppl("no noise", column), ppl("QAT (p=1)", column)
        if not noisy or base is None or qat is None:
            lines.append(f"{column}: not comparable (a cell is missing)")
            continue
        best = min(noisy, key=noisy.get)
        verdict = "beat" if noisy[best] < min(base, qat) else "did NOT beat"
        lines.append(
            f"{column}: Quant-Noise ({best}, ppl {noisy[best]:.3f}) {verdict} QAT ({qat:.3f}) and no noise ({base:.3f})"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.paper_table", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a tiny model and a few steps (CI smoke test)")
    parser.add_argument("--json", help="also write the table as JSON to this file")
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    args = parser.parse_args(argv)
    result = run(args)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(result, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
