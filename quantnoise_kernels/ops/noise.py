"""Quant-Noise ops: ``block_noise`` and the fused ``noisy_linear``, with fake kernels and autograd.

The seed of every mask is a 0-d int64 tensor drawn from torch's RNG (:func:`draw_seed`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .._blocks import SEED_HIGH
from ._args import bool_arg, float_arg, int_arg, seed_arg
from ._checks import (
    check_block_noise_args,
    check_block_noise_centroids,
    check_noisy_linear_args,
    check_noisy_linear_backward_args,
)

__all__ = ["draw_seed", "block_noise", "noisy_linear"]


def draw_seed(generator: torch.Generator | None = None) -> Tensor:
    """Draw a Philox seed from torch's RNG, so ``torch.manual_seed`` makes noise reproducible.

    Returns a 0-d int64 CPU tensor (a tensor, not an int, so ``torch.compile`` traces it).
    """
    return torch.randint(0, SEED_HIGH, (), dtype=torch.int64, generator=generator)


def _noise_args(op: str, seed, p, block_size, offset, rescale, straight_through) -> tuple:
    """``(seed, p, block_size, offset, rescale, straight_through)`` as the schemas take them (a seed tensor),
    each checked (:mod:`._args`: no silent truncation of ``block_size=4.5``, no truthiness of ``rescale="no"``).

    The wrappers' positional order ``(p, block_size, seed)`` is the documented one (fairseq's ``quant_noise``
    order); the schemas take the seed first. Everything after ``seed`` is keyword-only."""
    return (
        seed_arg(op, seed),
        float_arg(op, "p", p),
        int_arg(op, "block_size", block_size),
        int_arg(op, "offset", offset),
        bool_arg(op, "rescale", rescale),
        bool_arg(op, "straight_through", straight_through),
    )


def block_noise(
    weight: Tensor,
    p: float,
    block_size: int,
    seed: int | Tensor,
    *,
    offset: int = 0,
    rescale: bool = True,
    straight_through: bool = True,
    noise: str = "drop",
    centroids: Tensor | None = None,
) -> Tensor:
    """Fused Quant-Noise on the blocks of ``weight`` (one pass, no mask tensor).

    ``weight`` is viewed as ``weight.reshape(out, -1)``; a block is ``block_size`` consecutive
    entries of a row. Each block is noised with probability ``p`` from a Philox draw keyed by
    ``(seed, offset, block index)``: the same seed gives the same mask on every device.

    Args:
        weight: ``[out, ...]`` float32/float16/bfloat16/float64; never modified.
        p: noise rate in ``[0, 1)`` (``1`` allowed when ``rescale=False``).
        block_size: block length; must divide the row length ``weight[0].numel()``.
        seed: int or one-element int64 tensor (CPU or ``weight``'s device); see :func:`draw_seed`.
        offset: second Philox counter word, to draw independent masks from one seed.
        rescale: ``noise="drop"`` only: scale kept blocks by ``1/(1-p)`` (fairseq's default).
            Ignored by ``noise="centroid"`` (``s = 1``, so ``p = 1`` is allowed there).
        straight_through: backward passes ``s*grad`` to every entry (the paper's
            ``W + stopgrad(mask*(phi(W)-W))``); ``False``: dropout-style, 0 on noised blocks.
        noise: ``"drop"`` (noised blocks become 0) or ``"centroid"`` (a noised block becomes its
            nearest row of ``centroids`` in squared L2, ties to the lowest index; kept blocks
            are copied unscaled).
        centroids: ``noise="centroid"`` only (required there): ``[K, block_size]`` codebook with
            ``weight``'s dtype and device. Not differentiated.

    Returns:
        A new contiguous tensor of ``weight``'s shape and dtype.
    """
    args = _noise_args("block_noise", seed, p, block_size, offset, rescale, straight_through)
    return torch.ops.quantnoise.block_noise.default(weight, *args, noise, centroids)


@torch.library.register_fake("quantnoise::block_noise")
def _block_noise_fake(
    weight, seed, p, block_size, offset=0, rescale=True, straight_through=True, noise="drop", centroids=None
):
    check_block_noise_args(weight, seed, p, block_size, rescale, noise)
    check_block_noise_centroids(weight, block_size, noise, centroids)
    return torch.empty_like(weight, memory_format=torch.contiguous_format)


def _block_noise_setup_context(ctx, inputs, output):
    _, seed, p, block_size, offset, rescale, straight_through, noise, _centroids = inputs
    ctx.save_for_backward(seed)
    ctx.args = (p, block_size, offset, rescale, straight_through, noise)


def _block_noise_backward(ctx, grad: Tensor):
    (seed,) = ctx.saved_tensors
    p, block_size, offset, rescale, straight_through, noise = ctx.args
    scale = 1.0 / (1.0 - p) if (noise == "drop" and rescale) else 1.0
    if straight_through:  # identity (times s) on every entry, as if no block were noised
        grad_weight = grad * scale if scale != 1.0 else grad
    else:  # dropout-style: s*grad on kept blocks, 0 on noised ones = the drop forward on grad
        grad_weight = torch.ops.quantnoise.block_noise.default(
            grad, seed, p, block_size, offset, scale != 1.0, False, "drop"
        ).view_as(grad)
    return grad_weight, None, None, None, None, None, None, None, None


torch.library.register_autograd(
    "quantnoise::block_noise", _block_noise_backward, setup_context=_block_noise_setup_context
)


def noisy_linear(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    p: float,
    block_size: int,
    seed: int | Tensor,
    *,
    offset: int = 0,
    rescale: bool = True,
    straight_through: bool = True,
) -> Tensor:
    """``F.linear(input, block_noise(weight, ...), bias)`` without materialising the noised weight.

    Same mask as :func:`block_noise` for the same ``(seed, offset)``. On the CPU the weight is
    noised an L2-sized chunk of rows at a time and multiplied from there, so a noisy training
    step costs about what a plain one does.

    Args:
        input: ``[..., in]``, weight's dtype and device.
        weight: ``[out, in]``; never modified.
        bias: ``[out]`` or ``None``.
        p, block_size, seed, offset, rescale, straight_through: as :func:`block_noise` (``noise="drop"``).

    Returns:
        ``[..., out]``.
    """
    args = _noise_args("noisy_linear", seed, p, block_size, offset, rescale, straight_through)
    return torch.ops.quantnoise.noisy_linear.default(input, weight, bias, *args)


@torch.library.register_fake("quantnoise::noisy_linear")
def _noisy_linear_fake(input, weight, bias, seed, p, block_size, offset=0, rescale=True, straight_through=True):
    check_noisy_linear_args(input, weight, bias, seed, p, block_size, rescale)
    return input.new_empty((*input.shape[:-1], weight.shape[0]))


@torch.library.register_fake("quantnoise::noisy_linear_backward_input")
def _noisy_linear_backward_input_fake(grad_output, weight, seed, p, block_size, offset=0, rescale=True):
    check_noisy_linear_backward_args(grad_output, weight, seed, p, block_size, rescale)
    return grad_output.new_empty((*grad_output.shape[:-1], weight.shape[1]))


def _noisy_linear_setup_context(ctx, inputs, output):
    input, weight, bias, seed, p, block_size, offset, rescale, straight_through = inputs
    ctx.save_for_backward(input, weight, seed)
    ctx.args = (p, block_size, offset, rescale, straight_through)


def _noisy_linear_backward(ctx, grad: Tensor):
    input, weight, seed = ctx.saved_tensors
    p, block_size, offset, rescale, straight_through = ctx.args
    grad_input = grad_weight = grad_bias = None
    if ctx.needs_input_grad[0]:
        grad_input = torch.ops.quantnoise.noisy_linear_backward_input.default(
            grad, weight, seed, p, block_size, offset, rescale
        )
    g = grad.reshape(math.prod(grad.shape[:-1]), weight.shape[0])  # not -1: also for 0 features
    if ctx.needs_input_grad[1]:
        x = input.reshape(math.prod(input.shape[:-1]), weight.shape[1])
        scale = 1.0 / (1.0 - p) if rescale else 1.0
        if straight_through:  # scale the small gradient, not the weight-sized product
            grad_weight = (g * scale if scale != 1.0 else g).t().mm(x)
        else:
            grad_weight = torch.ops.quantnoise.block_noise.default(
                g.t().mm(x), seed, p, block_size, offset, rescale, False, "drop"
            )
    if ctx.needs_input_grad[2]:
        grad_bias = g.sum(0)
    return grad_input, grad_weight, grad_bias, None, None, None, None, None, None


torch.library.register_autograd(
    "quantnoise::noisy_linear", _noisy_linear_backward, setup_context=_noisy_linear_setup_context
)
