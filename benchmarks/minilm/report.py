"""The demo's outputs: the printed/markdown table, the JSON, and the size-against-fidelity plot.

:func:`plot_size_fidelity` takes the JSON's ``rows`` (or reads ``results.json``) so the benchmark report
(``make bench``) can redraw the demo's plot without rerunning it.
"""

from __future__ import annotations

import json
import os
from typing import Any

__all__ = ["markdown_table", "target_checks", "format_checks", "write_json", "plot_size_fidelity", "load_rows"]

_MB = 1e6


def _ratio(row: dict[str, Any], key: str, dense: dict[str, Any]) -> float:
    return dense[key] / row[key]


def _latency_cell(row: dict[str, Any], dense: dict[str, Any], shape: str) -> str:
    mine, base = row.get("latency", {}).get(shape), dense.get("latency", {}).get(shape)
    if not mine or not base:
        return "-"
    return f"{mine['median_ms']:.1f} ({base['median_ms'] / mine['median_ms']:.2f}x)"


def markdown_table(rows: list[dict[str, Any]], shapes: list[str]) -> str:
    """One line per row: bytes and ratios (whole model, Linear layers), fidelity, latency (speed-up vs dense)."""
    dense = rows[0]
    head = ["recipe", "whole MB", "whole x", "Linear MB", "Linear x", "cos mean", "cos p5", "recall@10"]
    head += [f"{s} ms (vs dense)" for s in shapes] + ["build s"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for row in rows:
        cells = [
            row["name"],
            f"{row['whole_bytes'] / _MB:.2f}",
            f"{_ratio(row, 'whole_bytes', dense):.1f}",
            f"{row['linear_bytes'] / _MB:.2f}",
            f"{_ratio(row, 'linear_bytes', dense):.1f}",
            f"{row['cosine_mean']:.4f}",
            f"{row['cosine_p5']:.4f}",
            f"{row['recall_at_10']:.3f}",
            *[_latency_cell(row, dense, s) for s in shapes],
            f"{row.get('build_s', 0):.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _row(rows: list[dict[str, Any]], name: str) -> dict[str, Any] | None:
    return next((r for r in rows if r["name"] == name), None)


def target_checks(
    rows: list[dict[str, Any]], best: str | None, targets: dict[str, float], qn_pair: tuple[str, str]
) -> list[tuple[str, bool | None, str]]:
    """Issue 9's targets, each ``(target, met, the figures)``; ``met`` is None when the rows to judge are missing.

    ``best`` names the best compressed row; ``qn_pair`` is (Quant-Noise then iPQ row, the same without
    Quant-Noise), compared at the same bytes on the held-out mean cosine.
    """
    dense, row = rows[0], _row(rows, best) if best else None
    checks: list[tuple[str, bool | None, str]] = []
    for key, label in (("whole_ratio", "whole model x"), ("linear_ratio", "Linear layers x")):
        got = row[key] if row else None
        checks.append((f"{label} >= {targets[key]:g}", None if got is None else got >= targets[key], f"{got or 0:.1f}"))
    for key, label in (("cosine_mean", "mean cosine"), ("recall_at_10", "recall@10")):
        got = row[key] if row else None
        checks.append((f"{label} >= {targets[key]:g}", None if got is None else got >= targets[key], f"{got or 0:.4f}"))
    for shape in dense.get("latency", {}):
        mine = (row or {}).get("latency", {}).get(shape)
        base = dense["latency"][shape]["median_ms"]
        ok = None if mine is None else mine["median_ms"] <= base
        checks.append((f"latency {shape} <= dense", ok, f"{mine['median_ms'] if mine else 0:.1f} vs {base:.1f} ms"))
    noisy, plain = (_row(rows, name) for name in qn_pair)
    same = noisy is not None and plain is not None and noisy["whole_bytes"] == plain["whole_bytes"]
    ok = noisy["cosine_mean"] > plain["cosine_mean"] if same else None
    figures = f"{noisy['cosine_mean']:.4f} vs {plain['cosine_mean']:.4f}" if same else "rows missing"
    checks.append(("Quant-Noise then iPQ beats plain iPQ (same bytes)", ok, figures))
    return checks


def format_checks(best: str | None, checks: list[tuple[str, bool | None, str]]) -> str:
    """The checks as lines: ``met`` / ``NOT met`` / ``not measured``, with the figures."""
    lines = [f"targets (best row: {best or 'none'}):"]
    for label, ok, figures in checks:
        verdict = "not measured" if ok is None else ("met" if ok else "NOT met")
        lines.append(f"  {label}: {verdict} ({figures})")
    return "\n".join(lines)


def write_json(path: str, payload: dict[str, Any]) -> None:
    """Write ``payload`` as indented JSON (through a temporary file, then ``os.replace``)."""
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(payload, handle, indent=2)
    os.replace(tmp, path)


def load_rows(path: str) -> list[dict[str, Any]]:
    """The ``rows`` of a demo ``results.json``."""
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)["rows"]


def plot_size_fidelity(rows: list[dict[str, Any]] | str, path: str, title: str = "all-MiniLM-L6-v2") -> None:
    """PNG: whole-model true MB (log scale) against held-out mean cosine, one labelled point per row.

    Args:
        rows: the demo's rows, or the path of its ``results.json``.
        path: the PNG to write.
        title: the plot's title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if isinstance(rows, str):
        rows = load_rows(rows)
    done = rows
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    for ax, key, label in (
        (axes[0], "whole_bytes", "whole model, MB held (log)"),
        (axes[1], "linear_bytes", "Linear layers, MB held (log)"),
    ):
        for i, row in enumerate(done):
            x, y = row[key] / _MB, row["cosine_mean"]
            ax.scatter([x], [y], s=40, zorder=3)
            ax.annotate(str(i), (x, y), textcoords="offset points", xytext=(5, 4), fontsize=9)
        ax.set_xscale("log")
        ax.axhline(0.95, color="grey", linestyle="--", linewidth=0.8)
        ax.set_xlabel(label)
        ax.set_ylabel("held-out mean cosine vs fp32")
        ax.grid(True, which="both", alpha=0.3)
    legend = "\n".join(f"{i}: {row['name']}" for i, row in enumerate(done))
    fig.text(0.01, 0.01, legend, fontsize=8, va="bottom")
    fig.suptitle(f"{title}: size against fidelity (dashed: cosine 0.95)")
    fig.tight_layout(rect=(0, 0.05 + 0.025 * len(done), 1, 1))
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
