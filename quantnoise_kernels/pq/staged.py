"""The whole iPQ flow over a configuration, stage by stage and layer by layer, with progress and a plan first.

:func:`plan_stages` resolves a fairseq-format configuration (:func:`load_config_yaml`) against a model and
checks every selected layer (type, block size, number of centroids) before anything is changed;
:func:`compress_staged` then runs :func:`quantize_model_` one layer at a time (so a progress bar can follow
the layers), calling ``after_stage`` between stages (fairseq finetunes there). Used by the CLI and the
MiniLM demo.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .._progress import progress_bar
from . import get_layers, get_param, is_pq_layer, quantize_model_  # public names (imported last by __init__)
from .size_tracker import SizeTracker

__all__ = ["LayerPlan", "plan_stages", "compress_staged"]

_QUANTIZABLE = ("Linear", "Embedding", "Conv1d", "Conv2d")


@dataclass(frozen=True)
class LayerPlan:
    """One layer to quantize: its name, the stage that selects it, its block size and number of centroids."""

    name: str
    stage: int
    block_size: int
    n_centroids: int
    n_weights: int


def _check_layer(name: str, module: nn.Module, pattern: str, config: dict) -> tuple[int, int]:
    kind = type(module).__name__
    if kind not in _QUANTIZABLE:
        raise ValueError(
            f"layer {name!r} (matched by {pattern!r}) is a {kind}; only {', '.join(_QUANTIZABLE)} can be "
            "quantized (narrow the regex)"
        )
    try:
        block_size = get_param(module, name, config["block_sizes"])
        n_centroids = get_param(module, name, config["n_centroids"])
    except KeyError as error:
        raise ValueError(str(error.args[0]) if error.args else str(error)) from None
    row = module.weight[0].numel()
    if row % block_size:
        raise ValueError(
            f"layer {name!r}: block size {block_size} does not divide the row length {row} of its weight "
            f"{tuple(module.weight.shape)}"
        )
    n_blocks = module.weight.numel() // block_size
    if n_blocks < n_centroids:
        raise ValueError(
            f"layer {name!r}: {n_centroids} centroids for only {n_blocks} blocks of size {block_size} "
            f"(weight {tuple(module.weight.shape)}); give it fewer centroids or leave it out"
        )
    return block_size, n_centroids


def plan_stages(model: nn.Module, config: dict) -> list[list[LayerPlan]]:
    """The layers each stage of ``config`` quantizes, checked, without changing ``model``.

    Args:
        model: the dense model.
        config: ``{"layers_to_quantize": [...], "block_sizes": {...}, "n_centroids": {...}}``
            (:func:`load_config_yaml`'s output).

    Returns:
        One list per stage (a layer selected by several stages belongs to the first; a stage may be empty).

    Raises:
        ValueError: the configuration selects no layer at all, or a selected layer cannot be quantized
            (its type, no config entry for it, a block size that does not divide its rows); the message
            names the layer.
    """
    stages: list[list[LayerPlan]] = []
    seen: set[str] = set()
    for stage, pattern in enumerate(config["layers_to_quantize"]):
        layers = []
        for name in get_layers(model, pattern):
            try:
                module = model.get_submodule(name)
            except AttributeError:
                raise ValueError(
                    f"{name!r} (matched by {pattern!r}) is a parameter, not a layer (narrow the regex)"
                ) from None
            if name in seen or is_pq_layer(module):
                continue
            block_size, n_centroids = _check_layer(name, module, pattern, config)
            seen.add(name)
            layers.append(LayerPlan(name, stage, block_size, n_centroids, module.weight.numel()))
        stages.append(layers)
    if not seen:
        raise ValueError(
            "the configuration matches no layer of the model (layers_to_quantize: "
            + ", ".join(config["layers_to_quantize"])
            + ")"
        )
    return stages


def compress_staged(
    model: nn.Module,
    config: dict,
    *,
    tracker: SizeTracker | None = None,
    n_iter: int = 15,
    seed: int = 0,
    centroid_dtype: torch.dtype = torch.float16,
    after_stage: Callable[[int, nn.Module], None] | None = None,
    progress: bool = True,
    quantize_kwargs: dict[str, Any] | None = None,
) -> SizeTracker:
    """Quantize ``model`` in place with iPQ, stage by stage (fairseq's flow), showing progress per stage and layer.

    Args:
        model: the dense model (on any device).
        config: as for :func:`plan_stages`.
        tracker: a :class:`SizeTracker` made on the dense model (created here when None).
        n_iter: k-means iterations per layer.
        seed: k-means seed; layer ``i`` (in plan order) uses ``seed + i``.
        centroid_dtype: dtype the centroids are stored in.
        after_stage: called as ``after_stage(stage, model)`` after each non-empty stage (e.g. centroid
            finetuning by distillation, :func:`finetune_centroids`).
        progress: tqdm bars (stages, and layers within a stage).
        quantize_kwargs: further keyword arguments of :func:`quantize_model_` (e.g. ``centroid_bits``).

    Returns:
        The size tracker (``str()`` prints the true bytes and fairseq's line).

    Raises:
        ValueError: see :func:`plan_stages`; raised before the model is changed.
    """
    plan = plan_stages(model, config)
    tracker = tracker if tracker is not None else SizeTracker(model)
    index = 0
    for stage, layers in enumerate(progress_bar(plan, desc="iPQ stages", disable=not progress)):
        for layer in progress_bar(layers, desc=f"stage {stage} layers", disable=not progress, leave=False):
            if is_pq_layer(model.get_submodule(layer.name)):
                continue  # replaced with a layer it shares its weight with
            quantize_model_(
                model,
                tracker,
                [re.escape(layer.name) + r"\Z"],
                config["block_sizes"],
                config["n_centroids"],
                step=0,
                n_iter=n_iter,
                verbose=False,
                seed=seed + index,
                centroid_dtype=centroid_dtype,
                **(quantize_kwargs or {}),
            )
            index += 1
        if layers and after_stage is not None:
            after_stage(stage, model)
    return tracker
