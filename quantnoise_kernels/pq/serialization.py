"""Compact save/load of PQ-compressed models (and, re-exported, the import of fairseq iPQ state_dicts).

File format (``torch.save`` of plain containers, loaded with ``weights_only=True``; version 1)::

    {"format": "quantnoise_kernels.pq.compressed", "version": 1, "torch_version": str,
     "layers": [                                  # one entry per PQ layer path, module order
        {"name": "decoder.layers.0.fc1", "class": "PQLinear", "dense_class": "Linear",
         "weight_shape": [out, row], "block_size": bs, "n_centroids": K,
         "config": {...},                         # PQLayer.config(): the layer arguments (in/out, conv, embedding)
         "codes": Tensor[out, row/bs],            # interchange layout; uint8 (K <= 256), int16, or int32
         "centroids": Tensor[K, bs],              # the layer's dtype, fp16 by default (bit-exact)
         "centroid_scale": Tensor[1],             # only with int8 centroids (iPQ & int8): float32 scale
         "centroid_zero_point": Tensor[1],        #   and int32 zero point; value = (c - zero_point) * scale
         "act_bits": 8,                           # only when the layer fake-quantizes its activations
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
from ._checks import check_finite, check_model, check_state_fits
from ._model import device_of, load_remaining_state, replace_all, share_storage, state_outside
from .fairseq import from_fairseq_state_dict
from .registry import is_pq_layer, pq_class_by_dense_name, pq_class_for

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


def _layer_entry(
    name: str, module: nn.Module, centroid_owner: dict[int, str], centroid_dtype: torch.dtype | None
) -> dict[str, Any]:
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
        int8 = module.centroids.dtype == torch.int8  # iPQ & int8: written as held, with scale and zero point
        centroids = module.centroids if centroid_dtype is None or int8 else module.centroids.to(centroid_dtype)
        entry["centroids"] = _compact(centroids)
        if int8:
            entry["centroid_scale"] = _compact(module.centroid_scale)
            entry["centroid_zero_point"] = _compact(module.centroid_zero_point)
    if module.act_bits:
        entry["act_bits"] = module.act_bits
    return entry


def save_compressed(model: nn.Module, path: str | os.PathLike, *, centroid_dtype: torch.dtype | None = None) -> None:
    """Write ``model`` (with PQ layers) to a compact file: uint8 codes, centroids, metadata, the rest.

    Args:
        model: a model whose quantized layers are PQ layers (e.g. after :func:`quantize_model_`).
        path: destination file.
        centroid_dtype: write the centroids in this float dtype (``torch.float16`` halves them); None (default)
            writes them as the layers hold them, so that :func:`load_compressed` restores the model bit for bit.

    Raises:
        TypeError: ``centroid_dtype`` is not a float dtype or None.
    """
    check_model("save_compressed", model)
    if isinstance(path, (str, os.PathLike)):
        parent = os.path.dirname(os.path.abspath(os.fspath(path)))
        if os.path.isdir(path):
            raise IsADirectoryError(f"save_compressed: {os.fspath(path)!r} is a directory")
        if not os.path.isdir(parent):
            raise FileNotFoundError(f"save_compressed: the directory {parent!r} of {os.fspath(path)!r} does not exist")
    if centroid_dtype is not None and centroid_dtype not in (
        torch.float16,
        torch.bfloat16,
        torch.float32,
        torch.float64,
    ):
        raise TypeError(f"save_compressed: centroid_dtype must be a float dtype or None, got {centroid_dtype!r}")
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
        check_finite(f"save_compressed: layer {name!r}", "its centroids", module.centroids)
        layers.append(_layer_entry(name, module, centroid_owner, centroid_dtype))
    rest = {k: _compact(v) for k, v in state_outside(model, [entry["name"] for entry in layers]).items()}
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "torch_version": str(torch.__version__),
        "layers": layers,
        "state_dict": rest,
    }
    torch.save(payload, path)


_ENTRY_KEYS = ("name", "class", "dense_class", "weight_shape", "block_size", "n_centroids", "config", "bias", "tied_to")


_ZIP_MAGIC = b"PK\x03\x04"  # torch.save writes a zip archive; save_compressed always does


def _why_unreadable(path: Any) -> str:
    """What is wrong with a file ``torch.load`` refused, in the user's terms (the torch error stays chained)."""
    if not isinstance(path, (str, os.PathLike)):
        return "torch.load cannot read it (see the chained error)"
    with open(path, "rb") as f:  # it opened a moment ago
        head = f.read(4)
    if not head:
        return "the file is empty"
    if head != _ZIP_MAGIC:
        return f"wrong magic {head!r} (expected {_ZIP_MAGIC!r}): not a file written by save_compressed"
    return "the torch.save archive is truncated or corrupted"


def _read(path: str | os.PathLike, map_location: Any) -> dict[str, Any]:
    """The file's payload, its format and version checked."""
    where = f"load_compressed: {os.fspath(path)!r}" if isinstance(path, (str, os.PathLike)) else "load_compressed"
    try:
        data = torch.load(path, map_location=map_location or "cpu", weights_only=True)
    except OSError:
        raise  # FileNotFoundError, IsADirectoryError, PermissionError: they name the path
    except Exception as error:  # a truncated, corrupted or foreign file: torch's errors do not say which
        raise ValueError(f"{where} is not a readable {FORMAT} file: {_why_unreadable(path)}") from error
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"{where} is not a {FORMAT} file")
    if data.get("version") != VERSION:
        raise ValueError(f"{where}: file version {data.get('version')} is not supported (expected {VERSION})")
    if not isinstance(data.get("layers"), list) or not isinstance(data.get("state_dict"), dict):
        raise ValueError(f"{where}: malformed file: 'layers' must be a list and 'state_dict' a dict")
    return data


def _entry(raw: Any, index: int, seen: set[str]) -> dict[str, Any]:
    """A layer entry with every key it needs (a malformed file gets a ValueError naming the entry and the key)."""
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
        raise ValueError(f"load_compressed: layer entry {index} is malformed (no 'name')")
    name = raw["name"]
    if name in seen:
        raise ValueError(f"load_compressed: layer {name!r} appears twice in the file")
    seen.add(name)
    needed = ("name", "same_module_as") if raw.get("same_module_as") else _ENTRY_KEYS
    if not raw.get("same_module_as") and not raw.get("tied_to"):
        needed = needed + ("codes", "centroids")
    missing = [key for key in needed if key not in raw]
    if missing:
        raise ValueError(f"load_compressed: layer {name!r}: the file entry has no {missing}")
    return raw


def _module_at(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise ValueError(f"load_compressed: the model has no module {name!r}") from None


def _check_fits(entry: dict[str, Any], current: nn.Module, pq_cls: type) -> None:
    """The module ``current`` of the model is the layer the entry was saved from: class, shape, configuration
    (kernel size, stride, groups, ...), bias."""
    name = entry["name"]
    if not (isinstance(current, pq_cls) or pq_class_for(current) is pq_cls):
        raise ValueError(
            f"load_compressed: {name!r} is a {type(current).__name__} in the model, the file holds a "
            f"{entry['class']} (from {entry['dense_class']})"
        )
    shape = tuple(current.weight_shape if isinstance(current, pq_cls) else current.weight.shape)
    if [shape[0], row_length(shape)] != list(entry["weight_shape"]):
        raise ValueError(
            f"load_compressed: {name!r} has a weight of shape {shape} (rows {shape[0]} x {row_length(shape)}), "
            f"the file holds {entry['weight_shape']}"
        )
    config = pq_cls.config_of(current)
    if not isinstance(entry["config"], dict):
        raise ValueError(f"load_compressed: layer {name!r}: the file's config must be a dict")
    for key in sorted(set(config) | set(entry["config"])):
        if config.get(key) != entry["config"].get(key):
            raise ValueError(
                f"load_compressed: {name!r} has {key}={config.get(key)!r} in the model, the file holds "
                f"{key}={entry['config'].get(key)!r} (a file for another architecture?)"
            )
    has_bias = getattr(current, "bias", None) is not None
    if pq_cls._HAS_BIAS and has_bias != (entry["bias"] is not None):
        in_model, in_file = ("a", "none") if has_bias else ("no", "one")
        raise ValueError(f"load_compressed: {name!r} has {in_model} bias in the model, the file holds {in_file}")


def _tensor(entry: dict[str, Any], key: str) -> Tensor:
    value = entry[key]
    if not isinstance(value, Tensor):
        raise ValueError(
            f"load_compressed: layer {entry['name']!r}: '{key}' must be a tensor, got {type(value).__name__}"
        )
    return value


def _build_layer(model: nn.Module, entry: dict[str, Any], restored: dict[str, nn.Module]) -> nn.Module:
    """The PQ layer of one file entry, checked against the model (which is not changed)."""
    name = entry["name"]
    current = _module_at(model, name)
    pq_cls = pq_class_by_dense_name(entry["dense_class"])
    if pq_cls is None:
        raise ValueError(f"load_compressed: {name!r}: the file holds an unknown layer {entry['dense_class']!r}")
    _check_fits(entry, current, pq_cls)
    source = None
    if entry["tied_to"]:
        source = restored.get(entry["tied_to"])
        if source is None:
            raise ValueError(f"load_compressed: {name!r} is tied to {entry['tied_to']!r}, which no earlier entry holds")
        other = _module_at(model, entry["tied_to"])
        if not is_pq_layer(current) and getattr(other, "weight", None) is not current.weight:
            raise ValueError(
                f"load_compressed: {name!r} shares its weight with {entry['tied_to']!r} in the file, not in the model"
            )
        centroids, codes = source.centroids.detach(), source.interchange_codes()
        codebook = source._codebook_args()
    else:
        centroids, codes = _tensor(entry, "centroids"), _tensor(entry, "codes")
        if centroids.is_floating_point():
            check_finite(f"load_compressed: layer {name!r}", "its centroids", centroids)
        if codes.dtype == torch.int16:
            codes = codes.to(torch.int32)
        codebook = {k: _tensor(entry, k) if k in entry else None for k in ("centroid_scale", "centroid_zero_point")}
    bias = entry["bias"] if entry["bias"] is None else _tensor(entry, "bias")
    try:
        layer = pq_cls.from_config(entry["config"], centroids, codes, bias, **codebook)
    except (TypeError, ValueError) as error:
        raise ValueError(f"load_compressed: layer {name!r}: {error}") from error
    layer = layer.to(device_of(current))
    layer.act_bits = entry.get("act_bits", 0)
    if source is not None:
        share_storage(layer, source)
    return layer


def _build_layers(model: nn.Module, raw_layers: list[Any]) -> list[tuple[str, nn.Module]]:
    """(name, PQ layer) for every file entry, every entry checked and built; the model is not changed."""
    restored: dict[str, nn.Module] = {}
    replacements: list[tuple[str, nn.Module]] = []
    seen: set[str] = set()
    for index, raw in enumerate(raw_layers):
        entry = _entry(raw, index, seen)
        name, same_as = entry["name"], entry.get("same_module_as")
        if same_as:
            if same_as not in restored:
                raise ValueError(f"load_compressed: {name!r} is the module {same_as!r}, which no earlier entry holds")
            if _module_at(model, name) is not _module_at(model, same_as):
                raise ValueError(
                    f"load_compressed: {name!r} and {same_as!r} are one module in the file, two in the model"
                )
            replacements.append((name, restored[same_as]))
            continue
        restored[name] = _build_layer(model, entry, restored)
        replacements.append((name, restored[name]))
    return replacements


def load_compressed(
    model: nn.Module, path: str | os.PathLike, *, map_location: Any = None, strict: bool = True
) -> list[str]:
    """Load a file written by :func:`save_compressed` into ``model``, a fresh instance of the same architecture.

    The listed layers (dense layers of the classes the registry knows, in ``model``) are replaced by PQ layers
    on the device of the layer they replace; the non-quantized parameters and buffers are loaded as they were
    saved. All or nothing: every entry is checked against the model (class, weight shape, layer configuration
    such as kernel size, stride, groups and padding, bias, ties, finite centroids, codes in range) and every PQ
    layer is built before the model is changed, and the remaining entries are checked to load (keys, shapes);
    on any error the model is exactly as it was.

    Args:
        model: the dense model (or one already holding PQ layers at those names).
        path: the file (or a file-like object ``torch.load`` takes).
        map_location: passed to ``torch.load``.
        strict: raise if the non-quantized keys do not match exactly.

    Returns:
        The names of the PQ layers restored.

    Raises:
        FileNotFoundError (or another ``OSError``): the file cannot be opened.
        ValueError: not a readable compressed file, unknown version, a malformed entry, or a layer that differs
            from ``model`` (the message names the layer and the value).
        RuntimeError: non-quantized keys missing or unexpected (``strict``).
    """
    check_model("load_compressed", model)
    data = _read(path, map_location)
    replacements = _build_layers(model, data["layers"])
    names = [name for name, _ in replacements]
    check_state_fits("load_compressed", model, data["state_dict"], names, strict)
    replace_all(
        model, replacements, lambda: load_remaining_state(model, data["state_dict"], names, strict, "load_compressed")
    )
    return names
