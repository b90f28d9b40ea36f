"""Checks the model-level functions run before they change anything (the all-or-nothing guarantee, DESIGN §8).

``quantize_model_``, ``load_compressed`` and ``from_fairseq_state_dict`` first check every argument and every
layer here, then build every new layer, and only then replace modules (:func:`._model.replace_all`, which puts
the old modules back if a replacement fails). Each error names the function, the layer and the value.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from torch import Tensor, nn

from .._blocks import MAX_CENTROIDS
from .quantizer import weight_to_blocks

__all__ = [
    "FEWER_BLOCKS",
    "check_kmeans_args",
    "check_bits",
    "check_n_centroids",
    "check_finite",
    "check_model",
    "check_state_fits",
    "exact_codebook",
    "fewer_blocks_rule",
]

# What quantize_model_ does with a layer that has fewer blocks than centroids (see fewer_blocks_rule).
FEWER_BLOCKS = ("reduce", "skip", "error")
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_kmeans_args(
    where: str, n_iter: Any, eps: Any, max_tentatives: Any, seed: Any, centroid_dtype: Any, fewer_blocks: Any
) -> None:
    """The scalar arguments of ``quantize_model_`` (k-means settings, seed, centroid dtype, the few-blocks rule).

    Raises:
        TypeError / ValueError: naming the argument and the value.
    """
    if not _is_int(n_iter) or n_iter < 0:
        raise ValueError(f"{where}: n_iter must be an int >= 0, got {n_iter!r}")
    if not _is_int(max_tentatives) or max_tentatives < 0:
        raise ValueError(f"{where}: max_tentatives must be an int >= 0, got {max_tentatives!r}")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps < 0:
        raise ValueError(f"{where}: eps must be a finite number >= 0, got {eps!r}")
    if seed is not None and (not _is_int(seed) or not 0 <= seed < 2**63):
        raise ValueError(f"{where}: seed must be None or an int in [0, 2**63), got {seed!r}")
    if centroid_dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{where}: centroid_dtype must be one of {list(_FLOAT_DTYPES)}, got {centroid_dtype!r}")
    if fewer_blocks not in FEWER_BLOCKS:
        raise ValueError(f"{where}: fewer_blocks must be one of {FEWER_BLOCKS}, got {fewer_blocks!r}")


def check_bits(where: str, centroid_bits: Any, act_bits: Any) -> None:
    """``centroid_bits`` (None or 2..8, iPQ & int8 centroids) and ``act_bits`` (0 or 8) of ``quantize_model_``.

    Raises:
        ValueError: naming the argument and the value.
    """
    if centroid_bits is not None and (not _is_int(centroid_bits) or not 2 <= centroid_bits <= 8):
        raise ValueError(f"{where}: centroid_bits must be None or an int in [2, 8], got {centroid_bits!r}")
    if act_bits not in (0, 8):
        raise ValueError(f"{where}: act_bits must be 0 or 8, got {act_bits!r}")


def check_n_centroids(where: str, n_centroids: Any) -> int:
    """A number of centroids from a config: an int in ``[1, MAX_CENTROIDS]``."""
    if not _is_int(n_centroids) or not 1 <= n_centroids <= MAX_CENTROIDS:
        raise ValueError(f"{where}: n_centroids must be an int in [1, {MAX_CENTROIDS}], got {n_centroids!r}")
    return n_centroids


def check_finite(where: str, name: str, t: Tensor) -> None:
    """``t`` holds no NaN or infinity (a meta tensor has no values to check)."""
    if t.device.type == "meta" or not t.is_floating_point():
        return
    n_bad = int((~torch.isfinite(t.detach())).sum())
    if n_bad:
        raise ValueError(f"{where}: {name} must be finite, got {n_bad} NaN or infinite values of {t.numel()}")


def check_model(where: str, model: Any) -> None:
    """``model`` is an ``nn.Module`` whose tensors hold values (none on the meta device: nothing to read or keep).

    Raises:
        TypeError: ``model`` is not a module.
        ValueError: a parameter or buffer is on the meta device (named).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"{where}: model must be an nn.Module, got {type(model).__name__}")
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        if t.device.type == "meta":
            raise ValueError(
                f"{where}: the model's {name!r} is on the meta device (no values); allocate it first, e.g. "
                "model.to_empty(device='cpu')"
            )


def exact_codebook(weight: Tensor, block_size: int) -> tuple[Tensor, Tensor]:
    """The distinct blocks of ``weight`` as float32 centroids ``[K', bs]`` and codes ``[out, row/bs]`` (lossless)."""
    blocks = weight_to_blocks(weight.detach().float(), block_size)
    centroids, inverse = torch.unique(blocks, dim=0, return_inverse=True)
    return centroids, inverse.reshape(weight.shape[0], -1)


def fewer_blocks_rule(
    where: str, weight: Tensor, block_size: int, n_centroids: int, rule: str
) -> tuple[Tensor, Tensor] | None | bool:
    """Apply ``rule`` to a layer with fewer blocks than centroids (k-means needs at least K blocks).

    Returns:
        False when the layer has enough blocks (k-means runs); ``(centroids, codes)``, its distinct blocks, for
        ``"reduce"`` (K becomes the number of distinct blocks: lossless up to the centroid dtype); None for
        ``"skip"`` (the layer stays dense). Both warn, naming the layer.

    Raises:
        ValueError: ``rule == "error"``, or the weight is empty (nothing to quantize).
    """
    n_blocks = weight.numel() // block_size
    if n_blocks >= n_centroids:
        return False
    what = f"{where} has {n_blocks} blocks of {block_size}, fewer than n_centroids={n_centroids}"
    if rule == "error" or n_blocks == 0:
        hint = "" if n_blocks == 0 else " (fewer_blocks='reduce' or 'skip' handles it)"
        raise ValueError(f"{what}{hint}")
    if rule == "skip":
        warnings.warn(f"{what}: skipped, left dense (fewer_blocks='skip')", stacklevel=5)
        return None
    centroids, codes = exact_codebook(weight, block_size)
    warnings.warn(
        f"{what}: n_centroids reduced to its {centroids.shape[0]} distinct blocks, which encode it exactly "
        "(fewer_blocks='reduce')",
        stacklevel=5,
    )
    return centroids, codes


def check_state_fits(where: str, model: nn.Module, state: dict[str, Any], skip: list[str], strict: bool) -> None:
    """``model.load_state_dict(state)`` will succeed for every key outside the modules ``skip`` (checked first,
    so that the load cannot fail half-way): tensors only, shapes equal, and with ``strict`` the same keys.

    Raises:
        ValueError: an entry is not a tensor or has the wrong shape.
        RuntimeError: ``strict`` and keys are missing or unexpected (the message lists them).
    """
    prefixes = tuple(n + "." for n in skip)
    expected = {k: v for k, v in model.state_dict().items() if not k.startswith(prefixes)}
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, Tensor):
            raise ValueError(f"{where}: state_dict entry {key!r} must be a tensor, got {type(value).__name__}")
        if key in expected and tuple(value.shape) != tuple(expected[key].shape):
            raise ValueError(
                f"{where}: state_dict entry {key!r} has shape {tuple(value.shape)}, the model's has "
                f"{tuple(expected[key].shape)}"
            )
    if strict:
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        if missing or unexpected:
            raise RuntimeError(f"{where}: state_dict mismatch: missing keys {missing}, unexpected keys {unexpected}")
