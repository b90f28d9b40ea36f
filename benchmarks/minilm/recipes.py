"""The demo's rows: one :class:`Recipe` each, built by one generic :func:`build`.

A row is data (which iPQ configuration, how many distillation steps, Quant-Noise first or not, int8
centroids, ...), so a new recipe is a few lines in :data:`ROWS` (issue 10 adds activation-aware iPQ by
passing ``quantize_kwargs``).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

import quantnoise_kernels as qn
from quantnoise_kernels import hf, pq

__all__ = ["Recipe", "ROWS", "DemoContext", "build"]

HERE = os.path.dirname(os.path.abspath(__file__))
LINEAR_YAML = os.path.join(HERE, "minilm_ipq.yaml")
ALL_YAML = os.path.join(HERE, "minilm_ipq_embeddings.yaml")
BEST_YAML = os.path.join(HERE, "minilm_ipq_best.yaml")


@dataclass(frozen=True)
class Recipe:
    """How one row is made from the dense model.

    Attributes:
        name: the row label.
        config: iPQ configuration (fairseq YAML); None keeps the weights dense.
        finetune_steps: centroid distillation steps after each iPQ stage (floats trained too when
            ``train_float``).
        quant_noise_steps: Quant-Noise distillation steps before iPQ (noise on the layers iPQ will take,
            with their iPQ block sizes); 0 skips it.
        quant_noise_p: the noise rate of those steps.
        train_float: finetune the float parameters left (biases, LayerNorms, layers not quantized yet).
        centroid_bits: int8 centroids (scalar issue 8's ``quantize_model_(..., centroid_bits=)``).
        act_bits: int8 activations fused into ``pq_linear`` (set on every PQ Linear).
        scalar_int8: the scalar int8 export (``quantnoise_kernels.scalar.to_int8``).
        quantize_kwargs: extra keyword arguments of ``quantize_model_``.
        calibrate: activation-aware iPQ (issue 10): ``quantize_model_(..., calibration=<the calibration
            batches>)`` at every stage.
        target: what distillation compares: ``"embedding"`` (MSE on the pooled sentence embeddings) or
            ``"blocks"`` (every transformer block's output at every token, :func:`hf.block_outputs`, with
            :func:`hf.layerwise_mse`).
    """

    name: str
    config: str | None = LINEAR_YAML
    finetune_steps: int = 0
    quant_noise_steps: int = 0
    quant_noise_p: float = 0.1
    train_float: bool = True
    centroid_bits: int | None = None
    act_bits: int = 0
    scalar_int8: bool = False
    quantize_kwargs: dict[str, Any] = field(default_factory=dict)
    calibrate: bool = False
    target: str = "embedding"


ROWS: list[Recipe] = [
    Recipe("dense fp32", config=None),
    Recipe("scalar int8 (to_int8)", config=None, scalar_int8=True),
    Recipe("iPQ Linear"),
    Recipe("iPQ Linear + distill", finetune_steps=-1),
    Recipe("activation-aware iPQ Linear", calibrate=True),
    Recipe("activation-aware iPQ Linear + distill", finetune_steps=-1, calibrate=True),
    Recipe("Quant-Noise, then iPQ Linear + distill", finetune_steps=-1, quant_noise_steps=-1),
    Recipe(
        "iPQ Linear + int8 centroids + int8 act + distill",
        finetune_steps=-1,
        centroid_bits=8,
        act_bits=8,
    ),
    Recipe("iPQ Linear + PQEmbedding + distill", config=ALL_YAML, finetune_steps=-1),
    Recipe(
        "Quant-Noise, then iPQ Linear + PQEmbedding + distill", config=ALL_YAML, finetune_steps=-1, quant_noise_steps=-1
    ),
    Recipe(
        "best recipe: activation-aware iPQ Linear + PQEmbedding/4 + block distill",
        config=BEST_YAML,
        finetune_steps=-1,
        calibrate=True,
        target="blocks",
    ),
]
"""The rows, in order. ``-1`` steps mean "the run's default" (``DemoContext.finetune_steps`` / ``qn_steps``)."""


@dataclass
class DemoContext:
    """What every recipe needs: the dense model (the teacher), calibration batches and the run's settings."""

    dense: nn.Module
    train_batches: list[dict]
    finetune_steps: int
    qn_steps: int
    lr: float = 1e-4
    qn_lr: float = 2e-5
    n_iter: int = 15
    seed: int = 0
    config_override: str | None = None
    progress: bool = True
    log: Callable[[str], None] = print


def _steps(value: int, default: int) -> int:
    return default if value < 0 else value


def _no_dropout(model: nn.Module) -> nn.Module:
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    return model


def _quant_noise_finetune(model: nn.Module, recipe: Recipe, config: dict, ctx: DemoContext) -> None:
    """Wrap the layers iPQ will take with Quant-Noise (their iPQ block sizes), distill, unwrap."""
    layers = [layer for stage in pq.plan_stages(model, config) for layer in stage]
    wrapped = [qn.quant_noise(model.get_submodule(x.name), recipe.quant_noise_p, x.block_size) for x in layers]
    try:
        losses = pq.distill(
            _no_dropout(model),
            ctx.dense,
            ctx.train_batches,
            [p for p in model.parameters() if p.is_floating_point()],
            steps=_steps(recipe.quant_noise_steps, ctx.qn_steps),
            lr=ctx.qn_lr,
            output_fn=hf.sentence_embedding,
            train_mode=True,
            progress=ctx.progress,
            desc="Quant-Noise finetune",
        )
        ctx.log(
            f"  Quant-Noise p={recipe.quant_noise_p}: {len(losses)} steps, loss {losses[0]:.3g} -> {losses[-1]:.3g}"
        )
    finally:
        for module in wrapped:
            if hasattr(module, "quant_noise_config"):
                qn.remove_quant_noise(module)


def _target(target: str, batches: list[dict]):
    """(batches, output_fn, loss) of a distillation target (see ``Recipe.target``)."""
    if target == "embedding":
        return batches, hf.sentence_embedding, "mse"
    if target == "blocks":
        return hf.with_hidden_states(batches), hf.block_outputs, hf.layerwise_mse
    raise ValueError(f"Recipe.target must be 'embedding' or 'blocks', got {target!r}")


def _finetuner(recipe: Recipe, ctx: DemoContext):
    steps = _steps(recipe.finetune_steps, ctx.finetune_steps)
    if steps == 0:
        return None

    data, output_fn, loss = _target(recipe.target, ctx.train_batches)

    def after_stage(stage: int, model: nn.Module) -> None:
        losses = pq.finetune_centroids(
            _no_dropout(model),
            ctx.dense,
            data,
            steps=steps,
            lr=ctx.lr,
            loss=loss,
            output_fn=output_fn,
            train_float=recipe.train_float,
            progress=ctx.progress,
            desc=f"stage {stage} distill",
        )
        ctx.log(f"  stage {stage}: {len(losses)} distillation steps, loss {losses[0]:.3g} -> {losses[-1]:.3g}")

    return after_stage


def _scalar_int8(model: nn.Module) -> nn.Module:
    from quantnoise_kernels import scalar

    scalar.quantize_model_(model, p=1.0, bits=8, update_step=1)
    return scalar.to_int8(model)


def build(recipe: Recipe, ctx: DemoContext) -> nn.Module:
    """The model of ``recipe``: a deep copy of ``ctx.dense``, compressed as the recipe says, in eval mode."""
    model = copy.deepcopy(ctx.dense)
    if recipe.scalar_int8:
        return _scalar_int8(model).eval()
    if recipe.config is None:
        return model.eval()
    config = pq.load_config_yaml(ctx.config_override or recipe.config)
    if recipe.quant_noise_steps:
        _quant_noise_finetune(model, recipe, config, ctx)
    kwargs = dict(recipe.quantize_kwargs)
    if recipe.centroid_bits is not None:
        kwargs["centroid_bits"] = recipe.centroid_bits
    if recipe.calibrate:
        kwargs["calibration"] = ctx.train_batches
    pq.compress_staged(
        model,
        config,
        n_iter=ctx.n_iter,
        seed=ctx.seed,
        after_stage=_finetuner(recipe, ctx),
        progress=ctx.progress,
        quantize_kwargs=kwargs or None,
    )
    if recipe.act_bits:
        for module in model.modules():
            if hasattr(module, "act_bits"):
                module.act_bits = recipe.act_bits
    return model.eval()
