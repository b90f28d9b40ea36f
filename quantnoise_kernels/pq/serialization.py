"""Compact save/load of PQ-compressed models, and import of fairseq iPQ state_dicts.

File format (``torch.save`` of plain containers, loaded with ``weights_only=True``; version 1)::

    {"format": "quantnoise_kernels.pq.compressed", "version": 1, "torch_version": str,
     "layers": [                                  # one entry per PQ layer path, module order
        {"name": "decoder.layers.0.fc1", "class": "PQLinear", "dense_class": "Linear",
         "weight_shape": [out, in], "block_size": bs, "n_centroids": K,
         "config": {...},                         # constructor hyper-parameters (in/out, conv, embedding args)
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

from .pipeline import (
    _layer_classes,
    _lookup,
    _share_storage,
    _weight_row,
    build_pq_layer,
    codes_from_fairseq,
    is_pq_layer,
    layer_config,
    replace_module,
)

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
    if n_centroids <= 256:
        return codes.to(torch.uint8)
    if n_centroids <= 32768:
        return codes.to(torch.int16)
    return codes.to(torch.int32)


def _dense_name(pq_cls: type) -> str:
    for dense_cls, cls in _layer_classes().items():
        if cls is pq_cls:
            return dense_cls.__name__
    raise TypeError(f"save_compressed: {pq_cls.__name__} is not a known PQ layer class")


def _under(key: str, prefixes: list[str]) -> bool:
    return any(key.startswith(p) for p in prefixes)


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
        entry: dict[str, Any] = {"name": name, "class": type(module).__name__, "tied_to": None, "same_module_as": None}
        if id(module) in first_path:
            entry["same_module_as"] = first_path[id(module)]
            layers.append(entry)
            continue
        first_path[id(module)] = name
        codes = module.interchange_codes()
        n_centroids, block_size = module.centroids.shape
        config = layer_config(module)
        entry.update(
            dense_class=_dense_name(type(module)),
            weight_shape=[int(codes.shape[0]), int(codes.shape[1]) * int(block_size)],
            block_size=int(block_size),
            n_centroids=int(n_centroids),
            config=config,
            bias=None if module.bias is None else _compact(module.bias),
        )
        if id(module.centroids) in centroid_owner:
            entry["tied_to"] = centroid_owner[id(module.centroids)]
        else:
            centroid_owner[id(module.centroids)] = name
            entry["codes"] = _compact(_codes_for_file(codes, int(n_centroids)))
            entry["centroids"] = _compact(module.centroids)
        layers.append(entry)
    prefixes = [entry["name"] + "." for entry in layers]
    rest = {k: _compact(v) for k, v in model.state_dict().items() if not _under(k, prefixes)}
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "torch_version": str(torch.__version__),
        "layers": layers,
        "state_dict": rest,
    }
    torch.save(payload, path)


def _device_of(module: nn.Module) -> torch.device:
    for t in module.parameters():
        return t.device
    return torch.device("cpu")


def _load_rest(model: nn.Module, rest: dict[str, Tensor], pq_names: list[str], strict: bool, what: str) -> None:
    prefixes = [n + "." for n in pq_names]
    result = model.load_state_dict(rest, strict=False)
    missing = [k for k in result.missing_keys if not _under(k, prefixes)]
    unexpected = list(result.unexpected_keys)
    if strict and (missing or unexpected):
        raise RuntimeError(f"{what}: state_dict mismatch: missing keys {missing}, unexpected keys {unexpected}")


def load_compressed(
    model: nn.Module, path: str | os.PathLike, *, map_location: Any = None, strict: bool = True
) -> list[str]:
    """Load a file written by :func:`save_compressed` into ``model``, a fresh instance of the same architecture.

    The listed layers (dense ``Linear``/``Embedding``/``Conv2d`` in ``model``) are replaced by PQ layers on the
    device of the layer they replace; the non-quantized parameters and buffers are loaded as they were saved.

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
    classes = {dense.__name__: (dense, pq) for dense, pq in _layer_classes().items()}
    # Check every layer before replacing any, so that a mismatch leaves the model untouched.
    current_of: dict[str, nn.Module] = {}
    for entry in data["layers"]:
        name = entry["name"]
        if entry.get("same_module_as"):
            continue
        try:
            current = model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"load_compressed: the model has no module {name!r}") from None
        dense_cls, pq_cls = classes[entry["dense_class"]]
        if not isinstance(current, (dense_cls, pq_cls)):
            raise ValueError(
                f"load_compressed: {name!r} is a {type(current).__name__} in the model, the file holds a "
                f"{entry['class']} (from {entry['dense_class']})"
            )
        if isinstance(current, dense_cls):
            out, row = _weight_row(current)
            if [out, row] != list(entry["weight_shape"]):
                raise ValueError(
                    f"load_compressed: {name!r} has a weight of shape {tuple(current.weight.shape)} (rows {out} x "
                    f"{row}), the file holds {entry['weight_shape']}"
                )
        current_of[name] = current

    restored: dict[str, nn.Module] = {}
    names = []
    for entry in data["layers"]:
        name = entry["name"]
        if entry.get("same_module_as"):
            replace_module(model, name, restored[entry["same_module_as"]])
            names.append(name)
            continue
        current = current_of[name]
        _, pq_cls = classes[entry["dense_class"]]
        source = restored[entry["tied_to"]] if entry.get("tied_to") else None
        if source is not None:
            centroids, codes = source.centroids.detach(), source.interchange_codes()
        else:
            centroids, codes = entry["centroids"], entry["codes"]
            if codes.dtype == torch.int16:
                codes = codes.to(torch.int32)
        layer = build_pq_layer(pq_cls, entry["config"], centroids, codes, entry["bias"]).to(_device_of(current))
        if source is not None:
            _share_storage(layer, source)
        replace_module(model, name, layer)
        restored[name] = layer
        names.append(name)
    _load_rest(model, data["state_dict"], names, strict, "load_compressed")
    return names


def from_fairseq_state_dict(
    model: nn.Module, state_dict: dict[str, Any], *, strict: bool = True, centroid_dtype: torch.dtype | None = None
) -> list[str]:
    """Import a fairseq iPQ state_dict into ``model`` (the dense architecture), replacing the quantized layers.

    For each ``<name>.centroids`` ``[K, bs]`` / ``<name>.assignments`` (int64, fairseq block order
    ``n = j*out + o``) pair, the dense module at ``<name>`` becomes a PQ layer with those centroids (dtype kept,
    fp32 from fairseq, unless ``centroid_dtype``), codes in the interchange layout and ``<name>.bias``;
    ``<name>.counts`` is dropped (the layers recount). Its decoded weight equals fairseq's reconstruction
    (``reference.pq_decode_fairseq``). Every other key is loaded with ``load_state_dict``.

    Args:
        model: the dense model (fresh instance of the architecture the checkpoint was trained with).
        state_dict: the fairseq model state_dict (a full checkpoint dict with a ``"model"`` entry also works).
        strict: raise on keys that match nothing / parameters left unset.
        centroid_dtype: cast the centroids (e.g. ``torch.float16``); None keeps the checkpoint's dtype.

    Returns:
        The names of the layers imported as PQ layers.
    """
    if "model" in state_dict and isinstance(state_dict["model"], dict):
        state_dict = state_dict["model"]
    classes = _layer_classes()
    layer_names = [k[: -len(".assignments")] for k in state_dict if k.endswith(".assignments")]
    imported: list[str] = []
    used: set[str] = set()
    for raw in layer_names:
        name = raw
        if name.startswith("module.") and not hasattr(model, "module"):
            name = name[len("module.") :]
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise ValueError(
                f"from_fairseq_state_dict: the model has no module {name!r} for '{raw}.assignments'"
            ) from None
        if is_pq_layer(module):
            module = module.to_dense()
        dense_cls = next((c for c in classes if type(module) is c), None)
        if dense_cls is None:
            raise ValueError(
                f"from_fairseq_state_dict: {name!r} is a {type(module).__name__}, not a Linear/Embedding/Conv2d"
            )
        centroids = _lookup(state_dict, raw, "centroids")
        assignments = state_dict[f"{raw}.assignments"]
        if centroids is None or centroids.dim() != 2:
            raise ValueError(f"from_fairseq_state_dict: '{raw}.centroids' must be a [K, block_size] tensor")
        n_centroids, block_size = centroids.shape
        out, row = _weight_row(module)
        if row % block_size != 0:
            raise ValueError(
                f"from_fairseq_state_dict: {name!r}: block size {block_size} (centroids {tuple(centroids.shape)}) "
                f"does not divide the row length {row} of weight {tuple(module.weight.shape)}"
            )
        codes = codes_from_fairseq(assignments, n_centroids, out, row, block_size, name)
        bias = None
        if getattr(module, "bias", None) is not None:
            bias = state_dict.get(f"{raw}.bias")
            if bias is None:
                raise ValueError(f"from_fairseq_state_dict: '{raw}.bias' is missing for a layer with a bias")
            bias = bias.detach().clone().to(module.bias.dtype)
            used.add(f"{raw}.bias")
        centroids = centroids.detach().clone()
        if centroid_dtype is not None:
            centroids = centroids.to(centroid_dtype)
        layer = build_pq_layer(classes[dense_cls], layer_config(module), centroids, codes, bias)
        replace_module(model, name, layer.to(module.weight.device))
        imported.append(name)
        used.update({f"{raw}.centroids", f"{raw}.assignments", f"{raw}.counts"})
    rest = {k: v for k, v in state_dict.items() if k not in used}
    _load_rest(model, rest, imported, strict, "from_fairseq_state_dict")
    return imported
