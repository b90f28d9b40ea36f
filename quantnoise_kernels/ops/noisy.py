"""The fused noisy linear layer: ``noisy_linear`` (every noise kind), its fake kernels and autograd.

Same noise arguments and mask as :func:`.noise.block_noise`; on the CPU the op never materialises the noised
weight (it noises L2-sized chunks of rows and multiplies from there).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ._args import seed_arg
from ._noise_checks import check_noisy_linear_args, check_noisy_linear_backward_args
from .noise import NoiseKwargs, NoiseSpec, _check_spec, _spec, noise_backward

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["noisy_linear"]


def noisy_linear(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    p: float,
    block_size: int,
    seed: int | Tensor,
    **noise_args: Unpack[NoiseKwargs],
) -> Tensor:
    """``F.linear(input, block_noise(weight, ...), bias)`` without materialising the noised weight.

    Same mask as :func:`block_noise` for the same ``(seed, offset)``, every noise kind. On the CPU
    the weight is noised an L2-sized chunk of rows at a time and multiplied from there (and the
    weight gradient masked chunk by chunk), so a noisy training step costs about what a plain one
    does.

    Args:
        input: ``[..., in]``, weight's dtype and device.
        weight: ``[out, in]``; never modified.
        bias: ``[out]`` or ``None``.
        p, block_size, seed, ...: as :func:`block_noise`.

    Returns:
        ``[..., out]``.
    """
    spec = NoiseSpec.of("noisy_linear", p, block_size, noise_args)
    args = spec.schema_args(seed_arg("noisy_linear", seed))
    return torch.ops.quantnoise.noisy_linear.default(input, weight, bias, *args)


@torch.library.register_fake("quantnoise::noisy_linear")
def _noisy_linear_fake(input, weight, bias, seed, *noise):
    check_noisy_linear_args(input, weight, bias)
    _check_spec("noisy_linear", weight, seed, _spec(noise))
    return input.new_empty((*input.shape[:-1], weight.shape[0]))


@torch.library.register_fake("quantnoise::noisy_linear_backward_input")
def _noisy_linear_backward_input_fake(grad_output, weight, seed, p, block_size, offset=0, rescale=True, *kind):
    check_noisy_linear_backward_args(grad_output, weight)
    spec = _spec((p, block_size, offset, rescale, True, *kind))  # no straight_through: the forward's noise
    _check_spec("noisy_linear_backward_input", weight, seed, spec)
    return grad_output.new_empty((*grad_output.shape[:-1], weight.shape[1]))


def _noisy_linear_setup_context(ctx, inputs, output):
    input, weight, bias, seed, *rest = inputs
    ctx.save_for_backward(input, weight, seed)
    ctx.spec = _spec(tuple(rest))


def _noisy_linear_backward(ctx, grad: Tensor):
    input, weight, seed = ctx.saved_tensors
    spec: NoiseSpec = ctx.spec
    grad_input = grad_weight = grad_bias = None
    if ctx.needs_input_grad[0]:
        grad_input = torch.ops.quantnoise.noisy_linear_backward_input.default(
            grad, weight, *spec.schema_args(seed, straight_through=False)
        )
    g = grad.reshape(math.prod(grad.shape[:-1]), weight.shape[0])  # not -1: also for 0 features
    if ctx.needs_input_grad[1]:
        x = input.reshape(math.prod(input.shape[:-1]), weight.shape[1])
        if spec.straight_through and spec.noise != "fake_quant":  # scale the small gradient, not the product
            grad_weight = (g * spec.drop_scale if spec.drop_scale != 1.0 else g).t().mm(x)
        else:
            grad_weight = noise_backward(g.t().mm(x).view(weight.shape), weight, seed, spec)
    if ctx.needs_input_grad[2]:
        grad_bias = g.sum(0)
    return (grad_input, grad_weight, grad_bias) + (None,) * 12


torch.library.register_autograd(
    "quantnoise::noisy_linear", _noisy_linear_backward, setup_context=_noisy_linear_setup_context
)
