"""Staged iPQ: ``quantize_model_`` (fairseq's signature and semantics) as a plan step and an apply step.

:func:`plan_quantization` (:mod:`.plan`) selects the layers of a stage, checks them (module type, config entry,
block size, ties, checkpoint entries) and groups the modules sharing a weight, without changing the model;
:func:`apply_plan` builds every PQ layer (k-means, or a fairseq checkpoint's entries), broadcasts them, and
only then replaces the modules and updates the :class:`SizeTracker`. ``quantize_model_`` is the two in a row.

Differences from fairseq, all deliberate:

- k-means runs on our batched kernels (``PQ`` / ``kmeans``), not fairseq's broadcast-distance EM.
- Tied weights stay tied: every module whose ``weight`` is the same Parameter (or the same module object
  reachable under several names) is replaced together; the parameter is clustered once and all the PQ
  layers share one ``centroids`` Parameter (and the codes buffers where the layouts agree). fairseq lists
  a shared parameter once and replaces only that module, which unties the others.
- With ``torch.distributed`` initialised, every parameter and buffer of each new PQ layer is broadcast from
  rank 0 (fairseq broadcasts centroids and assignments), so all ranks hold identical layers.
- Errors name the layer, the pattern and the offending value; a stage that matches no layer logs a warning.
- Embedding keeps ``padding_idx``/``max_norm``/...; convolutions keep ``padding_mode``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .._progress import show_info
from ._checks import check_bits, check_kmeans_args
from ._model import replace_all, replace_module, share_storage
from .calibration import plan_hessians
from .layers import PQLayer
from .plan import PlannedLayer, QuantizationPlan, plan_quantization
from .registry import is_pq_layer, pq_class_for
from .selection import get_layers, get_param

__all__ = [
    "quantize_model_",
    "plan_quantization",
    "apply_plan",
    "QuantizationPlan",
    "PlannedLayer",
    "get_layers",
    "get_param",
    "is_pq_layer",
    "replace_module",
]

logger = logging.getLogger(__name__)


def _tied_layers(layer: PlannedLayer, pq_module: PQLayer) -> dict[int, nn.Module]:
    """id(module) -> its PQ layer, for every holder of the weight: the same module object gets the same layer;
    another module its own layer (own class and bias) sharing the centroids Parameter and the codes."""
    built: dict[int, nn.Module] = {id(layer.module): pq_module}
    new_bias = {}
    if getattr(layer.module, "bias", None) is not None and pq_module.bias is not None:
        new_bias[id(layer.module.bias)] = pq_module.bias
    for _, other in layer.users:
        if id(other) in built:
            continue
        other_cls = pq_class_for(other)
        bias = getattr(other, "bias", None)
        tied = other_cls.from_config(
            other_cls.config_of(other),
            pq_module.centroids.detach(),
            pq_module.interchange_codes(),
            None if bias is None else bias.detach().clone(),
            **pq_module._codebook_args(),
        ).to(layer.module.weight.device)
        tied.act_bits = pq_module.act_bits
        share_storage(tied, pq_module)
        if bias is not None:
            if id(bias) in new_bias:
                tied.bias = new_bias[id(bias)]
            else:
                new_bias[id(bias)] = tied.bias
        built[id(other)] = tied
    return built


def _build(
    layer: PlannedLayer,
    seed: int | None,
    distributed: bool,
    centroid_bits: int | None,
    act_bits: int,
    h: Tensor | None = None,
    **from_float_args,
) -> dict[int, nn.Module]:
    """The PQ layers of one planned weight (k-means, or the checkpoint's entries), broadcast from rank 0."""
    cls = layer.pq_cls
    if layer.checkpoint is not None:
        entry = layer.checkpoint
        pq_module = cls.from_config(cls.config_of(layer.module), entry.centroids, entry.codes, entry.bias)
    elif layer.exact is not None:
        centroids, codes = layer.exact
        bias = getattr(layer.module, "bias", None) if cls._HAS_BIAS else None
        bias = None if bias is None else bias.detach()
        dtype = from_float_args["centroid_dtype"]
        pq_module = cls.from_config(cls.config_of(layer.module), centroids.to(dtype), codes, bias)
    else:
        layer_seed = None if seed is None else seed + layer.index
        if h is not None:  # activation-aware (an external PQ layer class without h keeps working without it)
            from_float_args = {**from_float_args, "h": h}
        pq_module = layer.pq_cls.from_float(
            layer.module, layer.block_size, layer.n_centroids, seed=layer_seed, **from_float_args
        )
    if centroid_bits is not None:
        pq_module.quantize_centroids_(centroid_bits)
    pq_module.act_bits = act_bits
    pq_module = pq_module.to(layer.module.weight.device)
    if distributed:
        for tensor in list(pq_module.parameters()) + list(pq_module.buffers()):
            dist.broadcast(tensor.data, 0)
    return _tied_layers(layer, pq_module)


def apply_plan(
    model: nn.Module,
    plan: QuantizationPlan,
    size_tracker=None,
    *,
    n_iter: int = 15,
    eps: float = 1e-6,
    max_tentatives: int = 100,
    seed: int | None = None,
    centroid_dtype: torch.dtype = torch.float32,
    verbose: bool = True,
    centroid_bits: int | None = None,
    act_bits: int = 0,
    hessians: dict[str, Tensor | None] | None = None,
) -> list[str]:
    """Build every planned PQ layer, then replace the modules and update ``size_tracker``.

    Args:
        model, plan, size_tracker: the model, its :func:`plan_quantization`, a :class:`SizeTracker` or None.
        n_iter: k-means iterations (fairseq's default 15).
        eps: centroid perturbation when splitting a cluster to fill an empty one.
        max_tentatives: empty-cluster repair attempts.
        seed: k-means seed (each layer uses ``seed + index``); None draws from torch's default generator.
        centroid_dtype: dtype of the centroids Parameter. float32 (default, as fairseq holds them) is what the
            finetuning between stages needs: optimizers without fp32 master weights break on float16 parameters
            (Adam's ``eps = 1e-8`` is 0 in float16, so a zero or tiny gradient gives 0/0 = NaN after one step).
            Write a float16 file at the end with ``save_compressed(..., centroid_dtype=torch.float16)``.
        verbose: log each layer (rank 0 only).
        centroid_bits: iPQ & int8: store the centroids as int8 on a ``centroid_bits``-bit grid (2..8, one scale
            and zero point per layer, :meth:`PQLayer.quantize_centroids_`); ``SizeTracker`` then counts 1 byte
            per centroid entry. Such centroids are not trained: finetune float centroids, then call
            ``quantize_centroids_`` on each layer, or quantize at the last stage.
        act_bits: 0, or 8 to fake-quantize each PQ layer's input activations inside the op (``act_bits``
            attribute of the layers).
        hessians: ``{layer name: H}`` from :func:`~.calibration.run_calibration`: k-means minimises
            ``(w - c)^T H_j (w - c)``, the layer's output error (:func:`~quantnoise_kernels.clustering.kmeans`
            with ``h``). A layer without an entry is clustered plainly.

    Returns:
        The names of the modules replaced, in order (a tied module is listed under each of its names).
    """
    distributed = dist.is_available() and dist.is_initialized()
    verbose = verbose and (not distributed or dist.get_rank() == 0)
    from_float_args = dict(n_iter=n_iter, eps=eps, max_tentatives=max_tentatives, centroid_dtype=centroid_dtype)
    built = []  # every layer is built (k-means) before the model changes
    for layer in plan.layers:
        if verbose:
            message = "Quantizing layer %s with block size %d and %d centroids"
            show_info(logger, message, layer.name, layer.block_size, layer.n_centroids)
        h = (hessians or {}).get(layer.name)
        built.append(_build(layer, seed, distributed, centroid_bits, act_bits, h, **from_float_args))
    replacements = [
        (path, by_module[id(other)]) for layer, by_module in zip(plan.layers, built) for path, other in layer.users
    ]
    replace_all(model, replacements)
    if size_tracker is not None:
        centroid_bytes = 2 if centroid_bits is None else 1  # fairseq counts fp16 centroids; int8: 1 byte
        for layer in plan.layers:
            size_tracker.update(
                layer.module.weight.detach(), layer.block_size, layer.n_centroids, centroid_bytes=centroid_bytes
            )
    return [path for path, _ in replacements]


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
    centroid_dtype: torch.dtype = torch.float32,
    fewer_blocks: str = "reduce",
    centroid_bits: int | None = None,
    act_bits: int = 0,
    calibration=None,
    calibration_h: str = "full",
    calibration_damp: float = 0.01,
) -> list[str]:
    """Quantize, in place, the layers selected by stage ``step`` and replace them by PQ layers (fairseq's API).

    All or nothing: every selected layer is checked (class, config entries, block size, K, finite weights,
    ties, checkpoint entries) and every PQ layer is built before the first module is replaced; on any error the
    model is exactly as it was. Layers wrapped by ``quant_noise`` are quantized like the layers they wrap (the PQ
    layer replaces the wrapper; the weights are kept, the noise is dropped), and so are subclasses of the
    supported layers that keep their forward; a subclass with its own forward is refused, naming the layer.
    It is :func:`plan_quantization`, then (with ``calibration``) :func:`~.calibration.plan_hessians`, then
    :func:`apply_plan`; their docstrings detail the arguments they take.

    Args:
        model: the model (dense, or partly quantized by earlier stages).
        size_tracker: a :class:`SizeTracker` (``update(W, block_size, K)`` is called once per quantized
            weight), or None.
        layers_to_quantize: one regex per stage; stage ``step`` is applied (see :func:`get_layers`).
        block_sizes_config: ``{class name: (feature, {value: block_size})}`` (see :func:`get_param`).
        n_centroids_config: ``{class name: (feature, {value: K})}``.
        step: the stage index.
        n_iter, eps, max_tentatives, seed, centroid_dtype: k-means settings (fairseq's defaults; see
            :func:`apply_plan`). ``seed``: each layer uses ``seed + index``; None draws from torch's generator.
        remove_weights: also strip ``.weights`` from parameter names (fairseq option).
        verbose: log each layer (rank 0 only).
        state_dict: with ``n_iter == 0``, build the layers from this fairseq-format state_dict instead of
            running k-means (see :func:`plan_quantization`).
        fewer_blocks: a layer with fewer blocks than its K: ``"reduce"`` (default, K = its distinct blocks),
            ``"skip"`` or ``"error"`` (see :func:`plan_quantization`).
        centroid_bits: iPQ & int8: store the centroids as int8 on a ``centroid_bits``-bit grid (2..8); see
            :func:`apply_plan`.
        act_bits: 0, or 8 to fake-quantize each PQ layer's input activations inside the op.
        calibration: activation-aware iPQ (issue 10): a callable ``f(model)`` running the model on calibration
            batches, or an iterable of batches; k-means then minimises each layer's output error
            (:func:`~.calibration.run_calibration`). None: plain k-means, as fairseq.
        calibration_h: ``"full"`` (``block_size x block_size`` per column) or ``"diag"`` (its diagonal: cheaper).
        calibration_damp: ``H_j + damp * mean(diag H) I`` (GPTQ's dampening), so every ``H_j`` is positive definite.

    Returns:
        The names of the modules replaced, in order (a tied module is listed under each of its names).

    Raises:
        IndexError: ``step`` out of range.
        KeyError: the config has no entry for a selected layer (see :func:`get_param`).
        TypeError: ``centroid_dtype`` is not a float dtype.
        ValueError: a selected name is not a quantizable layer (:mod:`.registry`; a subclass overriding its
            forward), the block size does not divide the row, K is not in ``[1, 65536]``, a weight holds NaN or
            infinity, a layer has fewer blocks than K with ``fewer_blocks="error"``, a tied weight is also used by
            an unsupported module, a ``state_dict`` entry is missing or malformed, or a scalar argument
            (``n_iter``, ``eps``, ``max_tentatives``, ``seed``, ``fewer_blocks``) is out of range.
    """
    settings = _apply_settings(n_iter, eps, max_tentatives, seed, centroid_dtype, fewer_blocks, centroid_bits, act_bits)
    plan = plan_quantization(
        model, layers_to_quantize, block_sizes_config, n_centroids_config, step, remove_weights=remove_weights,
        state_dict=state_dict if n_iter == 0 else None, fewer_blocks=fewer_blocks,
    )  # fmt: skip
    hessians = None if calibration is None else plan_hessians(model, plan, calibration, calibration_h, calibration_damp)
    return apply_plan(model, plan, size_tracker, verbose=verbose, hessians=hessians, **settings)


def _apply_settings(
    n_iter: int,
    eps: float,
    max_tentatives: int,
    seed: int | None,
    centroid_dtype: torch.dtype,
    fewer_blocks: str,
    centroid_bits: int | None,
    act_bits: int,
) -> dict[str, Any]:
    """``quantize_model_``'s scalar settings, checked before anything else (``fewer_blocks`` too, which the plan
    step takes), as :func:`apply_plan`'s keywords for the k-means and the bits of the layers."""
    check_kmeans_args("quantize_model_", n_iter, eps, max_tentatives, seed, centroid_dtype, fewer_blocks)
    check_bits("quantize_model_", centroid_bits, act_bits)
    return dict(
        n_iter=n_iter, eps=eps, max_tentatives=max_tentatives, seed=seed, centroid_dtype=centroid_dtype,
        centroid_bits=centroid_bits, act_bits=act_bits,
    )  # fmt: skip
