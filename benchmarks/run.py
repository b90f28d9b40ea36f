"""Run every benchmark module and write the report (``make bench``).

    python -m benchmarks.run [-k SUBSTRING] [--quick] [--out DIR] [--demo-dir DIR] [--no-report]

Each ``benchmarks/bench_*.py`` module exposes ``rows(quick: bool = False) -> list[dict]``: it times
its comparisons side by side (``benchmarks.timing.compare``) and returns report rows, whose format
``benchmarks/README.md`` documents. Modules still written as pytest-benchmark tests (no ``rows``)
are run through pytest and their results converted to the same rows. The report goes to
``<out>/<machine>.md`` + ``<machine>.json`` + ``<machine>/*.png`` (the machine named by CPU model, ISA
path and core count), and the tables are printed.
"""

from __future__ import annotations

import argparse
import glob
import importlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
from typing import Any

from benchmarks.machine import machine_info, machine_slug, machine_summary
from benchmarks.report import format_tables, git_commit, write_report
from benchmarks.timing import make_row

HERE = os.path.dirname(os.path.abspath(__file__))
PEERS = {"faiss": "faiss-cpu", "aqlm": "aqlm"}  # optional extras: `make bench-extras`
DEMO_DIR = os.path.join(HERE, "..", "demo_results")  # where `make demo` leaves its rows and plot


def _modules(selector: str | None) -> list[str]:
    names = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(HERE, "bench_*.py")))
    return [n for n in names if not selector or selector in n]


def _legacy_rows(paths: list[str], pytest_args: list[str]) -> list[dict[str, Any]]:
    """pytest-benchmark modules (``benchmark.group``, ``extra_info["role"|"params"|"figure"|"x"]``) as rows."""
    import pytest

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "bench.json")
        args = ["-q", "-p", "no:cacheprovider", "-o", "python_files=bench_*.py", "--benchmark-only"]
        pytest.main([*paths, *args, f"--benchmark-json={out}", "--benchmark-disable-gc", *pytest_args])
        if not os.path.exists(out):
            return []
        with open(out) as f:
            benches = json.load(f)["benchmarks"]
    rows = []
    for b in benches:
        info = b["extra_info"]
        stats = b["stats"]
        fields = {k: info[k] for k in ("params", "figure", "x", "target", "note") if k in info}
        rows.append(
            make_row(b["group"] or b["name"], b["name"], info.get("role", "?"), **fields)
            | dict(median_s=stats["median"], min_s=stats["min"], rounds=stats["rounds"], calls=1)
        )
    for group in {r["group"] for r in rows}:  # ratios against the group's single "ours" row
        members = [r for r in rows if r["group"] == group]
        ours = [r for r in members if r["role"] == "ours"]
        for r in members:
            if len(ours) == 1 and r["role"] != "ours":
                r["ratio"] = r["median_s"] / ours[0]["median_s"]
    return rows


def collect(selector: str | None, quick: bool, pytest_args: list[str]) -> list[dict[str, Any]]:
    rows, legacy = [], []
    for name in _modules(selector):
        module = importlib.import_module(f"benchmarks.{name}")
        if hasattr(module, "rows"):
            print(f"benchmarks: {name} ...", file=sys.stderr, flush=True)
            rows += module.rows(quick=quick)
        else:
            legacy.append(os.path.join(HERE, f"{name}.py"))
    if legacy:
        rows += _legacy_rows(legacy, pytest_args)
    return rows


def peer_notes() -> list[str]:
    notes = []
    for module, package in PEERS.items():
        if importlib.util.find_spec(module) is None:
            notes.append(f"{package} not installed: its rows are missing (`make bench-extras` installs it)")
        else:
            version = getattr(importlib.import_module(module), "__version__", "?")
            notes.append(f"{package} {version} installed")
    return notes


def demo_section(demo_dir: str, fig_dir: str, rel: str) -> tuple[list[str], str]:
    """The main job's outputs if present: its PNGs (copied next to ours) and its tables (its markdown
    files as they are; without one, its JSON ``rows`` as a table)."""
    if not glob.glob(os.path.join(demo_dir, "*.json")) and glob.glob(os.path.join(demo_dir, "quick", "*.json")):
        demo_dir = os.path.join(demo_dir, "quick")  # only `make demo-quick` has run
    if not os.path.isdir(demo_dir):
        return [], f"(no demo results in {os.path.relpath(demo_dir)}: run `make demo` first)\n"
    figures, text = (
        [],
        f"Results of `{os.path.relpath(demo_dir)}`"
        + (" (the --quick run)" if demo_dir.endswith("quick") else "")
        + ".\n\n",
    )
    for png in sorted(glob.glob(os.path.join(demo_dir, "*.png"))):
        os.makedirs(fig_dir, exist_ok=True)
        shutil.copy(png, os.path.join(fig_dir, "demo_" + os.path.basename(png)))
        figures.append(f"{rel}/demo_{os.path.basename(png)}")
    for path in sorted(glob.glob(os.path.join(demo_dir, "*.md"))):
        with open(path) as f:
            text += f"From `{os.path.basename(path)}`:\n\n{f.read().strip()}\n\n"
    has_md = bool(glob.glob(os.path.join(demo_dir, "*.md")))
    for path in [] if has_md else sorted(glob.glob(os.path.join(demo_dir, "*.json"))):
        with open(path) as f:
            data = json.load(f)
        table = data.get("rows", []) if isinstance(data, dict) else data
        if table and isinstance(table, list) and isinstance(table[0], dict):
            keys = list(dict.fromkeys(k for row in table for k in row))
            text += f"From `{os.path.basename(path)}`:\n\n| {' | '.join(keys)} |\n|{' --- |' * len(keys)}\n"
            text += "".join(f"| {' | '.join(_cell(row.get(k)) for k in keys)} |\n" for row in table) + "\n"
    return figures, text


def _cell(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str("" if value is None else value)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-k", dest="selector", help="only modules whose name contains this")
    parser.add_argument("--quick", action="store_true", help="small shapes, few rounds (smoke test)")
    parser.add_argument("--out", default=os.path.join(HERE, "results"), help="report folder")
    parser.add_argument("--demo-dir", default=DEMO_DIR, help="folder of `make demo`'s results")
    parser.add_argument("--no-report", action="store_true", help="print the tables only")
    args, pytest_args = parser.parse_known_args(argv)

    info = machine_info() | {"commit": git_commit(), "command": "python -m benchmarks.run " + " ".join(argv)}
    print(f"machine: {machine_summary(info)}", file=sys.stderr)
    rows = collect(args.selector, args.quick, pytest_args)
    print(format_tables(rows, info))
    if args.no_report:
        return 0
    from benchmarks.plots import plot_figures

    slug = machine_slug(info)
    fig_dir = os.path.join(args.out, slug)
    shutil.rmtree(fig_dir, ignore_errors=True)
    caption = f"{machine_summary(info)}; commit {info['commit']}"
    figures = [f"{slug}/{os.path.basename(p)}" for p in plot_figures(rows, fig_dir, caption)]
    demo_figures, demo_text = demo_section(args.demo_dir, fig_dir, slug)
    extras = peer_notes()
    md, js = write_report(args.out, slug, rows, info, figures + demo_figures, extras)
    if demo_text:
        with open(md, "a") as f:
            f.write("\n## Demo (`make demo`)\n\n" + demo_text)
    print(f"report: {os.path.relpath(md)}, {os.path.relpath(js)}, {len(figures) + len(demo_figures)} plots")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
