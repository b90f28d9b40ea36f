"""Compact save/load of PQ-compressed models (and, re-exported, the import of fairseq iPQ state_dicts).

File format (``torch.save`` of plain containers, loaded with ``weights_only=True``; version 1)::

    {"format": "quantnoise_kernels.pq.compressed", "version": 1, "torch_version": str,
     "layers": [                                  # one entry per PQ layer path, module order
        {"name": "decoder.layers.0.fc1", "class": "PQLinear", "dense_class": "Linear",
         "weight_shape": [out, row], "block_size": bs, "n_centroids": K,
         "config": {...},                         # PQLayer.config(): the layer arguments (in/out, conv, embedding)
         "codes": Tensor[out, row/bs],            # interchange layout; uint8 (K <= 256), int16, or int32
         "centroids": Tensor[K, bs],              # the layer's dtype, fp16 by default (bit-exact)
         "bias": Tensor[out] | None,
         "tied_to": str | None,                   # shares centroids (and codes) with this earlier layer
         "same_module_as": str | None},           # the very same module object, under another name
        ...],
     "state_dict": {...}}                         # everything else (non-quantized parameters and buffers)

``load_compressed`` takes a fresh instance of the same dense architecture, replaces the listed layers by PQ
layers and loads the rest; the restored model's ``state_dict`` equals the saved one bit for bit.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import Tensor, nn

from .._blocks import UINT8_MAX_CENTROIDS, row_length
from ._model import device_of, load_remaining_state, replace_module, share_storage, state_outside
from .fairseq import from_fairseq_state_dict
from .registry import is_pq_layer, pq_class_by_dense_name

__all__ = ["save_compressed", "load_compressed", "from_fairseq_state_dict", "FORMAT", "VERSION"]

FORMAT = "quantnoise_kernels.pq.compressed"
VERSION = 1


def _compact(t: Tensor) -> Tensor:
    """CPU tensor that torch.save writes with no bytes beyond its own (a view would drag its whole storage)."""
    t = t.detach().cpu()
    if t.untyped_storage().nbytes() != t.numel() * t.element_size() or not t.is_contiguous():
        t = t.clone(memory_format=torch.contiguous_format)
    return t


def _codes_for_file(codes: Tensor, n_centroids: int) -> Tensor:
    """The file's codes dtype: the smallest integer type holding every code (uint8, int16, int32)."""
    if n_centroids <= UINT8_MAX_CENTROIDS:
        return codes.to(torch.uint8)
    return codes.to(torch.int16 if n_centroids <= 2**15 else torch.int32)


def _layer_entry(name: str, module: nn.Module, centroid_owner: dict[int, str]) -> dict[str, Any]:
    """The file entry of a PQ layer met for the first time (codes and centroids unless tied to an earlier one)."""
    codes = module.interchange_codes()
    n_centroids, block_size = (int(s) for s in module.centroids.shape)
    entry: dict[str, Any] = {"name": name, "class": type(module).__name__, "tied_to": None, "same_module_as": None}
    entry.update(
        dense_class=module._FLOAT_MODULE.__name__,
        weight_shape=[int(codes.shape[0]), int(codes.shape[1]) * block_size],
        block_size=block_size,
        n_centroids=n_centroids,
        config=module.config(),
        bias=None if module.bias is None else _compact(module.bias),
    )
    if id(module.centroids) in centroid_owner:
        entry["tied_to"] = centroid_owner[id(module.centroids)]
    else:
        centroid_owner[id(module.centroids)] = name
        entry["codes"] = _compact(_codes_for_file(codes, n_centroids))
        entry["centroids"] = _compact(module.centroids)
    return entry


def save_compressed(model: nn.Module, path: str | os.PathLike) -> None:
    """Write ``model`` (with PQ layers) to a compact file: uint8 codes, centroids, metadata, the rest.

    Args:
        model: a model whose quantized layers are PQ layers (e.g. after :func:`quantize_model_`).
        path: destination file.
    """
    layers: list[dict[str, Any]] = []
    first_path: dict[int, str] = {}  # id(module) -> first name
    centroid_owner: dict[int, str] = {}  # id(centroids Parameter) -> first layer name
    for name, module in model.named_modules(remove_duplicate=False):
        if not is_pq_layer(module):
            continue
        if id(module) in first_path:
            entry = {"name": name, "class": type(module).__name__, "tied_to": None}
            layers.append(dict(entry, same_module_as=first_path[id(module)]))
            continue
        first_path[id(module)] = name
        layers.append(_layer_entry(name, module, centroid_owner))
    rest = {k: _compact(v) for k, v in state_outside(model, [entry["name"] for entry in layers]).items()}
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "torch_version": str(torch.__version__),
        "layers": layers,
        "state_dict": rest,
    }
    torch.save(payload, path)


def _check_entries(model: nn.Module, layers: list[dict[str, Any]]) -> dict[str, nn.Module]:
    """name -> the module each file entry replaces, every entry checked against ``model`` (nothing changed)."""
    current_of: dict[str, nn.Module] = {}
    for entry in layers:
        name = entry["name"]
        if entry.get("same_module_as"):
            continue
        try:
            current = model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"load_compressed: the model has no module {name!r}") from None
        pq_cls = pq_class_by_dense_name(entry["dense_class"])
        if pq_cls is None:
            raise ValueError(f"load_compressed: {name!r}: the file holds an unknown layer {entry['dense_class']!r}")
        if not isinstance(current, (pq_cls._FLOAT_MODULE, pq_cls)):
            raise ValueError(
                f"load_compressed: {name!r} is a {type(current).__name__} in the model, the file holds a "
                f"{entry['class']} (from {entry['dense_class']})"
            )
        if isinstance(current, pq_cls._FLOAT_MODULE):
            shape = tuple(current.weight.shape)
            out, row = shape[0], row_length(shape)
            if [out, row] != list(entry["weight_shape"]):
                raise ValueError(
                    f"load_compressed: {name!r} has a weight of shape {shape} (rows {out} x {row}), the file holds "
                    f"{entry['weight_shape']}"
                )
        current_of[name] = current
    return current_of


def load_compressed(
    model: nn.Module, path: str | os.PathLike, *, map_location: Any = None, strict: bool = True
) -> list[str]:
    """Load a file written by :func:`save_compressed` into ``model``, a fresh instance of the same architecture.

    The listed layers (dense layers of the classes the registry knows, in ``model``) are replaced by PQ layers
    on the device of the layer they replace; the non-quantized parameters and buffers are loaded as they were
    saved. Every layer entry is checked before the model is changed.

    Args:
        model: the dense model (or one already holding PQ layers at those names).
        path: the file.
        map_location: passed to ``torch.load``.
        strict: raise if the non-quantized keys do not match exactly.

    Returns:
        The names of the PQ layers restored.

    Raises:
        ValueError: not a compressed file, unknown version, or a layer's class or shape differs from ``model``.
        RuntimeError: non-quantized keys missing or unexpected (``strict``).
    """
    data = torch.load(path, map_location=map_location or "cpu", weights_only=True)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"load_compressed: {os.fspath(path)!r} is not a {FORMAT} file")
    if data.get("version") != VERSION:
        raise ValueError(f"load_compressed: file version {data.get('version')} is not supported (expected {VERSION})")
    current_of = _check_entries(model, data["layers"])

    restored: dict[str, nn.Module] = {}
    names = []
    for entry in data["layers"]:
        name = entry["name"]
        names.append(name)
        if entry.get("same_module_as"):
            replace_module(model, name, restored[entry["same_module_as"]])
            continue
        pq_cls = pq_class_by_dense_name(entry["dense_class"])
        source = restored[entry["tied_to"]] if entry.get("tied_to") else None
        if source is not None:
            centroids, codes = source.centroids.detach(), source.interchange_codes()
        else:
            centroids, codes = entry["centroids"], entry["codes"]
            if codes.dtype == torch.int16:
                codes = codes.to(torch.int32)
        layer = pq_cls.from_config(entry["config"], centroids, codes, entry["bias"]).to(device_of(current_of[name]))
        if source is not None:
            share_storage(layer, source)
        replace_module(model, name, layer)
        restored[name] = layer
    load_remaining_state(model, data["state_dict"], names, strict, "load_compressed")
    return names
