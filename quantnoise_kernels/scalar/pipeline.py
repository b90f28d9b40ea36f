"""``quantize_model_``: replace a model's layers by Int layers (fairseq ``scalar/utils.py``)."""

from __future__ import annotations

import logging

from torch import nn

from .._blocks import check_block_size
from .._modules import is_noise_wrapped, unwrapped_class
from .activation import ActivationQuantizer
from .modules import IntConv2d, IntEmbedding, IntLinear, IntModule
from .qparams import QuantGrid, check_p

__all__ = ["quantize_model_", "MAPPING"]

log = logging.getLogger(__name__)

MAPPING: dict[type[nn.Module], type[IntModule]] = {
    nn.Linear: IntLinear,
    nn.Embedding: IntEmbedding,
    nn.Conv2d: IntConv2d,
}


def _layer_names(model: nn.Module) -> list[str]:
    """fairseq's walk: module names from the parameter names (biases dropped, ``.weight``
    stripped), in order, each once."""
    names: list[str] = []
    for name, _ in model.named_parameters(remove_duplicate=False):
        if "bias" in name:
            continue
        layer = name[: -len(".weight")] if name.endswith(".weight") else name
        if layer not in names:
            names.append(layer)
    return names


def _plan(model: nn.Module, p: float, block_size: int) -> list[tuple[str, nn.Module]]:
    """The layers to replace; raises before anything is changed."""
    modules = dict(model.named_modules(remove_duplicate=False))
    plan = []
    for name in _layer_names(model):
        module = modules.get(name)
        if module is None:
            continue
        if type(module) not in MAPPING and unwrapped_class(module) not in MAPPING:
            if isinstance(module, (nn.Linear, nn.Embedding, nn.Conv2d)) and not isinstance(module, IntModule):
                # e.g. nn.MultiheadAttention.out_proj: its forward is never called (the weight is
                # read directly), so a forward-based quantizer would silently do nothing.
                log.warning("scalar.quantize_model_: skipping %s (%s)", name, type(module).__name__)
            else:
                log.info("scalar.quantize_model_: module %s (%s) not quantized", name, type(module).__name__)
            continue
        if is_noise_wrapped(module):
            log.warning("scalar.quantize_model_: %s is wrapped by quant_noise; its noise is replaced", name)
        check_block_size(block_size, tuple(module.weight.shape), f"scalar.quantize_model_: layer {name!r}")
        plan.append((name, module))
    return plan


def quantize_model_(
    model: nn.Module,
    p: float = 0.2,
    bits: int = 8,
    update_step: int = 3000,
    method: str = "histogram",
    remove_weights: bool = False,
    *,
    block_size: int = 1,
    symmetric: bool = False,
    quantize_activations: bool = True,
) -> list[str]:
    """Replace every ``nn.Linear``, ``nn.Embedding`` and ``nn.Conv2d`` of ``model`` by its Int layer,
    in place (fairseq ``scalar.quantize_model_``: same signature, same defaults).

    The Int layers **share** the original parameters (an optimizer built before the call keeps
    working). Each also gets an :class:`ActivationQuantizer` (``p=0``: outputs clamped to the grid's
    range in training, fake-quantized in eval) unless ``quantize_activations=False``; it is stored
    as ``layer.activation_quantizer``. All-or-nothing: every argument and layer is checked first.

    Args:
        model: changed in place.
        p: fraction of each weight fake-quantized per training forward, in ``[0, 1]``.
        bits: 2..8; ``update_step``: forwards between refreshes of the quantization parameters;
        method: ``"histogram"``, ``"tensor"`` or ``"channel"`` (per output channel).
        remove_weights: accepted for fairseq compatibility; unused there too.
        block_size: entries per noise draw (1 = fairseq); symmetric: signed grid, zero point 0.
        quantize_activations: add the output quantizers (fairseq always does).

    Returns:
        The names of the replaced layers.

    Raises:
        ValueError: bad ``p``/``bits``/``method``/``update_step``, or a ``block_size`` that does not divide a
            row (the model is unchanged). A layer wrapped by ``quant_noise`` becomes an Int layer (its noise
            is replaced by the scalar noise, with a warning).
    """
    del remove_weights
    check_p(p)
    QuantGrid(bits, method, symmetric)  # validates bits and method
    if isinstance(update_step, bool) or not isinstance(update_step, int) or update_step <= 0:
        raise ValueError(f"update_step must be a positive int, got {update_step!r}")
    plan = _plan(model, p, block_size)
    for name, module in plan:
        layer = MAPPING[unwrapped_class(module)].from_float(
            module, p, bits=bits, update_step=update_step, method=method, block_size=block_size, symmetric=symmetric
        )
        if quantize_activations:
            # per-channel activations would mean per batch row: activations use one scale then
            act_method = "tensor" if method == "channel" else method
            layer.activation_quantizer = ActivationQuantizer(layer, p=0, bits=bits, method=act_method)
        _set_submodule(model, name, layer)
        log.info("scalar.quantize_model_: %s -> %s", name, type(layer).__name__)
    return [name for name, _ in plan]


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, attr, module)
