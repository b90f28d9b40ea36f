"""Run the benchmark suites and print one ratio table per group.

Convention for benchmark functions: set ``benchmark.group`` to the workload and
``benchmark.extra_info["role"]`` to ``"ours"`` or ``"baseline"`` (optionally ``"yardstick"``).
Each table lists the median times and, for every row, ``ours / row`` or ``row / ours`` so that a
number above 1 always means "ours is faster" (or, for a yardstick, "ours runs at this fraction
of the yardstick's speed").

    python -m benchmarks.run [pytest args, e.g. -k block_noise]
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections import defaultdict

import pytest

from benchmarks.conftest import machine_summary


def format_tables(report: dict) -> str:
    groups: dict[str, list[dict]] = defaultdict(list)
    for bench in report["benchmarks"]:
        groups[bench["group"] or bench["name"]].append(bench)
    lines = [f"machine: {machine_summary()}", ""]
    for group, benches in groups.items():
        ours = [b for b in benches if b["extra_info"].get("role") == "ours"]
        lines.append(f"## {group}")
        lines.append(f"{'benchmark':<52} {'role':<10} {'median ms':>10} {'speed-up of ours':>17}")
        for b in sorted(benches, key=lambda b: b["extra_info"].get("role") != "ours"):
            median_ms = b["stats"]["median"] * 1e3
            role = b["extra_info"].get("role", "?")
            ratio = ""
            if ours and role != "ours":
                ratio = f"{b['stats']['median'] / ours[0]['stats']['median']:.2f}x"
            lines.append(f"{b['name']:<52} {role:<10} {median_ms:>10.3f} {ratio:>17}")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "bench.json")
        args = [
            "benchmarks",
            "-q",
            "-p",
            "no:cacheprovider",
            "-o",
            "python_files=bench_*.py",
            "--benchmark-only",
            f"--benchmark-json={path}",
        ]
        code = pytest.main(args + ["--benchmark-disable-gc", "--benchmark-sort=name", *argv])
        if code != 0:
            return int(code)
        with open(path) as f:
            print(format_tables(json.load(f)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
