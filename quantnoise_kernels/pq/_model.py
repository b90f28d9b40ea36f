"""Model surgery shared by the pipeline, save/load and the fairseq import: find modules, replace them, keep
tied weights tied, load what is not quantized."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from .registry import is_pq_layer

__all__ = [
    "replace_module",
    "replace_all",
    "share_storage",
    "weight_users",
    "owner_is_pq",
    "device_of",
    "load_remaining_state",
    "state_outside",
]


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Set the sub-module at dotted path ``name`` to ``new``."""
    head, _, tail = name.rpartition(".")
    setattr(model.get_submodule(head) if head else model, tail, new)


def replace_all(
    model: nn.Module, replacements: list[tuple[str, nn.Module]], then: Callable[[], None] | None = None
) -> None:
    """Replace the modules at the paths of ``replacements``, then run ``then`` (e.g. loading the remaining state):
    all or none. If a replacement or ``then`` fails, the modules replaced are put back and the error is raised."""
    done: list[tuple[str, nn.Module]] = []
    try:
        for path, new in replacements:
            old = model.get_submodule(path)
            replace_module(model, path, new)
            done.append((path, old))
        if then is not None:
            then()
    except BaseException:
        for path, old in reversed(done):
            replace_module(model, path, old)
        raise


def share_storage(dst: nn.Module, src: nn.Module) -> None:
    """Make the PQ layer ``dst`` use ``src``'s centroids Parameter and, where layouts agree, its codes buffers."""
    dst.centroids = src.centroids
    for name, buf in src.named_buffers(recurse=False):
        mine = dst._buffers.get(name)
        if mine is not None and mine.shape == buf.shape and mine.dtype == buf.dtype and torch.equal(mine, buf):
            dst._buffers[name] = buf


def weight_users(model: nn.Module) -> dict[int, list[tuple[str, nn.Module]]]:
    """id(weight Parameter) -> every (path, module) holding it as ``.weight``, in module order (ties included)."""
    users: dict[int, list[tuple[str, nn.Module]]] = {}
    for path, module in model.named_modules(remove_duplicate=False):
        weight = module._parameters.get("weight") if hasattr(module, "_parameters") else None
        if isinstance(weight, Tensor):
            users.setdefault(id(weight), []).append((path, module))
    return users


def owner_is_pq(model: nn.Module, name: str) -> bool:
    """True if ``name`` is a parameter path inside a PQ layer (quantized at an earlier stage)."""
    head, _, _ = name.rpartition(".")
    try:
        owner = model.get_submodule(head) if head else model
    except AttributeError:
        return False
    return is_pq_layer(owner)


def device_of(module: nn.Module) -> torch.device:
    """The device of ``module``'s first parameter (the CPU for a module without parameters)."""
    for t in module.parameters():
        return t.device
    return torch.device("cpu")


def _under(key: str, prefixes: list[str]) -> bool:
    return any(key.startswith(p) for p in prefixes)


def load_remaining_state(
    model: nn.Module, rest: dict[str, Tensor], pq_names: list[str], strict: bool, what: str
) -> None:
    """``load_state_dict(rest)`` for everything but the PQ layers ``pq_names`` (their keys are not missing).

    Raises:
        RuntimeError: ``strict`` and keys are missing or unexpected (the message lists them).
    """
    prefixes = [n + "." for n in pq_names]
    result = model.load_state_dict(rest, strict=False)
    missing = [k for k in result.missing_keys if not _under(k, prefixes)]
    unexpected = list(result.unexpected_keys)
    if strict and (missing or unexpected):
        raise RuntimeError(f"{what}: state_dict mismatch: missing keys {missing}, unexpected keys {unexpected}")


def state_outside(model: nn.Module, names: list[str]) -> dict[str, Tensor]:
    """``model.state_dict()`` without the entries of the modules ``names``."""
    prefixes = [n + "." for n in names]
    return {k: v for k, v in model.state_dict().items() if not _under(k, prefixes)}
