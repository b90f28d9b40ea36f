"""Snapshots of a model for the all-or-nothing tests: every state_dict entry byte for byte, and every module
(path, class and identity), so a call that fails can be shown to leave the model exactly as it was."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


def _bytes(t: torch.Tensor) -> bytes:
    if t.device.type == "meta":
        return b"meta"  # no values: the shape and dtype are compared
    t = t.detach().cpu().contiguous().reshape(-1)
    return bytes(t.view(torch.uint8).numpy()) if t.numel() else b""


@dataclass(frozen=True)
class Snapshot:
    modules: tuple[tuple[str, type, int], ...]
    state: tuple[tuple[str, torch.dtype, tuple[int, ...], bytes], ...]


def snapshot(model: nn.Module) -> Snapshot:
    """The model's modules (path, class, id) and its state_dict (key, dtype, shape, bytes)."""
    modules = tuple((path, type(m), id(m)) for path, m in model.named_modules(remove_duplicate=False))
    state = tuple((k, v.dtype, tuple(v.shape), _bytes(v)) for k, v in model.state_dict(keep_vars=True).items())
    return Snapshot(modules, state)


def assert_unchanged(model: nn.Module, before: Snapshot) -> None:
    """``model`` has the same modules (the same objects, same classes) and the same state bytes as ``before``."""
    after = snapshot(model)
    assert after.modules == before.modules, "modules changed"
    assert [s[:3] for s in after.state] == [s[:3] for s in before.state], "state_dict keys, dtypes or shapes changed"
    changed = [a[0] for a, b in zip(after.state, before.state) if a[3] != b[3]]
    assert not changed, f"state_dict values changed: {changed}"
