"""Which layers a stage quantizes and with what parameters: ``get_layers`` and ``get_param`` (fairseq's rules)."""

from __future__ import annotations

import re
from typing import Any

from torch import nn

from .registry import config_class_names

__all__ = ["get_layers", "get_param", "stage_regex", "layer_names"]


def _layer_name(param_name: str, remove_weights: bool) -> str:
    name = param_name.replace(".weight_orig", "")  # spectral norm
    if remove_weights:
        name = name.replace(".weights", "")
    return name.replace(".weight", "")


def layer_names(model: nn.Module, remove_weights: bool, remove_duplicate: bool) -> list[str]:
    """Parameter names without biases, ``.weight_orig``/``.weights``/``.weight`` stripped (fairseq's list)."""
    names = []
    for param_name, _ in model.named_parameters(remove_duplicate=remove_duplicate):
        if "bias" in param_name:
            continue
        names.append(_layer_name(param_name, remove_weights))
    return names


def stage_regex(filter_regexp: str) -> re.Pattern:
    """``(module\\.)?(<regex>)``: ``re.match`` of it is fairseq's prefix match, DataParallel wrappers accepted."""
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
    regex = stage_regex(filter_regexp)
    return [name for name in layer_names(model, remove_weights, True) if regex.match(name)]


def get_param(module: nn.Module, layer_name: str, param_config: dict) -> Any:
    """The block size or number of centroids of ``module`` from a ``{class name: (feature, {value: param})}`` config.

    fairseq's rule: ``config[type(module).__name__] = (feature, params)``; a module wrapped by ``quant_noise`` is
    looked up under the class it wraps, and a subclass of a quantizable layer not in the config under that layer's
    class (``NonDynamicallyQuantizableLinear`` under ``Linear``). If ``feature == "fuzzy_name"``, the
    first key (in dict order) that is a substring of ``layer_name``; else the key equal to
    ``str(getattr(module, feature))`` (keys are compared as strings, so YAML integer keys work too). If
    nothing matches, ``"*"``.

    Raises:
        KeyError: the class is not in the config, ``module`` has no attribute ``feature``, or no key matches and
            there is no ``"*"`` (the message names the layer, the feature and its value).
    """
    candidates = config_class_names(module)
    layer_type = next((name for name in candidates if name in param_config), None)
    if layer_type is None:
        raise KeyError(
            f"layer {layer_name!r}: module type {' / '.join(candidates)} is not in the config "
            f"(config has {sorted(param_config)})"
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
        if str(key) == value:
            return params[key]
    if "*" in params:
        return params["*"]
    raise KeyError(f"layer {layer_name!r}: {feature}={value} is not in the config keys {list(params)} and no '*'")
