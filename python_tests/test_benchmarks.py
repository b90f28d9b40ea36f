"""The benchmark report (``make bench``): side-by-side timing, rows, markdown/JSON/PNG output.

Time budget: ~10 s (the quick mode of every ``rows()`` module on tiny shapes)."""

from __future__ import annotations

import importlib
import json
import os

import pytest

from benchmarks import run
from benchmarks.machine import isa_path, machine_info, machine_slug
from benchmarks.plots import plot_figures
from benchmarks.report import format_tables, write_report
from benchmarks.timing import Case, compare, interleaved, make_row

ROW_KEYS = set(make_row("g", "n", "ours"))


def _spin(n: int):
    return lambda: sum(range(n))


def test_interleaved_times_every_case_and_ranks_them():
    t = interleaved({"short": _spin(100), "long": _spin(100_000)}, rounds=3, min_round_s=0.001)
    assert set(t) == {"short", "long"}
    assert all(v.rounds == 3 and v.calls >= 1 and 0 < v.min_s <= v.median_s for v in t.values())
    assert t["long"].median_s > 10 * t["short"].median_s


def test_compare_rows_have_the_documented_keys_and_ratios():
    cases = {"ours": Case(_spin(100), "ours"), "slow": Case(_spin(100_000)), "ref": Case(_spin(100), "yardstick")}
    rows = compare("g", cases, params={"batch": 4}, figure="f", x="batch", targets={"slow": 2.0}, rounds=3)
    assert [r["name"] for r in rows] == ["ours", "slow", "ref"]
    assert all(set(r) == ROW_KEYS for r in rows)
    by = {r["name"]: r for r in rows}
    assert by["ours"]["ratio"] is None
    assert by["slow"]["ratio"] == pytest.approx(by["slow"]["median_s"] / by["ours"]["median_s"])
    assert by["slow"]["ratio"] > 10 and by["slow"]["target"] == 2.0
    assert by["ref"]["params"] == {"batch": 4} and by["ref"]["isa"] == isa_path()
    assert len(by["ref"]["load"]) == 3


def test_isa_path_honours_the_override(monkeypatch):
    monkeypatch.setenv("QUANTNOISE_CPU_ISA", "portable")
    assert isa_path() == "portable"
    monkeypatch.setenv("QUANTNOISE_CPU_ISA", "avx512")  # a cap, never more than the CPU has
    monkeypatch.delenv("QUANTNOISE_CPU_ISA")
    widest = isa_path()
    monkeypatch.setenv("QUANTNOISE_CPU_ISA", "avx512")
    assert isa_path() == widest


def _synthetic_rows() -> list[dict]:
    rows = []
    for batch, ours_s in [(1, 1e-3), (16, 2e-3), (256, 8e-3)]:
        group = f"pq_linear batch {batch}"
        common = dict(params={"batch": batch}, figure="pq_speedup", x="batch", rounds=5, calls=3)
        rows.append(make_row(group, "pq (ours)", "ours", median_s=ours_s, min_s=ours_s, **common))
        rows.append(
            make_row(group, "dense", "baseline", median_s=3e-3, min_s=3e-3, ratio=3e-3 / ours_s, target=1.0, **common)
        )
    group = "assignment"
    rows.append(make_row(group, "ours", "ours", median_s=4e-3, min_s=4e-3, figure="assign"))
    rows.append(
        make_row(group, "peer", "baseline", note="peer not installed (make bench-extras)", target=2.0, figure="assign")
    )
    return rows


def test_report_markdown_json_and_plots(tmp_path):
    rows, info = _synthetic_rows(), machine_info()
    figures = plot_figures(rows, str(tmp_path / "figs"), "caption")
    assert sorted(os.path.basename(f) for f in figures) == ["assign.png", "pq_speedup.png"]
    for f in figures:
        with open(f, "rb") as fh:
            assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    md, js = write_report(str(tmp_path), "m", rows, info, ["figs/pq_speedup.png"], ["faiss-cpu not installed"])
    text = open(md).read()
    assert info["cpu_model"] in text and f"ISA path {info['isa']}" in text and "load average" in text
    assert ">= 1x: met" in text and ">= 1x: NOT met" in text  # batch 256: 3 ms / 8 ms
    assert ">= 2x: not measured" in text and "peer not installed" in text
    assert "![pq_speedup.png](figs/pq_speedup.png)" in text and "faiss-cpu not installed" in text
    data = json.load(open(js))
    assert data["machine"]["cpu_model"] == info["cpu_model"] and len(data["rows"]) == len(rows)
    assert format_tables(rows, info).count("### ") == 4


def test_demo_results_are_included(tmp_path):
    demo = tmp_path / "demo"
    demo.mkdir()
    (demo / "rows.json").write_text(json.dumps({"rows": [{"name": "iPQ", "bytes": 123, "cosine": 0.97}]}))
    (demo / "size_vs_fidelity.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    figures, text = run.demo_section(str(demo), str(tmp_path / "out"), "rel")
    assert figures == ["rel/demo_size_vs_fidelity.png"]
    assert os.path.exists(tmp_path / "out" / "demo_size_vs_fidelity.png")
    assert "| name | bytes | cosine |" in text and "| iPQ | 123 | 0.97 |" in text
    (demo / "results.md").write_text("| recipe | cos |\n| --- | --- |\n| iPQ | 0.97 |\n")
    _, text = run.demo_section(str(demo), str(tmp_path / "out"), "rel")  # its own markdown wins over the JSON
    assert "From `results.md`" in text and "| iPQ | 0.97 |" in text and "bytes" not in text
    assert "make demo" in run.demo_section(str(tmp_path / "absent"), "x", "rel")[1]
    quick = tmp_path / "only_quick"
    (quick / "quick").mkdir(parents=True)
    (quick / "quick" / "results.json").write_text(json.dumps({"rows": [{"name": "dense"}]}))
    assert "(the --quick run)" in run.demo_section(str(quick), str(tmp_path / "out2"), "rel")[1]


def test_machine_slug_is_a_file_name():
    slug = machine_slug(machine_info())
    assert slug and all(c.isalnum() or c == "-" for c in slug) and slug.endswith("c")


def _rows_modules() -> list[str]:
    return [n for n in run._modules(None) if hasattr(importlib.import_module(f"benchmarks.{n}"), "rows")]


@pytest.mark.parametrize("name", _rows_modules())
def test_benchmark_module_quick_rows(name):
    """Every ``rows()`` module runs in quick mode and returns well-formed rows (keeps them from rotting)."""
    rows = importlib.import_module(f"benchmarks.{name}").rows(quick=True)
    assert rows and all(ROW_KEYS <= set(r) for r in rows)
    assert all(r["role"] in ("ours", "baseline", "yardstick") for r in rows)
    assert all(r["median_s"] is None or r["median_s"] > 0 for r in rows)
