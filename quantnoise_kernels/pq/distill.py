"""Distillation from the uncompressed model: ``finetune_centroids`` and the general ``distill`` loop.

iPQ loses accuracy at every stage; the paper's group recovers it by finetuning the centroids (and the
layers not quantized yet) between stages, and its follow-up questions (fairseq#2340) show the results do
not reproduce without distillation from the uncompressed model. Here the frozen dense ``teacher`` and the
compressed ``student`` see the same batches; the student's trainable parameters follow the gradient of a
distance between the two models' outputs: MSE on hidden states or sentence embeddings, cosine distance
on embeddings, or KL divergence on logits (Hinton et al. 2015, with temperature ``T`` and the ``T**2``
factor).

Centroids stored in float16/bfloat16 are trained in a float32 master copy (an fp16 Adam step under the
fp16 resolution would be lost) and cast back to their dtype at the end; layers sharing one centroids
Parameter (tied weights) keep sharing it.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._progress import progress_bar

__all__ = ["finetune_centroids", "distill", "default_output", "LOSSES"]

LOSSES = ("mse", "cosine", "kl")

OutputFn = Callable[[Any, Any], Tensor]
LossFn = Callable[[Tensor, Tensor], Tensor]


def default_output(outputs: Any, batch: Any = None) -> Tensor:
    """The tensor compared by default: ``outputs`` itself, or its ``logits`` / ``last_hidden_state`` / first item.

    Works for plain modules (a tensor), Hugging Face model outputs (``logits`` for heads,
    ``last_hidden_state`` for encoders) and tuples.
    """
    if isinstance(outputs, Tensor):
        return outputs
    for key in ("logits", "last_hidden_state"):
        value = outputs.get(key) if isinstance(outputs, dict) else getattr(outputs, key, None)
        if isinstance(value, Tensor):
            return value
    if isinstance(outputs, (tuple, list)) and outputs and isinstance(outputs[0], Tensor):
        return outputs[0]
    raise TypeError(
        f"distill: cannot find the tensor to compare in a model output of type {type(outputs).__name__}; "
        "pass output_fn=(outputs, batch) -> Tensor"
    )


def _loss_fn(loss: str | LossFn, temperature: float) -> LossFn:
    if callable(loss):
        return loss
    if loss == "mse":
        return F.mse_loss
    if loss == "cosine":
        return lambda s, t: (1.0 - F.cosine_similarity(s.float(), t.float(), dim=-1)).mean()
    if loss == "kl":

        def kl(s: Tensor, t: Tensor) -> Tensor:
            log_p = F.log_softmax(s.float().flatten(0, -2) / temperature, dim=-1)
            log_q = F.log_softmax(t.float().flatten(0, -2) / temperature, dim=-1)
            return F.kl_div(log_p, log_q, log_target=True, reduction="batchmean") * temperature**2

        return kl
    raise ValueError(f"distill: loss must be one of {LOSSES} or a callable (student, teacher) -> scalar, got {loss!r}")


def _call(model: nn.Module, batch: Any) -> Any:
    if isinstance(batch, dict):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    return model(batch)


def _batches(data: Iterable, steps: int):
    """``steps`` (index, batch) pairs, re-iterating ``data`` when it runs out."""
    done = 0
    while done < steps:
        empty = True
        for index, batch in enumerate(data):
            empty = False
            yield index, batch
            done += 1
            if done == steps:
                return
        if empty:
            raise ValueError("distill: data yielded no batch")


def _check_args(lr: float, steps: int | None, temperature: float, max_grad_norm: float | None) -> None:
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"distill: lr must be a positive finite number, got {lr!r}")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise ValueError(f"distill: steps must be a positive int or None (one pass over data), got {steps!r}")
    if not (isinstance(temperature, (int, float)) and temperature > 0):
        raise ValueError(f"distill: temperature must be > 0, got {temperature!r}")
    if max_grad_norm is not None and not max_grad_norm > 0:
        raise ValueError(f"distill: max_grad_norm must be > 0 or None, got {max_grad_norm!r}")


def distill(
    student: nn.Module,
    teacher: nn.Module,
    data: Iterable,
    params: Sequence[nn.Parameter],
    *,
    steps: int | None = None,
    lr: float = 1e-4,
    loss: str | LossFn = "mse",
    output_fn: OutputFn | None = None,
    temperature: float = 1.0,
    max_grad_norm: float | None = 1.0,
    train_mode: bool = False,
    cache_teacher: bool | None = None,
    progress: bool = True,
    desc: str = "distill",
) -> list[float]:
    """Train ``params`` of ``student`` so that its outputs match the frozen ``teacher``'s on ``data`` (Adam).

    Args:
        student: the model being trained (e.g. PQ-compressed, or wrapped with ``quant_noise``).
        teacher: the reference model (e.g. the uncompressed original); run under ``no_grad`` in eval mode.
        data: an iterable of batches, re-iterated as needed; a batch is passed as ``model(**batch)`` (dict),
            ``model(*batch)`` (tuple/list) or ``model(batch)``.
        params: the parameters to train (float); the others are left untouched.
        steps: optimizer steps (default: one pass over ``data``, which must then be sized).
        lr: Adam's learning rate.
        loss: ``"mse"``, ``"cosine"`` (1 - cosine along the last dim), ``"kl"`` (on logits, with
            ``temperature``), or a callable ``(student_out, teacher_out) -> scalar``.
        output_fn: ``(model outputs, batch) -> Tensor`` compared by the loss (e.g. mean-pooled sentence
            embeddings); default :func:`default_output`.
        temperature: KL temperature ``T`` (the loss is multiplied by ``T**2``).
        max_grad_norm: gradient clipping of ``params`` (None: off).
        train_mode: run the student in training mode (dropout, Quant-Noise on); default eval mode.
        cache_teacher: keep the teacher's outputs per batch index (default: when ``data`` is a Sequence
            and ``steps`` exceeds its length).
        progress: a tqdm bar with the running loss.
        desc: the bar's label.

    Returns:
        The loss of every step (floats).

    Raises:
        ValueError: no trainable float parameter, a non-positive ``lr``/``steps``/``temperature``, an
            unknown ``loss``, or ``data`` that yields nothing. Checked before anything is changed.
    """
    _check_args(lr, steps, temperature, max_grad_norm)
    params = [p for p in params if p.is_floating_point()]
    if not params:
        raise ValueError("distill: no float parameter to train (params is empty or holds only integer tensors)")
    compare = _loss_fn(loss, temperature)
    output_fn = output_fn or default_output
    steps = _resolve_steps(data, steps)
    if cache_teacher is None:
        cache_teacher = isinstance(data, Sequence) and steps > len(data)
    target = _Targets(teacher, output_fn, cache_teacher)
    with _training(student, teacher, params, train_mode):
        optimizer = torch.optim.Adam(params, lr=lr)
        losses: list[float] = []
        bar = progress_bar(_batches(data, steps), total=steps, desc=desc, disable=not progress, leave=False)
        for index, batch in bar:
            value = compare(output_fn(_call(student, batch), batch), target(index, batch))
            optimizer.zero_grad(set_to_none=True)
            value.backward()
            if max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
            optimizer.step()
            losses.append(float(value.detach()))
            bar.set_postfix(loss=f"{losses[-1]:.3g}")
    return losses


def _resolve_steps(data: Iterable, steps: int | None) -> int:
    """``steps``, or one pass over ``data`` (which must then be sized and not empty)."""
    if steps is not None:
        return steps
    if not hasattr(data, "__len__"):
        raise ValueError("distill: steps=None needs a sized data (one pass); pass steps=")
    if len(data) == 0:
        raise ValueError("distill: data yielded no batch")
    return len(data)


class _Targets:
    """The teacher's output for a batch, computed under ``no_grad`` (kept per batch index with ``cache``)."""

    def __init__(self, teacher: nn.Module, output_fn: OutputFn, cache: bool) -> None:
        self.teacher, self.output_fn = teacher, output_fn
        self.cache: dict[int, Tensor] | None = {} if cache else None

    def __call__(self, index: int, batch: Any) -> Tensor:
        target = None if self.cache is None else self.cache.get(index)
        if target is None:
            with torch.no_grad():
                target = self.output_fn(_call(self.teacher, batch), batch).detach()
            if self.cache is not None:
                self.cache[index] = target
        return target


@contextlib.contextmanager
def _training(student: nn.Module, teacher: nn.Module, params: list[nn.Parameter], train_mode: bool):
    """Only ``params`` of ``student`` require grad, the student in ``train_mode``, the teacher in eval; on exit
    (also on an error) every ``requires_grad`` flag and mode is restored and the gradients are dropped."""
    was_training, teacher_training = student.training, teacher.training
    flags = [(p, p.requires_grad) for p in student.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    student.train(train_mode)
    teacher.eval()
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
            p.grad = None
        student.train(was_training)
        teacher.train(teacher_training)


def _pq_layers(model: nn.Module) -> list[nn.Module]:
    # the agreed PQ layer interface (pipeline.is_pq_layer): interchange_codes() and a centroids tensor
    return [
        m
        for m in model.modules()
        if hasattr(m, "interchange_codes") and isinstance(getattr(m, "centroids", None), Tensor)
    ]


def _master_centroids(layers: list[nn.Module]) -> tuple[list[nn.Parameter], dict[int, tuple[nn.Parameter, list]]]:
    """float32 master copies of the float centroids (one per shared Parameter), installed in the layers."""
    masters: dict[int, tuple[nn.Parameter, list]] = {}  # id(original) -> (master, [(layer, original)])
    for layer in layers:
        original = layer.centroids
        if not original.is_floating_point():
            continue  # int8 centroids: not trainable by gradient
        if id(original) not in masters:
            master = original if original.dtype == torch.float32 else nn.Parameter(original.detach().float())
            masters[id(original)] = (master, [])
        master, users = masters[id(original)]
        users.append((layer, original))
        layer.centroids = master
    return [m for m, _ in masters.values()], masters


def _restore_centroids(masters: dict[int, tuple[nn.Parameter, list]]) -> None:
    """Cast each master back to its original dtype, shared again by every layer that shared it."""
    for master, users in masters.values():
        original = users[0][1]
        if master is original:
            continue
        with torch.no_grad():
            original.copy_(master.detach().to(original.dtype))
        for layer, _ in users:
            layer.centroids = original


def finetune_centroids(
    model: nn.Module,
    teacher: nn.Module,
    data: Iterable,
    *,
    train_float: bool = False,
    steps: int | None = None,
    lr: float = 1e-4,
    loss: str | LossFn = "mse",
    output_fn: OutputFn | None = None,
    progress: bool = True,
    **kwargs: Any,
) -> list[float]:
    """Finetune the centroids of ``model``'s PQ layers by distillation from the uncompressed ``teacher``.

    The recipe the iPQ papers finetune with between stages (Stock et al. 2020, "And the bit goes down";
    Fan et al. 2020, Quant-Noise §4), with the frozen original model as the target instead of the labels
    (fairseq#2340). Codes stay fixed; the gradient of each centroid is the sum over the blocks assigned to
    it (``pq_linear``'s backward).

    Args:
        model: a model holding PQ layers (after :func:`quantize_model_`), changed in place.
        teacher: the uncompressed model (frozen; e.g. a copy taken before quantizing).
        data: batches (see :func:`distill`), e.g. tokenized calibration sentences.
        train_float: also train every float parameter that is not a PQ layer's centroids or codes (biases,
            LayerNorm, layers not quantized yet), as fairseq finetunes the whole model between stages.
        steps: optimizer steps (default: one pass over ``data``).
        lr: Adam's learning rate (1e-4 suits fp16 centroids of a pretrained transformer).
        loss: ``"mse"`` (hidden states / embeddings), ``"cosine"``, ``"kl"`` (logits) or a callable.
        output_fn: ``(outputs, batch) -> Tensor`` compared (e.g. mean-pooled, normalised sentence embeddings).
        progress: show a tqdm bar.
        **kwargs: passed to :func:`distill` (``temperature``, ``max_grad_norm``, ``train_mode``, ``cache_teacher``).

    Returns:
        The loss at each step.

    Raises:
        ValueError: ``model`` has no PQ layer with float centroids (and ``train_float`` is False), or a bad
            argument (see :func:`distill`); the model is then unchanged.
    """
    layers = _pq_layers(model)
    if not any(layer.centroids.is_floating_point() for layer in layers) and not train_float:
        raise ValueError(
            "finetune_centroids: the model has no PQ layer with float centroids (quantize it with "
            "quantize_model_ first, or pass train_float=True)"
        )
    _check_args(lr, steps, kwargs.get("temperature", 1.0), kwargs.get("max_grad_norm", 1.0))
    _loss_fn(loss, 1.0)
    params, masters = _master_centroids(layers)
    try:
        if train_float:
            pq_tensors = {id(t) for layer in layers for t in (layer.centroids, *layer.buffers(recurse=False))}
            mine = {id(p) for p in params}
            params += [p for p in model.parameters() if p.is_floating_point() and id(p) not in pq_tensors | mine]
        return distill(
            model,
            teacher,
            data,
            params,
            steps=steps,
            lr=lr,
            loss=loss,
            output_fn=output_fn,
            progress=progress,
            desc=kwargs.pop("desc", "finetune centroids"),
            **kwargs,
        )
    finally:
        _restore_centroids(masters)
