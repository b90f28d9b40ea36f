"""The plan step of :func:`~.pipeline.quantize_model_`: select the layers of a stage, check them, group ties.

:func:`plan_quantization` checks every selected layer (module type, config entry, block size, ties, checkpoint
entries) and groups the modules sharing a weight, without changing the model; :func:`~.pipeline.apply_plan`
then builds and replaces.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor, nn

from .._blocks import check_block_size
from ._checks import FEWER_BLOCKS, check_finite, check_n_centroids, fewer_blocks_rule
from ._model import owner_is_pq, weight_users
from .config import normalize_param_config
from .fairseq import FairseqLayer, fairseq_prefix, read_fairseq_layer
from .layers import PQLayer
from .registry import is_pq_layer, pq_class_for, pq_layer_classes, why_not_quantizable
from .selection import get_param, layer_names, stage_regex

__all__ = ["plan_quantization", "QuantizationPlan", "PlannedLayer"]

logger = logging.getLogger("quantnoise_kernels.pq.pipeline")  # the pipeline's logger: one place to configure


@dataclass
class PlannedLayer:
    """One weight to quantize, and every module holding it."""

    name: str  # the matched layer name
    index: int  # its position among the stage's matches (k-means seed offset)
    module: nn.Module  # the dense module at ``name``
    pq_cls: type[PQLayer]
    users: list[tuple[str, nn.Module]]  # every (path, module) whose ``.weight`` is this Parameter, module order
    block_size: int
    n_centroids: int
    checkpoint: FairseqLayer | None = None  # n_iter=0 with a fairseq state_dict: the layer to build
    exact: tuple[Tensor, Tensor] | None = None  # fewer blocks than K, fewer_blocks="reduce": (centroids, codes)


@dataclass
class QuantizationPlan:
    """What one stage of :func:`~.pipeline.quantize_model_` will do; building it changes nothing."""

    step: int
    pattern: str
    layers: list[PlannedLayer]


def _supported() -> str:
    return ", ".join(c.__name__ for c in pq_layer_classes())


def _quantizable(model: nn.Module, name: str, pattern: str) -> nn.Module | None:
    """The dense module matched as ``name``; None when it is quantized already (a PQ layer or inside one)."""
    if owner_is_pq(model, name):
        return None  # a parameter of a layer quantized at an earlier stage
    try:
        module = model.get_submodule(name)
    except AttributeError:
        raise ValueError(
            f"quantize_model_: {name!r} (matched by {pattern!r}) is a parameter, not a module; "
            f"only {_supported()} layers can be quantized (narrow the regex)"
        ) from None
    if is_pq_layer(module):
        return None
    if pq_class_for(module) is None:
        raise ValueError(
            f"quantize_model_: layer {name!r} (matched by {pattern!r}) is {why_not_quantizable(module)}; "
            "it cannot be quantized (narrow the regex)"
        )
    return module


def _check_ties(model: nn.Module, name: str, users: list[tuple[str, nn.Module]]) -> None:
    """Every holder of the weight must be quantizable, and the weight registered nowhere else."""
    for path, other in users:
        if pq_class_for(other) is None:
            raise ValueError(
                f"quantize_model_: the weight of {name!r} is tied to {path!r}, {why_not_quantizable(other)}, "
                "which cannot be quantized; untie it first"
            )
    weight = users[0][1].weight
    refs = {f"{path}.weight" if path else "weight" for path, _ in users}
    stray = [n for n, p in model.named_parameters(remove_duplicate=False) if p is weight and n not in refs]
    if stray:
        raise ValueError(
            f"quantize_model_: the weight of {name!r} is also registered as {stray}, outside any quantizable "
            "layer; untie it first"
        )


def _plan_layer(
    model: nn.Module,
    name: str,
    index: int,
    module: nn.Module,
    users: list[tuple[str, nn.Module]],
    configs: tuple[dict, dict],
    fewer_blocks: str,
    state_dict: dict | None,
) -> PlannedLayer | None:
    """Check one selected layer and plan its quantization (None: skipped under ``fewer_blocks="skip"``)."""
    where = f"quantize_model_: layer {name!r}"
    _check_ties(model, name, users)
    block_size = get_param(module, name, configs[0])
    n_centroids = check_n_centroids(where, get_param(module, name, configs[1]))
    for path, other in users:
        check_block_size(block_size, tuple(other.weight.shape), f"quantize_model_: layer {path!r}")
    pq_cls = pq_class_for(module)
    if module.weight.device.type == "meta":
        raise ValueError(f"{where}: its weight is on the meta device (no values to quantize or to keep)")
    if state_dict is not None:
        checkpoint = read_fairseq_layer(state_dict, fairseq_prefix(state_dict, name), module, where)
        return PlannedLayer(name, index, module, pq_cls, users, block_size, n_centroids, checkpoint)
    check_finite(where, "its weight", module.weight)
    exact = fewer_blocks_rule(where, module.weight, block_size, n_centroids, fewer_blocks)
    if exact is None:
        return None
    if exact is not False:
        n_centroids = int(exact[0].shape[0])
    layer = PlannedLayer(name, index, module, pq_cls, users, block_size, n_centroids)
    layer.exact = exact or None
    return layer


def plan_quantization(
    model: nn.Module,
    layers_to_quantize: Sequence[str] | str,
    block_sizes_config: dict,
    n_centroids_config: dict,
    step: int = 0,
    *,
    remove_weights: bool = False,
    state_dict: dict | None = None,
    fewer_blocks: str = "reduce",
) -> QuantizationPlan:
    """Select, check and group the layers of stage ``step`` (see :func:`~.pipeline.quantize_model_`); changes nothing.

    Every selected layer is checked here: its class (:func:`~.registry.pq_class_for`), ties, config entries, block
    size, K, finite weights, and (with ``state_dict``) its checkpoint entries.

    Args:
        model, layers_to_quantize, block_sizes_config, n_centroids_config, step: as :func:`~.pipeline.quantize_model_`.
        remove_weights: also strip ``.weights`` from parameter names (fairseq option).
        state_dict: build the layers from this fairseq-format state_dict (``<layer>.centroids`` ``[K, bs]``,
            ``<layer>.assignments`` in fairseq block order, ``<layer>.bias``) instead of running k-means
            (fairseq uses this path, with ``n_iter=0``, to load a quantized checkpoint; it fills random values of
            the right shape, we take the real ones).
        fewer_blocks: a layer with fewer blocks than its K (a small first convolution, a depthwise one) cannot
            be clustered into K centroids. ``"reduce"`` (default): K becomes the number of its distinct blocks,
            which encode it exactly (lossless up to ``centroid_dtype``); ``"skip"``: the layer stays dense;
            both warn, naming the layer. ``"error"``: raise (before anything changes). The ``size_tracker``
            counts the K used, and nothing for a skipped layer.

    Raises:
        as :func:`~.pipeline.quantize_model_`.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"quantize_model_: model must be an nn.Module, got {type(model).__name__}")
    if isinstance(layers_to_quantize, str):
        layers_to_quantize = [layers_to_quantize]
    if not isinstance(layers_to_quantize, Sequence) or not all(isinstance(p, str) for p in layers_to_quantize):
        raise TypeError(
            f"quantize_model_: layers_to_quantize must be a regex or a list of regexes, got {layers_to_quantize!r}"
        )
    if not isinstance(step, int) or not 0 <= step < len(layers_to_quantize):
        raise IndexError(f"quantize_model_: step must be in [0, {len(layers_to_quantize)}), got {step!r}")
    if fewer_blocks not in FEWER_BLOCKS:
        raise ValueError(f"quantize_model_: fewer_blocks must be one of {FEWER_BLOCKS}, got {fewer_blocks!r}")
    configs = (
        normalize_param_config(block_sizes_config, "block_sizes_config"),
        normalize_param_config(n_centroids_config, "n_centroids_config"),
    )
    pattern = layers_to_quantize[step]
    regex = stage_regex(pattern)
    matched = [n for n in layer_names(model, remove_weights, remove_duplicate=False) if regex.match(n)]
    if not matched:
        hint = " (a doubled backslash `\\\\` matches a literal backslash)" if "\\\\" in pattern else ""
        logger.warning("quantize_model_: stage %d pattern %r matches no layer%s", step, pattern, hint)

    users_of = weight_users(model)
    layers: list[PlannedLayer] = []
    planned: set[int] = set()  # id() of the weights planned so far
    for index, name in enumerate(matched):
        module = _quantizable(model, name, pattern)
        if module is None or id(module.weight) in planned:
            continue
        planned.add(id(module.weight))
        users = users_of[id(module.weight)]
        layer = _plan_layer(model, name, index, module, users, configs, fewer_blocks, state_dict)
        if layer is not None:
            layers.append(layer)
    return QuantizationPlan(step, pattern, layers)
