"""The benchmark report: markdown tables (one per group, each with the machine and the load it was
measured under), the rows as JSON, and the plots (``benchmarks/plots.py``)."""

from __future__ import annotations

import json
import os
import subprocess
from collections import defaultdict
from datetime import datetime, timezone
from typing import Any

from benchmarks.machine import load_text, machine_summary

__all__ = ["format_tables", "format_report", "write_report", "git_commit"]

_HEADER = "| implementation | role | median ms | min ms | speed-up of ours | target | note |"
_RULE = "| --- | --- | ---: | ---: | ---: | --- | --- |"


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    ms = seconds * 1e3
    return f"{ms:.3g}" if ms < 100 else f"{ms:.0f}"


def _target(row: dict[str, Any]) -> str:
    if row.get("target") is None:
        return ""
    if row.get("ratio") is None:
        return f">= {row['target']:g}x: not measured"
    return f">= {row['target']:g}x: {'met' if row['ratio'] >= row['target'] else 'NOT met'}"


def _groups(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[row["group"]].append(row)
    return groups


def format_tables(rows: list[dict[str, Any]], info: dict[str, Any]) -> str:
    """One markdown table per group; ``ours`` first. ``speed-up of ours`` = row median / ours median."""
    out = []
    for group, members in _groups(rows).items():
        timed = [r for r in members if r.get("load")]
        isa = sorted({r["isa"] for r in members if r.get("isa")})
        out.append(f"### {group}\n")
        out.append(
            f"{machine_summary(info | {'isa': ', '.join(isa) or info['isa']})}; "
            f"{load_text(timed[-1]['load'] if timed else None)}\n"
        )
        out += [_HEADER, _RULE]
        for r in sorted(members, key=lambda r: r["role"] != "ours"):
            ratio = f"{r['ratio']:.2f}x" if r.get("ratio") is not None else ""
            note = r.get("note", "").replace("|", "/")
            out.append(
                f"| {r['name']} | {r['role']} | {_ms(r['median_s'])} | {_ms(r['min_s'])} | {ratio} | "
                f"{_target(r)} | {note} |"
            )
        out.append("")
    return "\n".join(out)


def git_commit() -> str:
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        out = subprocess.run(["git", "-C", here, "describe", "--always", "--dirty"], capture_output=True, text=True)
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def format_report(rows: list[dict[str, Any]], info: dict[str, Any], figures: list[str], extras: list[str]) -> str:
    """The whole markdown report; ``figures`` are PNG paths relative to the report."""
    lines = [
        f"# Benchmarks on {info['cpu_model']}",
        "",
        f"- machine: {machine_summary(info)}",
        f"- at start: {load_text(info['load'])}",
        f"- commit {info.get('commit', '?')}, {info.get('date', '?')}, `{info.get('command', 'make bench')}`",
        *[f"- {line}" for line in extras],
        "",
        "Every table times ours and its baselines side by side in one process, in interleaved rounds "
        "(median and min of the time per call). *speed-up of ours* = the row's median over ours': above 1, "
        "ours is faster (for a *yardstick*, ours runs at that fraction of its speed). Absolute times on a "
        "loaded machine are inflated; the ratios hold better. Each table prints the load average after it ran.",
        "",
    ]
    if figures:
        lines += ["## Figures", ""] + [f"![{os.path.basename(f)}]({f})" for f in figures] + [""]
    lines += ["## Tables", "", format_tables(rows, info)]
    return "\n".join(lines)


def write_report(
    out_dir: str, slug: str, rows: list[dict[str, Any]], info: dict[str, Any], figures: list[str], extras: list[str]
) -> tuple[str, str]:
    """Write ``<out_dir>/<slug>.md`` and ``<out_dir>/<slug>.json``; returns both paths."""
    os.makedirs(out_dir, exist_ok=True)
    info = dict(info, date=info.get("date") or datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
    md_path, json_path = os.path.join(out_dir, f"{slug}.md"), os.path.join(out_dir, f"{slug}.json")
    with open(md_path, "w") as f:
        f.write(format_report(rows, info, figures, extras))
    with open(json_path, "w") as f:
        json.dump({"machine": info, "notes": extras, "rows": rows}, f, indent=1)
    return md_path, json_path
