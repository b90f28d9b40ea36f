"""fairseq's iPQ checkpoint format, read in one place.

fairseq's quantized layers store ``<layer>.centroids`` ``[K, block_size]``, ``<layer>.assignments`` (int64 in
fairseq's block-major order: block ``(o, j)`` of ``weight.reshape(out, -1)`` is entry ``n = j*out + o``),
``<layer>.bias`` and ``<layer>.counts`` (dropped: our layers recount). Two entry points read it through
:func:`read_fairseq_layer`: :func:`from_fairseq_state_dict` (import a checkpoint into the dense architecture)
and ``quantize_model_(..., n_iter=0, state_dict=...)`` (fairseq's own load path, where fairseq fills random
placeholders and we take the checkpoint's values). A missing or malformed entry raises ``ValueError`` naming
the key.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from .._blocks import check_block_size, codes_dtype
from ._checks import check_finite, check_model, check_state_fits
from ._model import load_remaining_state, replace_all
from .quantizer import from_fairseq_order
from .registry import is_pq_layer, pq_class_for, why_not_quantizable

__all__ = ["FairseqLayer", "codes_from_fairseq", "fairseq_prefix", "read_fairseq_layer", "from_fairseq_state_dict"]


class FairseqLayer(NamedTuple):
    """One layer of a fairseq checkpoint, checked and converted to our layout."""

    centroids: Tensor  # [K, block_size], the checkpoint's dtype
    codes: Tensor  # interchange layout [out, row/block_size], uint8 or int32
    bias: Tensor | None  # in the dense layer's dtype; None for a layer without bias
    keys: tuple[str, ...]  # the state_dict keys this layer accounts for


def codes_from_fairseq(
    assignments: Tensor, n_centroids: int, out: int, row: int, block_size: int, where: str
) -> Tensor:
    """fairseq's flat ``assignments`` (``n = j*out + o``) -> interchange codes ``[out, row/bs]``, checked."""
    n_blocks = out * (row // block_size)
    if not isinstance(assignments, Tensor) or assignments.dim() != 1 or assignments.numel() != n_blocks:
        shape = tuple(assignments.shape) if isinstance(assignments, Tensor) else type(assignments).__name__
        raise ValueError(
            f"{where}: assignments must be 1-D with out * row / block_size = {out} * {row} / {block_size} = "
            f"{n_blocks} entries, got shape {shape}"
        )
    if assignments.is_floating_point() or assignments.is_complex():
        raise ValueError(f"{where}: assignments must be an integer tensor, got {assignments.dtype}")
    if n_blocks and (int(assignments.min()) < 0 or int(assignments.max()) >= n_centroids):
        raise ValueError(
            f"{where}: assignments must lie in [0, {n_centroids}), got range "
            f"[{int(assignments.min())}, {int(assignments.max())}]"
        )
    return from_fairseq_order(assignments.long(), out).to(codes_dtype(n_centroids)).contiguous()


def fairseq_prefix(state_dict: dict[str, Any], name: str) -> str:
    """The key prefix of layer ``name`` in ``state_dict``: ``name`` or, under DataParallel, ``module.<name>``."""
    return next((p + name for p in ("", "module.") if f"{p}{name}.assignments" in state_dict), name)


def read_fairseq_layer(state_dict: dict[str, Any], prefix: str, module: nn.Module, where: str) -> FairseqLayer:
    """Read and check the entries ``<prefix>.centroids/assignments/bias`` for the dense ``module``.

    Raises:
        ValueError: an entry is missing (the bias too, if ``module`` has one) or does not fit ``module``.
    """
    centroids, assignments = state_dict.get(f"{prefix}.centroids"), state_dict.get(f"{prefix}.assignments")
    if centroids is None or assignments is None:
        raise ValueError(f"{where}: state_dict has no '{prefix}.centroids' / '{prefix}.assignments' entries")
    if not isinstance(centroids, Tensor) or centroids.dim() != 2 or not centroids.is_floating_point():
        raise ValueError(f"{where}: '{prefix}.centroids' must be a [K, block_size] tensor of floats")
    check_finite(where, f"'{prefix}.centroids'", centroids)
    n_centroids, block_size = (int(s) for s in centroids.shape)
    shape = tuple(module.weight.shape)
    row = check_block_size(block_size, shape, f"{where}: '{prefix}.centroids' {tuple(centroids.shape)}")
    codes = codes_from_fairseq(assignments, n_centroids, shape[0], row, block_size, f"{where}: '{prefix}'")
    keys = [f"{prefix}.{suffix}" for suffix in ("centroids", "assignments", "counts")]
    bias = None
    if getattr(module, "bias", None) is not None:
        bias = state_dict.get(f"{prefix}.bias")
        if not isinstance(bias, Tensor):
            raise ValueError(f"{where}: '{prefix}.bias' is missing for a layer with a bias")
        if tuple(bias.shape) != tuple(module.bias.shape):
            raise ValueError(
                f"{where}: '{prefix}.bias' must have shape {tuple(module.bias.shape)}, got {tuple(bias.shape)}"
            )
        bias = bias.detach().clone().to(module.bias.dtype)
        keys.append(f"{prefix}.bias")
    return FairseqLayer(centroids.detach().clone(), codes, bias, tuple(keys))


def _dense_module(model: nn.Module, name: str, prefix: str) -> nn.Module:
    where = "from_fairseq_state_dict"
    try:
        module = model.get_submodule(name)
    except AttributeError:
        raise ValueError(f"{where}: the model has no module {name!r} for '{prefix}.assignments'") from None
    if is_pq_layer(module):
        module = module.to_dense()
    if pq_class_for(module) is None:
        raise ValueError(f"{where}: {name!r} is {why_not_quantizable(module)}; it cannot hold a quantized layer")
    return module


def _build(name: str, module: nn.Module, entry: FairseqLayer, centroid_dtype: torch.dtype | None) -> nn.Module:
    pq_cls = pq_class_for(module)
    centroids = entry.centroids if centroid_dtype is None else entry.centroids.to(centroid_dtype)
    try:
        layer = pq_cls.from_config(pq_cls.config_of(module), centroids, entry.codes, entry.bias)
    except (TypeError, ValueError) as error:
        raise ValueError(f"from_fairseq_state_dict: layer {name!r}: {error}") from error
    return layer.to(module.weight.device)


def from_fairseq_state_dict(
    model: nn.Module, state_dict: dict[str, Any], *, strict: bool = True, centroid_dtype: torch.dtype | None = None
) -> list[str]:
    """Import a fairseq iPQ state_dict into ``model`` (the dense architecture), replacing the quantized layers.

    For each ``<name>.centroids`` ``[K, bs]`` / ``<name>.assignments`` (int64, fairseq block order
    ``n = j*out + o``) pair, the dense module at ``<name>`` becomes a PQ layer with those centroids (dtype kept,
    fp32 from fairseq, unless ``centroid_dtype``), codes in the interchange layout and ``<name>.bias``;
    ``<name>.counts`` is dropped (the layers recount). Its decoded weight equals fairseq's reconstruction
    (``reference.pq_decode_fairseq``). Every other key is loaded with ``load_state_dict``. All or nothing: every
    quantized layer is read, checked (entries present, shapes, block size, codes in range, finite centroids) and
    built, and the other keys are checked to load, before the model is changed; on any error the model is
    exactly as it was.

    Args:
        model: the dense model (fresh instance of the architecture the checkpoint was trained with).
        state_dict: the fairseq model state_dict (a full checkpoint dict with a ``"model"`` entry also works).
        strict: raise on keys that match nothing / parameters left unset.
        centroid_dtype: cast the centroids (e.g. ``torch.float16``); None keeps the checkpoint's dtype.

    Returns:
        The names of the layers imported as PQ layers.

    Raises:
        TypeError: ``state_dict`` is not a dict.
        ValueError: a quantized entry names no quantizable module, is missing or malformed, or another entry has
            the wrong shape.
        RuntimeError: ``strict`` and the other keys do not match the model.
    """
    check_model("from_fairseq_state_dict", model)
    if not isinstance(state_dict, dict):
        raise TypeError(f"from_fairseq_state_dict: state_dict must be a dict, got {type(state_dict).__name__}")
    if "model" in state_dict and isinstance(state_dict["model"], dict):
        state_dict = state_dict["model"]
    if centroid_dtype is not None and centroid_dtype not in (
        torch.float16,
        torch.bfloat16,
        torch.float32,
        torch.float64,
    ):
        raise TypeError(
            f"from_fairseq_state_dict: centroid_dtype must be a float dtype or None, got {centroid_dtype!r}"
        )
    replacements, used = [], set()
    for prefix in [k[: -len(".assignments")] for k in state_dict if k.endswith(".assignments")]:
        name = prefix[len("module.") :] if prefix.startswith("module.") and not hasattr(model, "module") else prefix
        module = _dense_module(model, name, prefix)
        entry = read_fairseq_layer(state_dict, prefix, module, f"from_fairseq_state_dict: {name!r}")
        replacements.append((name, _build(name, module, entry, centroid_dtype)))
        used.update(entry.keys)
    names = [name for name, _ in replacements]
    rest = {k: v for k, v in state_dict.items() if k not in used}
    check_state_fits("from_fairseq_state_dict", model, rest, names, strict)
    replace_all(
        model, replacements, lambda: load_remaining_state(model, rest, names, strict, "from_fairseq_state_dict")
    )
    return names
