"""PNG plots of the report (matplotlib, no display needed).

A row with ``figure`` set belongs to the plot ``<figure>.png``:
- with ``x`` (a key of ``params``, e.g. ``"batch"``): a line plot of ``ratio`` (speed-up of ours over
  that row) against ``params[x]``, one line per baseline (and per other varying parameter);
- without ``x``: grouped bars of the median time of every implementation, one cluster per group.
"""

from __future__ import annotations

import os
from collections import defaultdict
from typing import Any

__all__ = ["plot_figures"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _series_label(row: dict[str, Any], x: str, varying: set[str]) -> str:
    extra = [f"{k}={row['params'][k]}" for k in sorted(varying - {x}) if k in row["params"]]
    return row["name"] + (f" ({', '.join(extra)})" if extra else "")


def _speedup_plot(ax, rows: list[dict[str, Any]], x: str) -> None:
    keys = {k for r in rows for k in r["params"]}
    varying = {k for k in keys if len({str(r["params"].get(k)) for r in rows}) > 1}
    series: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for r in rows:
        if r["role"] != "ours" and r.get("ratio") is not None and x in r["params"]:
            series[_series_label(r, x, varying)].append((r["params"][x], r["ratio"]))
    for label, points in sorted(series.items()):
        points.sort()
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    if all(isinstance(r["params"].get(x), (int, float)) for r in rows if x in r["params"]):
        ax.set_xscale("log", base=2)
    ax.set_xlabel(x)
    ax.set_ylabel("speed-up of ours (baseline time / ours)")


def _time_bars(ax, rows: list[dict[str, Any]]) -> None:
    groups = list(dict.fromkeys(r["group"] for r in rows))
    colours = {name: f"C{i % 10}" for i, name in enumerate(dict.fromkeys(r["name"] for r in rows))}
    width = 0.8 / max(sum(r["group"] == g for r in rows) for g in groups)
    labelled = set()
    for g, group in enumerate(groups):
        members = [r for r in rows if r["group"] == group and r["median_s"] is not None]
        for i, r in enumerate(members):
            label = None if r["name"] in labelled else r["name"]
            labelled.add(r["name"])
            ax.bar(g + i * width, r["median_s"] * 1e3, width, color=colours[r["name"]], label=label)
            if r.get("ratio") is not None:  # the speed-up of ours over this row, on its bar
                ax.annotate(
                    f"{r['ratio']:.2f}x", (g + i * width, r["median_s"] * 1e3), ha="center", va="bottom", fontsize=7
                )
    ax.set_xticks([g + 0.4 - width / 2 for g in range(len(groups))])
    ax.set_xticklabels([_wrap(g) for g in groups], fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("median time per call (ms, log scale)\nlabels: speed-up of ours")


def _wrap(text: str, width: int = 28) -> str:
    words, lines, line = text.split(), [], ""
    for w in words:
        if line and len(line) + len(w) + 1 > width:
            lines.append(line)
            line = w
        else:
            line = f"{line} {w}".strip()
    return "\n".join(lines + [line])


def plot_figures(rows: list[dict[str, Any]], out_dir: str, caption: str) -> list[str]:
    """Write one PNG per ``figure`` name under ``out_dir``; returns their paths."""
    plt = _pyplot()
    by_figure: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        if r.get("figure"):
            by_figure[r["figure"]].append(r)
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for figure, members in by_figure.items():
        fig, ax = plt.subplots(figsize=(7, 4.2), dpi=90)
        x = members[0].get("x")
        if x:
            _speedup_plot(ax, members, x)
        else:
            _time_bars(ax, members)
        ax.set_title(figure.replace("_", " "), fontsize=10)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        fig.text(0.01, 0.01, caption, fontsize=6, color="grey")
        fig.tight_layout(rect=(0, 0.03, 1, 1))
        path = os.path.join(out_dir, f"{figure}.png")
        fig.savefig(path)
        plt.close(fig)
        paths.append(path)
    return paths
