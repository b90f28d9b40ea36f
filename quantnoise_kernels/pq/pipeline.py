"""Staged iPQ: ``quantize_model_``, ``get_layers``, ``get_param`` (fairseq's signatures and semantics).

Differences from fairseq, all deliberate:

- k-means runs on our batched kernels (``PQ`` / ``kmeans``), not fairseq's broadcast-distance EM.
- Tied weights stay tied: every module whose ``weight`` is the same Parameter (or the same module object
  reachable under several names) is replaced together; the parameter is clustered once and all the PQ
  layers share one ``centroids`` Parameter (and the codes buffers where the layouts agree). fairseq lists
  a shared parameter once and replaces only that module, which unties the others.
- With ``torch.distributed`` initialised, every parameter and buffer of each new PQ layer is broadcast from
  rank 0 (fairseq broadcasts centroids and assignments), so all ranks hold identical layers.
- Errors name the layer, the pattern and the offending value; a stage that matches no layer logs a warning.
- Embedding keeps ``padding_idx``/``max_norm``/...; Conv2d keeps ``padding_mode``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .config import normalize_param_config

__all__ = ["quantize_model_", "get_layers", "get_param", "build_pq_layer", "is_pq_layer", "replace_module"]

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------
# Names and configuration


def _layer_name(param_name: str, remove_weights: bool) -> str:
    name = param_name.replace(".weight_orig", "")  # spectral norm
    if remove_weights:
        name = name.replace(".weights", "")
    return name.replace(".weight", "")


def _layer_names(model: nn.Module, remove_weights: bool, remove_duplicate: bool) -> list[str]:
    names = []
    for param_name, _ in model.named_parameters(remove_duplicate=remove_duplicate):
        if "bias" in param_name:
            continue
        names.append(_layer_name(param_name, remove_weights))
    return names


def _stage_regex(filter_regexp: str) -> re.Pattern:
    # `(module\.)?` accepts DataParallel/DDP wrappers; re.match anchors at the start only (prefix match).
    try:
        return re.compile(r"(module\.)?(" + filter_regexp + ")")
    except re.error as error:
        raise ValueError(
            f"quantize_model_: layers_to_quantize pattern {filter_regexp!r} is not a regex ({error})"
        ) from error


def get_layers(model: nn.Module, filter_regexp: str, remove_weights: bool = False) -> list[str]:
    """Names of the layers whose parameter names match ``filter_regexp`` (fairseq's rule).

    Parameter names from ``model.named_parameters()`` (a shared parameter appears once), names containing
    ``"bias"`` dropped, ``.weight_orig`` (spectral norm), optionally ``.weights``, then ``.weight`` removed;
    kept if ``re.match(r"(module\\.)?(" + filter_regexp + ")", name)`` (anchored at the start only).

    Args:
        model: the model.
        filter_regexp: the stage's regex.
        remove_weights: also strip ``.weights`` from the names.

    Returns:
        The matching names, in parameter order.
    """
    regex = _stage_regex(filter_regexp)
    return [name for name in _layer_names(model, remove_weights, True) if regex.match(name)]


def _match_key(value: Any, key: Any) -> bool:
    return str(key) == value


def get_param(module: nn.Module, layer_name: str, param_config: dict) -> Any:
    """The block size or number of centroids of ``module`` from a ``{class name: (feature, {value: param})}`` config.

    fairseq's rule: ``config[type(module).__name__] = (feature, params)``. If ``feature == "fuzzy_name"``, the
    first key (in dict order) that is a substring of ``layer_name``; else the key equal to
    ``str(getattr(module, feature))`` (keys are compared as strings, so YAML integer keys work too). If
    nothing matches, ``"*"``.

    Raises:
        KeyError: the class is not in the config, ``module`` has no attribute ``feature``, or no key matches and
            there is no ``"*"`` (the message names the layer, the feature and its value).
    """
    layer_type = type(module).__name__
    if layer_type not in param_config:
        raise KeyError(
            f"layer {layer_name!r}: module type {layer_type} is not in the config (config has {sorted(param_config)})"
        )
    entry = param_config[layer_type]
    if isinstance(entry, dict) and set(entry) == {"key", "value"}:
        entry = (entry["key"], entry["value"])
    feature, params = entry
    if feature == "fuzzy_name":
        for key in params:
            if key != "*" and str(key) in layer_name:
                return params[key]
        if "*" in params:
            return params["*"]
        raise KeyError(f"layer {layer_name!r}: no fuzzy_name key of {list(params)} is a substring and no '*' default")
    if not hasattr(module, feature):
        raise KeyError(f"layer {layer_name!r}: {layer_type} has no attribute {feature!r} (config feature)")
    value = str(getattr(module, feature))
    for key in params:
        if _match_key(value, key):
            return params[key]
    if "*" in params:
        return params["*"]
    raise KeyError(f"layer {layer_name!r}: {feature}={value} is not in the config keys {list(params)} and no '*'")


# ----------------------------------------------------------------------------------------------
# Layer classes and construction


def _layer_classes() -> dict[type, type]:
    """Dense class -> PQ class. Imported lazily: the layer module is large and imports the compiled ops."""
    from . import layers

    table: dict[type, type] = {
        nn.Linear: layers.PQLinear,
        nn.Embedding: layers.PQEmbedding,
        nn.Conv2d: layers.PQConv2d,
    }
    if hasattr(layers, "PQConv1d"):
        table[nn.Conv1d] = layers.PQConv1d
    return table


def is_pq_layer(module: nn.Module) -> bool:
    """True for a PQ layer (the agreed interface: ``interchange_codes()`` and a ``centroids`` tensor)."""
    return hasattr(module, "interchange_codes") and isinstance(getattr(module, "centroids", None), Tensor)


def _dense_class(module: nn.Module) -> type | None:
    for dense_cls in _layer_classes():
        if type(module) is dense_cls:
            return dense_cls
    return None


def layer_config(module: nn.Module) -> dict[str, Any]:
    """Constructor hyper-parameters of a dense or PQ Linear/Embedding/Conv layer (plain Python values)."""
    if hasattr(module, "in_features"):
        keys = ["in_features", "out_features"]
    elif hasattr(module, "num_embeddings"):
        keys = ["num_embeddings", "embedding_dim", "padding_idx", "max_norm", "norm_type", "scale_grad_by_freq"]
        keys.append("sparse")
    else:
        keys = ["in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups"]
        keys.append("padding_mode")
    config = {}
    for key in keys:
        value = getattr(module, key)
        config[key] = list(value) if isinstance(value, tuple) else value
    return config


def build_pq_layer(
    pq_cls: type, config: dict[str, Any], centroids: Tensor, codes: Tensor, bias: Tensor | None
) -> nn.Module:
    """Construct ``pq_cls`` from centroids ``[K, bs]``, interchange codes ``[out, row/bs]``, a bias and ``config``.

    The centroids keep their dtype (the constructor may store another one; it is then set back), so a
    round trip through this function is bit-exact.
    """
    cfg = {k: (tuple(v) if isinstance(v, list) else v) for k, v in config.items()}
    if "in_features" in cfg:
        layer = pq_cls(centroids, codes, bias, cfg["in_features"], cfg["out_features"])
    elif "num_embeddings" in cfg:
        layer = pq_cls(
            centroids,
            codes,
            cfg["num_embeddings"],
            cfg["embedding_dim"],
            padding_idx=cfg.get("padding_idx"),
            max_norm=cfg.get("max_norm"),
            norm_type=cfg.get("norm_type", 2.0),
            scale_grad_by_freq=cfg.get("scale_grad_by_freq", False),
            sparse=cfg.get("sparse", False),
        )
    else:
        padding = cfg["padding"]
        layer = pq_cls(
            centroids,
            codes,
            bias,
            cfg["in_channels"],
            cfg["out_channels"],
            cfg["kernel_size"],
            stride=cfg["stride"],
            padding=padding if isinstance(padding, str) else tuple(padding),
            dilation=cfg["dilation"],
            groups=cfg["groups"],
            padding_mode=cfg["padding_mode"],
        )
    if layer.centroids.dtype != centroids.dtype:
        layer.centroids = nn.Parameter(centroids.detach().clone(), requires_grad=layer.centroids.requires_grad)
    return layer


def _parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    head, _, tail = name.rpartition(".")
    return (model.get_submodule(head) if head else model), tail


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Set the sub-module at dotted path ``name`` to ``new``."""
    parent, tail = _parent(model, name)
    setattr(parent, tail, new)


def _share_storage(dst: nn.Module, src: nn.Module) -> None:
    """Make the PQ layer ``dst`` use ``src``'s centroids Parameter and, where layouts agree, its codes buffers."""
    dst.centroids = src.centroids
    for name, buf in src.named_buffers(recurse=False):
        mine = dst._buffers.get(name)
        if mine is not None and mine.shape == buf.shape and mine.dtype == buf.dtype and torch.equal(mine, buf):
            dst._buffers[name] = buf


def _weight_row(module: nn.Module) -> tuple[int, int]:
    w = module.weight
    return w.shape[0], (w[0].numel() if w.shape[0] else w.numel())


def _check_block_size(name: str, module: nn.Module, block_size: Any, n_centroids: Any) -> None:
    for label, value in (("block size", block_size), ("n_centroids", n_centroids)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"quantize_model_: layer {name!r}: {label} must be a positive int, got {value!r}")
    _, row = _weight_row(module)
    if row % block_size != 0:
        raise ValueError(
            f"quantize_model_: layer {name!r}: block size {block_size} must divide the row length {row} of its "
            f"weight {tuple(module.weight.shape)} (row = weight.reshape(out, -1)[0])"
        )


# ----------------------------------------------------------------------------------------------
# fairseq-format entries (used by the state_dict path here and by serialization.from_fairseq_state_dict)


def codes_from_fairseq(assignments: Tensor, n_centroids: int, out: int, row: int, block_size: int, name: str) -> Tensor:
    """fairseq's flat ``assignments`` (block index major: ``n = j*out + o``) -> interchange codes ``[out, row/bs]``."""
    from .quantizer import from_fairseq_order

    n_blocks = out * (row // block_size)
    if assignments.dim() != 1 or assignments.numel() != n_blocks:
        raise ValueError(
            f"layer {name!r}: assignments must be 1-D with out * row / block_size = {out} * {row} / {block_size} = "
            f"{n_blocks} entries, got shape {tuple(assignments.shape)}"
        )
    if assignments.is_floating_point() or assignments.is_complex():
        raise TypeError(f"layer {name!r}: assignments must be an integer tensor, got {assignments.dtype}")
    if n_blocks and (int(assignments.min()) < 0 or int(assignments.max()) >= n_centroids):
        raise ValueError(
            f"layer {name!r}: assignments must lie in [0, {n_centroids}), got range "
            f"[{int(assignments.min())}, {int(assignments.max())}]"
        )
    codes = from_fairseq_order(assignments.long(), out)
    return codes.to(torch.uint8 if n_centroids <= 256 else torch.int32).contiguous()


def _lookup(state_dict: dict, name: str, suffix: str) -> Tensor | None:
    for prefix in ("", "module."):
        key = f"{prefix}{name}.{suffix}"
        if key in state_dict:
            return state_dict[key]
    return None


# ----------------------------------------------------------------------------------------------
# quantize_model_


def _groups(model: nn.Module) -> dict[int, list[tuple[str, nn.Module]]]:
    """id(weight Parameter) -> every (path, module) using it as ``.weight``, in module order."""
    groups: dict[int, list[tuple[str, nn.Module]]] = {}
    for path, module in model.named_modules(remove_duplicate=False):
        weight = module._parameters.get("weight") if hasattr(module, "_parameters") else None
        if isinstance(weight, Tensor):
            groups.setdefault(id(weight), []).append((path, module))
    return groups


def _owner_is_pq(model: nn.Module, name: str) -> bool:
    head, _, _ = name.rpartition(".")
    try:
        owner = model.get_submodule(head) if head else model
    except AttributeError:
        return False
    return is_pq_layer(owner)


def quantize_model_(
    model: nn.Module,
    size_tracker,
    layers_to_quantize: Sequence[str] | str,
    block_sizes_config: dict,
    n_centroids_config: dict,
    step: int = 0,
    n_iter: int = 15,
    eps: float = 1e-6,
    max_tentatives: int = 100,
    remove_weights: bool = False,
    verbose: bool = True,
    state_dict: dict | None = None,
    *,
    seed: int | None = None,
    centroid_dtype: torch.dtype = torch.float16,
) -> list[str]:
    """Quantize, in place, the layers selected by stage ``step`` and replace them by PQ layers (fairseq's API).

    Args:
        model: the model (dense, or partly quantized by earlier stages).
        size_tracker: a :class:`SizeTracker` (``update(W, block_size, K)`` is called once per quantized
            weight), or None.
        layers_to_quantize: one regex per stage; stage ``step`` is applied (see :func:`get_layers`).
        block_sizes_config: ``{class name: (feature, {value: block_size})}`` (see :func:`get_param`).
        n_centroids_config: ``{class name: (feature, {value: K})}``.
        step: the stage index.
        n_iter: k-means iterations (fairseq's default 15).
        eps: centroid perturbation when splitting a cluster to fill an empty one.
        max_tentatives: empty-cluster repair attempts.
        remove_weights: also strip ``.weights`` from parameter names (fairseq option).
        verbose: log each layer (rank 0 only).
        state_dict: with ``n_iter == 0``, build the layers from this fairseq-format state_dict
            (``<layer>.centroids`` ``[K, bs]``, ``<layer>.assignments`` in fairseq block order, ``<layer>.bias``)
            instead of running k-means (fairseq uses this path to load a quantized checkpoint; it fills random
            values of the right shape, we take the real ones).
        seed: k-means seed (each layer uses ``seed + index``); None draws from torch's default generator.
        centroid_dtype: dtype of the stored centroids (fp16 by default).

    Returns:
        The names of the modules replaced, in order (a tied module is listed under each of its names).

    Raises:
        IndexError: ``step`` out of range.
        KeyError: the config has no entry for a selected layer (see :func:`get_param`).
        ValueError: a selected name is not a Linear/Embedding/Conv2d(/Conv1d), the block size does not divide
            the row, or a tied weight is also used by an unsupported module.
    """
    if isinstance(layers_to_quantize, str):
        layers_to_quantize = [layers_to_quantize]
    if not 0 <= step < len(layers_to_quantize):
        raise IndexError(f"quantize_model_: step must be in [0, {len(layers_to_quantize)}), got {step}")
    block_sizes_config = normalize_param_config(block_sizes_config, "block_sizes_config")
    n_centroids_config = normalize_param_config(n_centroids_config, "n_centroids_config")
    pattern = layers_to_quantize[step]
    regex = _stage_regex(pattern)
    classes = _layer_classes()

    distributed = dist.is_available() and dist.is_initialized()
    verbose = verbose and (not distributed or dist.get_rank() == 0)

    groups = _groups(model)
    matched = [n for n in _layer_names(model, remove_weights, remove_duplicate=False) if regex.match(n)]
    if not matched:
        hint = " (a doubled backslash `\\\\` matches a literal backslash)" if "\\\\" in pattern else ""
        logger.warning("quantize_model_: stage %d pattern %r matches no layer%s", step, pattern, hint)

    # Plan first (types, config, block sizes, ties), so that a bad config leaves the model untouched.
    done: set[int] = set()
    plan = []
    for index, name in enumerate(matched):
        if _owner_is_pq(model, name):
            continue  # a parameter of a layer quantized at an earlier stage
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise ValueError(
                f"quantize_model_: {name!r} (matched by {pattern!r}) is a parameter, not a module; "
                "only Linear, Embedding and Conv2d layers can be quantized (narrow the regex)"
            ) from None
        if is_pq_layer(module):
            continue
        dense_cls = _dense_class(module)
        if dense_cls is None:
            raise ValueError(
                f"quantize_model_: layer {name!r} (matched by {pattern!r}) is a {type(module).__name__}; only "
                f"{', '.join(c.__name__ for c in classes)} can be quantized (narrow the regex)"
            )
        weight = module.weight
        if id(weight) in done:
            continue
        group = groups[id(weight)]
        for path, other in group:
            if _dense_class(other) is None:
                raise ValueError(
                    f"quantize_model_: the weight of {name!r} is tied to {path!r}, a {type(other).__name__}, "
                    "which cannot be quantized; untie it first"
                )
        group_refs = {f"{path}.weight" if path else "weight" for path, _ in group}
        stray = [n for n, p in model.named_parameters(remove_duplicate=False) if p is weight and n not in group_refs]
        if stray:
            raise ValueError(
                f"quantize_model_: the weight of {name!r} is also registered as {stray}, outside any quantizable "
                "layer; untie it first"
            )
        block_size = get_param(module, name, block_sizes_config)
        n_centroids = get_param(module, name, n_centroids_config)
        _check_block_size(name, module, block_size, n_centroids)
        for path, other in group:
            _check_block_size(path, other, block_size, n_centroids)
        done.add(id(weight))
        plan.append((index, name, module, dense_cls, weight, group, block_size, n_centroids))

    replaced: list[str] = []
    for index, name, module, dense_cls, weight, group, block_size, n_centroids in plan:
        if verbose:
            logger.info("Quantizing layer %s with block size %d and %d centroids", name, block_size, n_centroids)

        pq_cls = classes[dense_cls]
        if n_iter == 0 and state_dict is not None:
            pq_module = _from_state_dict_entries(module, name, pq_cls, state_dict)
        else:
            layer_seed = None if seed is None else seed + index
            pq_module = pq_cls.from_float(
                module,
                block_size,
                n_centroids,
                n_iter=n_iter,
                eps=eps,
                max_tentatives=max_tentatives,
                seed=layer_seed,
                centroid_dtype=centroid_dtype,
            )
        pq_module = pq_module.to(weight.device)
        if distributed:
            for tensor in list(pq_module.parameters()) + list(pq_module.buffers()):
                dist.broadcast(tensor.data, 0)

        # Replace every module sharing the weight: the same module object -> the same PQ layer; another module
        # -> its own PQ layer (own bias, own class) sharing the centroids Parameter and the codes.
        built: dict[int, nn.Module] = {id(module): pq_module}
        new_bias: dict[int, Tensor] = {}
        if getattr(module, "bias", None) is not None and pq_module.bias is not None:
            new_bias[id(module.bias)] = pq_module.bias
        for path, other in group:
            if id(other) not in built:
                other_cls = classes[_dense_class(other)]
                bias = getattr(other, "bias", None)
                tied = build_pq_layer(
                    other_cls,
                    layer_config(other),
                    pq_module.centroids.detach(),
                    pq_module.interchange_codes(),
                    None if bias is None else bias.detach().clone(),
                ).to(weight.device)
                _share_storage(tied, pq_module)
                if bias is not None:
                    if id(bias) in new_bias:
                        tied.bias = new_bias[id(bias)]
                    else:
                        new_bias[id(bias)] = tied.bias
                built[id(other)] = tied
            replace_module(model, path, built[id(other)])
            replaced.append(path)
        if size_tracker is not None:
            size_tracker.update(weight.detach(), block_size, n_centroids)
    return replaced


def _from_state_dict_entries(module: nn.Module, name: str, pq_cls: type, state_dict: dict) -> nn.Module:
    """A PQ layer built from fairseq-format ``<name>.centroids/assignments/bias`` entries."""
    centroids = _lookup(state_dict, name, "centroids")
    assignments = _lookup(state_dict, name, "assignments")
    if centroids is None or assignments is None:
        raise KeyError(f"quantize_model_: state_dict has no '{name}.centroids' / '{name}.assignments' entries")
    if centroids.dim() != 2:
        raise ValueError(f"layer {name!r}: centroids must be [K, block_size], got shape {tuple(centroids.shape)}")
    n_centroids, block_size = centroids.shape
    out, row = _weight_row(module)
    if row % block_size != 0:
        raise ValueError(f"layer {name!r}: checkpoint block size {block_size} does not divide the row length {row}")
    codes = codes_from_fairseq(assignments, n_centroids, out, row, block_size, name)
    bias = None
    if getattr(module, "bias", None) is not None:
        bias = _lookup(state_dict, name, "bias")
        if bias is None:
            raise KeyError(f"quantize_model_: state_dict has no '{name}.bias' for a layer with a bias")
        bias = bias.detach().clone().to(module.bias.dtype)
    return build_pq_layer(pq_cls, layer_config(module), centroids.detach().clone(), codes, bias)
