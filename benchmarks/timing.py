"""Side-by-side timing: every case of a comparison runs in the same process, in interleaved rounds.

On a shared 2-core machine absolute times drift 2-5x within minutes; timing ours and its
baseline in alternation (round 1: A B C, round 2: B C A, ...) exposes both to the same load, so
their ratio holds where the absolute figures do not. Each case reports the median and the min
over rounds of the time per call.

:func:`compare` is what benchmark modules call; it returns rows in the report format described in
``benchmarks/README.md``.
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

from benchmarks.machine import isa_path

__all__ = ["Case", "Timing", "interleaved", "compare", "make_row"]


@dataclass
class Case:
    """One implementation in a comparison: ``fn()`` is timed; ``role`` is ours|baseline|yardstick."""

    fn: Callable[[], Any]
    role: str = "baseline"
    note: str = ""


@dataclass
class Timing:
    median_s: float
    min_s: float
    rounds: int
    calls: int  # calls per round


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _time_calls(fn: Callable[[], Any], calls: int, device: str) -> float:
    _sync(device)
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / calls


def interleaved(
    cases: dict[str, Callable[[], Any]],
    *,
    rounds: int = 7,
    min_round_s: float = 0.02,
    max_calls: int = 100,
    device: str = "cpu",
) -> dict[str, Timing]:
    """Time every case in ``rounds`` interleaved rounds; the order rotates from round to round.

    A warm-up call per case also sizes the round: ``calls`` calls take at least ``min_round_s``
    (at most ``max_calls``), so the timer's resolution and one-off stalls matter little.
    """
    calls = {}
    for name, fn in cases.items():
        once = _time_calls(fn, 1, device)  # warm-up (first-call allocations, lazy init)
        calls[name] = max(1, min(max_calls, int(min_round_s / max(once, 1e-9))))
    per_call: dict[str, list[float]] = {name: [] for name in cases}
    names = list(cases)
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            per_call[name].append(_time_calls(cases[name], calls[name], device))
    return {name: Timing(statistics.median(ts), min(ts), len(ts), calls[name]) for name, ts in per_call.items()}


def compare(
    group: str,
    cases: dict[str, Case],
    *,
    params: dict[str, Any] | None = None,
    figure: str | None = None,
    x: str | None = None,
    targets: dict[str, float] | None = None,
    rounds: int = 7,
    device: str = "cpu",
    **timing_kwargs: Any,
) -> list[dict[str, Any]]:
    """Time ``cases`` side by side and return one report row per case (``benchmarks/README.md``).

    ``ratio`` of a non-ours row is its median over the median of the (single) ``"ours"`` case:
    above 1 means ours is faster. ``targets`` maps a case name to the ratio it must reach.
    """
    timings = interleaved({n: c.fn for n, c in cases.items()}, rounds=rounds, device=device, **timing_kwargs)
    ours = [n for n, c in cases.items() if c.role == "ours"]
    ref = timings[ours[0]].median_s if len(ours) == 1 else None
    load = list(os.getloadavg())
    isa = isa_path() if device == "cpu" else device
    rows = []
    for name, case in cases.items():
        t = timings[name]
        ratio = t.median_s / ref if ref and case.role != "ours" else None
        rows.append(
            make_row(group, name, case.role, params=dict(params or {}), median_s=t.median_s, min_s=t.min_s)
            | dict(rounds=t.rounds, calls=t.calls, ratio=ratio, target=(targets or {}).get(name), note=case.note)
            | dict(device=device, isa=isa, load=load, figure=figure, x=x)
        )
    return rows


def make_row(group: str, name: str, role: str, **fields: Any) -> dict[str, Any]:
    """A report row with every key present (``benchmarks/README.md``); ``fields`` override the defaults.

    Also the way to report a case that could not run: ``median_s=None`` and a ``note`` saying why
    (e.g. an optional peer that is not installed).
    """
    row: dict[str, Any] = dict(group=group, name=name, role=role, params={}, median_s=None, min_s=None)
    row.update(rounds=0, calls=0, ratio=None, target=None, note="", device="cpu", isa=None)
    row.update(load=list(os.getloadavg()), figure=None, x=None)
    row.update(fields)
    return row
