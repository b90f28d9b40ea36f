"""The bad-input matrix's runner (issue 13): every public entry point gets at least eight kinds of bad input.

A :class:`Case` builds a fresh call (function, args, kwargs) and says what must happen: an error of a type whose
message names the argument (``match``), or a result a ``check`` compares with the reference. In both, the
inputs (every tensor byte, every module's classes and state) must be unchanged afterwards, except where the
API says it changes them (``mutates``: a successful ``quantize_model_``). The kinds: ``dtype``, ``rank``,
``shape`` (mismatch), ``range``, ``nonfinite``, ``device`` (mixes, meta included), ``empty``, ``huge`` (shapes past
2**31 on the meta device), ``grad`` (requires_grad), ``file`` (I/O functions), ``type`` (wrong Python types).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from model_state import assert_unchanged, snapshot
from torch import nn

KINDS = ("dtype", "rank", "shape", "range", "nonfinite", "device", "empty", "huge", "grad", "file", "type")


@dataclass
class Case:
    entry: str  # the public entry point
    kind: str  # one of KINDS
    what: str  # the bad input, in words (the test id)
    build: Callable[[], tuple[Callable, tuple, dict]]
    error: type[BaseException] | None = None  # expected error type, or None for a correct result
    match: str = ""  # the message must match this (it names the argument)
    check: Callable[[Any, tuple, dict], None] | None = None  # for a correct result: compare with the reference
    mutates: bool = False  # the call changes its inputs by contract (success only)

    @property
    def id(self) -> str:
        return f"{self.entry}-{self.kind}-{self.what}"


def _tensor_bytes(t: torch.Tensor):
    if t.device.type == "meta":
        return (tuple(t.shape), t.dtype, "meta")
    c = t.detach().cpu().contiguous().reshape(-1)
    return (tuple(t.shape), t.dtype, bytes(c.view(torch.uint8).numpy()) if c.numel() else b"")


def _state(value):
    """A comparable image of an argument: tensors by bytes, modules by snapshot, containers element-wise."""
    if isinstance(value, torch.Tensor):
        return _tensor_bytes(value)
    if isinstance(value, nn.Module):
        return snapshot(value)
    if isinstance(value, dict):
        return {k: _state(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_state(v) for v in value]
    return None


def run_case(case: Case) -> None:
    assert case.kind in KINDS, case.kind
    fn, args, kwargs = case.build()
    before = _state((args, kwargs))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. the fewer-blocks warning; errors are what is checked here
        if case.error is not None:
            with pytest.raises(case.error, match=case.match):
                fn(*args, **kwargs)
        else:
            result = fn(*args, **kwargs)
            assert case.check is not None, f"{case.id}: a case that succeeds needs a check of its result"
            case.check(result, args, kwargs)
    if case.mutates and case.error is None:
        return
    _assert_same(before, _state((args, kwargs)), case.id)


def _assert_same(before, after, where: str) -> None:
    if isinstance(before, type(snapshot(nn.Module()))):
        model_after = after
        assert model_after.modules == before.modules, f"{where}: modules changed"
        assert model_after.state == before.state, f"{where}: model state changed"
    elif isinstance(before, dict):
        for key in before:
            _assert_same(before[key], after[key], f"{where}[{key!r}]")
    elif isinstance(before, list):
        for i, (b, a) in enumerate(zip(before, after)):
            _assert_same(b, a, f"{where}[{i}]")
    else:
        assert before == after, f"{where}: input changed"


__all__ = ["Case", "KINDS", "run_case", "assert_unchanged", "snapshot"]
