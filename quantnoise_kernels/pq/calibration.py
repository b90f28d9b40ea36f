"""Calibration capture for activation-aware iPQ (issue 10): the per-block-column second moments ``H_j`` of the
inputs of the layers of one stage, streamed from forward hooks (never storing the activations).

For a layer ``y = W x`` with ``W.reshape(out, -1)`` cut into blocks of ``d`` input dimensions, replacing block
``w`` of column ``j`` by ``c`` changes the outputs by ``(w - c)^T x_j`` per input, so the mean squared output
error is ``(w - c)^T H_j (w - c)`` with ``H_j = E[x_j x_j^T]`` ("And the bit goes down", Stock et al. 2020;
GPTQ's layer Hessian ``X X^T``). What ``x`` is, per layer kind:

- ``nn.Linear``: the input features, ``G = in / d`` columns.
- ``nn.Conv1d`` / ``nn.Conv2d`` (``groups=1``): the unfolded input patches (``F.unfold``, whose column order is
  that of ``W.reshape(out, -1)``), ``G = in * prod(kernel) / d``.
- ``nn.Embedding``: a row is looked up, not multiplied: its blocks are weighted by the row's token frequency
  (a diagonal ``H = f_row I``, one group per block).

``H`` is damped as in GPTQ: ``H_j + damp * mean(diag H) * I`` (the mean over the whole layer), which keeps every
``H_j`` positive definite and makes directions the calibration set never excites fall back to preserving the
weight (a row of an unseen token is encoded as plain k-means would).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["run_calibration", "plan_hessians", "H_KINDS"]

H_KINDS = ("full", "diag")


def _conv_columns(module: nn.Module, x: Tensor) -> Tensor:
    """``[tokens, in * prod(kernel)]``: the unfolded input patches a (1-d or 2-d) convolution multiplies."""
    two_d = isinstance(module, nn.Conv2d)
    if not two_d:  # a 1-d convolution as a 2-d one of height 1
        x = x.unsqueeze(-2)
    pair = (lambda v: tuple(v)) if two_d else (lambda v: (1, v[0]))
    kernel, stride, dilation, padding = (
        pair(module.kernel_size),
        pair(module.stride),
        pair(module.dilation),
        pair(module.padding) if two_d else (0, module.padding[0]),
    )
    if module.padding_mode != "zeros":
        x = F.pad(x, [p for p in reversed(padding) for _ in range(2)], mode=module.padding_mode)
        padding = (0, 0)
    cols = F.unfold(x, kernel, dilation=dilation, padding=padding, stride=stride)  # [N, C*k, L]
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


class _Moments:
    """Streaming ``sum x_j x_j^T`` (or ``sum x_j^2``) over the inputs of one layer, in float64."""

    def __init__(self, module: nn.Module, block_size: int, kind: str) -> None:
        self.module, self.block_size, self.kind = module, block_size, kind
        self.embedding = isinstance(module, nn.Embedding)
        self.sum: Tensor | None = None
        self.count = 0

    def __call__(self, _module: nn.Module, args: tuple, _output: Any) -> None:
        x = args[0].detach()
        if self.embedding:
            counts = torch.bincount(x.reshape(-1).long().cpu(), minlength=self.module.num_embeddings)
            self.sum = counts.double() if self.sum is None else self.sum + counts
            self.count += x.numel()
            return
        cols = _conv_columns(self.module, x) if isinstance(self.module, (nn.Conv1d, nn.Conv2d)) else x
        blocks = cols.reshape(-1, cols.shape[-1] // self.block_size, self.block_size).float()  # [T, G, d]
        if self.kind == "diag":
            part = (blocks * blocks).sum(0)
        else:
            g_first = blocks.transpose(0, 1)  # [G, T, d]
            part = g_first.transpose(1, 2) @ g_first  # [G, d, d]
        part = part.double().cpu()
        self.sum = part if self.sum is None else self.sum + part
        self.count += blocks.shape[0]

    def h(self, damp: float) -> Tensor | None:
        """Damped float32 ``H``: ``[G, d, d]`` / ``[G, d]`` (Linear, conv), ``[rows * G, d]`` (Embedding)."""
        if self.sum is None or self.count == 0:
            return None
        mean = self.sum / self.count
        if self.embedding:
            n_cols = self.module.embedding_dim // self.block_size
            freq = mean + damp * mean.mean()
            return freq[:, None].expand(-1, n_cols * self.block_size).reshape(-1, self.block_size).float()
        diag = mean if self.kind == "diag" else mean.diagonal(0, -2, -1)
        lam = damp * float(diag.mean())
        if self.kind == "diag":
            return (mean + lam).float()
        return (mean + lam * torch.eye(self.block_size, dtype=mean.dtype)).float()


def _run_batches(model: nn.Module, calibration: Callable | Iterable) -> None:
    if callable(calibration):
        calibration(model)
        return
    for batch in calibration:
        if isinstance(batch, dict):
            model(**batch)
        elif isinstance(batch, (tuple, list)):
            model(*batch)
        else:
            model(batch)


def run_calibration(
    model: nn.Module,
    layers: list[tuple[str, nn.Module, int]],
    calibration: Callable | Iterable,
    kind: str = "full",
    damp: float = 0.01,
) -> dict[str, Tensor | None]:
    """Run ``calibration`` through ``model`` with forward hooks on ``layers`` (``(name, module, block_size)``);
    returns ``{name: H}`` (None for a layer the calibration never ran, or a grouped convolution).

    ``calibration``: a callable ``f(model)`` that runs the model on its batches, or an iterable of batches
    (a dict is passed as keyword arguments, a tuple/list as positional ones, anything else as the one argument).
    The model runs in eval mode under ``torch.no_grad()``; its training flags are restored afterwards, and the
    hooks are removed, also when ``calibration`` raises.
    """
    if kind not in H_KINDS:
        raise ValueError(f"quantize_model_: calibration_h must be one of {H_KINDS}, got {kind!r}")
    moments, handles = {}, []
    training = {m: m.training for m in model.modules()}
    try:
        for name, module, block_size in layers:
            if isinstance(module, (nn.Conv1d, nn.Conv2d)) and module.groups != 1:
                continue  # each group of outputs sees other inputs: plain k-means
            moments[name] = _Moments(module, block_size, kind)
            handles.append(module.register_forward_hook(moments[name]))
        model.eval()
        with torch.no_grad():
            _run_batches(model, calibration)
    finally:
        for handle in handles:
            handle.remove()
        for m, flag in training.items():
            m.training = flag
    return {name: (moments[name].h(damp) if name in moments else None) for name, _, _ in layers}


def plan_hessians(model: nn.Module, plan, calibration: Callable | Iterable, kind: str, damp: float) -> dict:
    """:func:`run_calibration` on the layers of a ``QuantizationPlan`` that k-means will cluster."""
    if isinstance(damp, bool) or not isinstance(damp, (int, float)) or not 0 <= damp < float("inf"):
        raise ValueError(f"quantize_model_: calibration_damp must be a finite number >= 0, got {damp!r}")
    layers = [(x.name, x.module, x.block_size) for x in plan.layers if x.checkpoint is None and x.exact is None]
    return run_calibration(model, layers, calibration, kind, float(damp))
