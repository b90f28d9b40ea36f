"""What each row is measured on: true bytes, fidelity on held-out sentences, CPU latency side by side."""

from __future__ import annotations

import os
import platform
import statistics
import time

import torch
from torch import nn

from quantnoise_kernels import hf
from quantnoise_kernels.pq import held_bytes

__all__ = ["linear_names", "model_bytes", "fidelity", "latency", "machine"]


def linear_names(dense: nn.Module) -> list[str]:
    """Names of the dense model's ``nn.Linear`` layers (the "Linear layers" of the size columns)."""
    return [name for name, module in dense.named_modules() if type(module) is nn.Linear]


def model_bytes(model: nn.Module, linears: list[str]) -> dict[str, int]:
    """True bytes held: the whole model (every parameter and buffer once) and its Linear layers alone."""
    return {
        "whole_bytes": held_bytes(model).total,
        "linear_bytes": sum(held_bytes(model.get_submodule(name)).total for name in linears),
    }


def fidelity(reference: torch.Tensor, model: nn.Module, batches: list[dict]) -> dict[str, float]:
    """Held-out cosine (mean, 5th percentile) and recall@10 of ``model``'s embeddings against ``reference``."""
    got = hf.embed_sentences(model, batches)
    return {**hf.cosine_report(reference, got), "recall_at_10": hf.recall_at_k(reference, got, 10)}


def _inputs(batch: int, length: int, vocab: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(batch * 1000 + length)
    low = 1000 if vocab > 2000 else 5  # past BERT's special tokens and unused slots
    ids = torch.randint(low, vocab, (batch, length), generator=generator)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


@torch.inference_mode()
def latency(
    models: dict[str, nn.Module], shapes: list[tuple[int, int]], rounds: int, vocab: int
) -> dict[str, dict[str, dict[str, float]]]:
    """Encoder forward time of every model at each ``(batch, length)``, interleaved round by round.

    Every round runs each model once per shape, in turn, so slow phases of a shared machine hit all models
    alike; one warm-up call per model and shape is not timed.

    Returns:
        ``{model: {"b{batch}x{length}": {"median_ms", "min_ms"}}}``.
    """
    out: dict[str, dict[str, dict[str, float]]] = {name: {} for name in models}
    for batch, length in shapes:
        inputs = _inputs(batch, length, vocab)
        times: dict[str, list[float]] = {name: [] for name in models}
        for model in models.values():
            model.eval()(**inputs)
        for _ in range(rounds):
            for name, model in models.items():
                start = time.perf_counter()
                model(**inputs)
                times[name].append((time.perf_counter() - start) * 1e3)
        for name, values in times.items():
            out[name][f"b{batch}x{length}"] = {"median_ms": statistics.median(values), "min_ms": min(values)}
    return out


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, object]:
    """CPU model, cores, torch threads, torch version, load average (1, 5, 15 min)."""
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
    }
