"""The C++ checks of the Quant-Noise ops (``csrc/host/checks.cpp``, ``make_noise_args``) in Python, for the fake
kernels: same exception type, same message (see :mod:`._checks`). Checks that read tensor data (the values of
``scale`` and ``zero_point``, index ranges) are left to the real kernels.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .._blocks import check_block_size
from ._checks import _FLOATS, _name, _shape, _type, _value

__all__ = [
    "check_block_noise_args",
    "check_block_noise_centroids",
    "check_block_noise_fake_quant",
    "check_noise_args",
    "check_noisy_linear_args",
    "check_noisy_linear_backward_args",
    "check_noise_rows",
]


def check_seed(op: str, seed: Tensor, device: torch.device) -> None:
    _type(seed.dtype == torch.int64, op, lambda: f"seed must be an int64 tensor, got dtype {_name(seed.dtype)}")
    _value(seed.numel() == 1, op, lambda: f"seed must hold exactly one element, got shape {_shape(seed.shape)}")
    _value(
        seed.device.type == "cpu" or seed.device == device,
        op,
        lambda: f"seed must be on the CPU or on {device}, got {seed.device}",
    )


def check_block_noise_args(
    weight: Tensor, seed: Tensor, p: float, block_size: int, rescale: bool, noise: str, op: str = "block_noise"
) -> None:
    _value(
        noise in ("drop", "fake_quant", "centroid"),
        op,
        lambda: f"noise must be one of {{'drop', 'fake_quant', 'centroid'}}, got '{noise}'",
    )
    _type(
        weight.dtype in _FLOATS,
        op,
        lambda: f"weight must be float32, float16, bfloat16 or float64, got dtype {_name(weight.dtype)}",
    )
    _value(
        weight.dim() >= 2,
        op,
        lambda: f"weight must have at least 2 dimensions [out, ...], got shape {_shape(weight.shape)}",
    )
    check_block_size(block_size, weight.shape, f"quantnoise::{op}")
    _value(math.isfinite(p) and 0.0 <= p <= 1.0, op, lambda: f"p must be in [0, 1], got {p:g}")
    _value(
        not (noise == "drop" and rescale and p >= 1.0),
        op,
        lambda: f"p must be in [0, 1) when rescale=True (survivors scale by 1/(1-p)), got {p:g}",
    )
    check_seed(op, seed, weight.device)


def check_block_noise_centroids(
    weight: Tensor, block_size: int, noise: str, centroids: Tensor | None, op: str = "block_noise"
) -> None:
    if noise != "centroid":
        _value(centroids is None, op, lambda: f"centroids apply to noise='centroid' only, got noise='{noise}'")
        return
    _value(
        centroids is not None, op, lambda: "centroids must be given for noise='centroid' (a [K, block_size] codebook)"
    )
    c = centroids
    _value(
        c.dim() == 2 and c.shape[0] > 0 and c.shape[1] == block_size,
        op,
        lambda: f"centroids must have shape [K, block_size={block_size}] with K > 0, got shape {_shape(c.shape)}",
    )
    _type(
        c.dtype == weight.dtype,
        op,
        lambda: f"centroids must have weight's dtype {_name(weight.dtype)}, got {_name(c.dtype)}",
    )
    _value(
        c.device == weight.device, op, lambda: f"centroids must be on weight's device {weight.device}, got {c.device}"
    )


def check_block_noise_fake_quant(
    weight: Tensor,
    noise: str,
    scale: Tensor | None,
    zero_point: Tensor | None,
    quant_min: int,
    quant_max: int,
    op: str = "block_noise",
) -> None:
    """The grid of noise='fake_quant' (values of scale/zero_point: the real kernels, which read data)."""
    if noise != "fake_quant":
        _value(
            scale is None and zero_point is None,
            op,
            lambda: f"scale and zero_point apply to noise='fake_quant' only, got noise='{noise}'",
        )
        return
    _value(
        scale is not None and zero_point is not None,
        op,
        lambda: "scale and zero_point must be given for noise='fake_quant'",
    )
    _value(
        3 <= quant_max - quant_min <= 255,
        op,
        lambda: f"quant_min and quant_max must span 2 to 8 bits (4 to 256 levels), got [{quant_min}, {quant_max}]",
    )
    out = weight.shape[0]
    _type(scale.dtype == torch.float32, op, lambda: f"scale must be float32, got dtype {_name(scale.dtype)}")
    _type(zero_point.dtype == torch.int32, op, lambda: f"zero_point must be int32, got dtype {_name(zero_point.dtype)}")
    _value(
        scale.dim() == 1 and (scale.shape[0] == 1 or scale.shape[0] == out),
        op,
        lambda: (
            f"scale must have shape [1] (per tensor) or [{out}] (per output channel), got shape {_shape(scale.shape)}"
        ),
    )
    _value(
        zero_point.shape == scale.shape,
        op,
        lambda: f"zero_point must have scale's shape {_shape(scale.shape)}, got {_shape(zero_point.shape)}",
    )
    for name, t in (("scale", scale), ("zero_point", zero_point)):
        _value(
            t.device == weight.device,
            op,
            lambda name=name, t=t: f"{name} must be on weight's device {weight.device}, got {t.device}",
        )


def check_noise_args(
    op: str,
    weight: Tensor,
    seed: Tensor,
    p: float,
    block_size: int,
    rescale: bool,
    noise: str,
    centroids: Tensor | None,
    scale: Tensor | None,
    zero_point: Tensor | None,
    quant_min: int,
    quant_max: int,
) -> None:
    """``make_noise_args`` (csrc/host/noise_host.cpp): every noise argument of an op."""
    check_block_noise_args(weight, seed, p, block_size, rescale, noise, op)
    check_block_noise_centroids(weight, block_size, noise, centroids, op)
    check_block_noise_fake_quant(weight, noise, scale, zero_point, quant_min, quant_max, op)


def _check_matmul_operand(op: str, name: str, x: Tensor, weight: Tensor, features: int) -> None:
    _type(
        x.dtype == weight.dtype,
        op,
        lambda: f"{name} must have weight's dtype {_name(weight.dtype)}, got {_name(x.dtype)}",
    )
    _value(x.device == weight.device, op, lambda: f"{name} must be on weight's device {weight.device}, got {x.device}")
    _value(
        x.dim() >= 1 and x.shape[-1] == features,
        op,
        lambda: (
            f"{name} must have shape [..., {features}] to match weight {_shape(weight.shape)}, got {_shape(x.shape)}"
        ),
    )


def _check_linear_weight(op: str, weight: Tensor) -> None:
    _value(weight.dim() == 2, op, lambda: f"weight must have shape [out, in], got {_shape(weight.shape)}")


def check_noisy_linear_args(input: Tensor, weight: Tensor, bias: Tensor | None) -> None:
    op = "noisy_linear"
    _check_linear_weight(op, weight)
    _check_matmul_operand(op, "input", input, weight, weight.shape[1])
    if bias is not None:
        _type(
            bias.dtype == weight.dtype,
            op,
            lambda: f"bias must have weight's dtype {_name(weight.dtype)}, got {_name(bias.dtype)}",
        )
        _value(
            bias.device == weight.device and bias.dim() == 1 and bias.shape[0] == weight.shape[0],
            op,
            lambda: (
                f"bias must have shape [{weight.shape[0]}] on {weight.device}, got shape {_shape(bias.shape)} "
                f"on {bias.device}"
            ),
        )


def check_noisy_linear_backward_args(grad_output: Tensor, weight: Tensor) -> None:
    op = "noisy_linear_backward_input"
    _check_linear_weight(op, weight)
    _check_matmul_operand(op, "grad_output", grad_output, weight, weight.shape[0])


def check_noise_rows(op: str, weight: Tensor, rows: Tensor) -> None:
    """``rows`` of block_noise(_backward): int64 ``[weight.shape[0]]`` on weight's device (values >= 0: the kernel)."""
    _type(rows.dtype == torch.int64, op, lambda: f"rows must be an int64 tensor, got dtype {_name(rows.dtype)}")
    _value(
        rows.dim() == 1 and rows.shape[0] == weight.shape[0],
        op,
        lambda: (
            f"rows must have shape [{weight.shape[0]}] (one index per row of weight), got shape {_shape(rows.shape)}"
        ),
    )
    _value(
        rows.device == weight.device, op, lambda: f"rows must be on weight's device {weight.device}, got {rows.device}"
    )
