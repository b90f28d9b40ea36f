"""Scalar Quant-Noise on a weight or an activation: the fused ``fake_quant`` noise kind.

``W + stopgrad(mask * (Q(W) - W))`` with ``Q`` the int-N fake quantizer of :class:`QParams`
(DESIGN §3.1): a fraction ``p`` of the blocks (block size 1 = fairseq's per-weight noise) takes
its fake-quantized value, the other entries are clamped to the grid's range, and the gradient
is straight-through times the clamp mask (1 inside the range, 0 outside). ``p = 1`` is plain
fake quantization (the eval of the scalar modules). One pass, no mask tensor: the mask comes
from the Philox draw of ``block_noise`` (same seed, same mask on CPU and CUDA).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypedDict

from torch import Tensor

from .. import ops
from ..ops._args import check_keywords
from .qparams import QParams

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["fake_quant_noise", "fake_quant_noise_linear", "kind_kwargs"]


class FakeQuantNoiseKwargs(TypedDict, total=False):
    """The keyword-only arguments of :func:`fake_quant_noise` and :func:`fake_quant_noise_linear`, documented at
    :func:`fake_quant_noise`; their defaults are :func:`_op_args`'s."""

    block_size: int
    straight_through: bool
    seed: Tensor | None


_KEYWORDS = tuple(FakeQuantNoiseKwargs.__annotations__)


def kind_kwargs(qparams: QParams) -> dict:
    """The op keyword arguments of the ``fake_quant`` kind on ``qparams``'s grid."""
    return {
        "noise": "fake_quant",
        "scale": qparams.scale,
        "zero_point": qparams.zero_point,
        "quant_min": qparams.quant_min,
        "quant_max": qparams.quant_max,
    }


def _op_args(
    p: float, qparams: QParams, *, block_size: int = 1, straight_through: bool = True, seed: Tensor | None = None
) -> tuple[tuple, dict]:
    """The ``(p, block_size, seed)`` and the keywords of ``ops.block_noise`` / ``ops.noisy_linear`` after their
    tensors: the ``fake_quant`` kind on ``qparams``'s grid, the seed drawn from torch's RNG unless given."""
    seed = ops.draw_seed() if seed is None else seed
    return (p, block_size, seed), {"straight_through": straight_through, **kind_kwargs(qparams)}


def fake_quant_noise(x: Tensor, p: float, qparams: QParams, **options: Unpack[FakeQuantNoiseKwargs]) -> Tensor:
    """``x`` with scalar Quant-Noise; ``x`` is read as ``x.reshape(x.shape[0], -1)`` (1-D: one row).

    Args:
        x: float tensor (a weight ``[out, ...]`` or an activation); never modified.
        p: fraction of blocks fake-quantized, in ``[0, 1]``.
        qparams: per-tensor or per-``x.shape[0]`` scale and zero point (:func:`~.qparams.observe`).
        block_size: entries per Bernoulli draw along a row; must divide the row length (default 1).
        straight_through: ``False`` gives the dropout-style gradient (0 on noised blocks; default True).
        seed: Philox seed (default: drawn from torch's RNG, see ``ops.draw_seed``).

    Returns:
        A new tensor of ``x``'s shape and dtype.
    """
    check_keywords("fake_quant_noise", options, _KEYWORDS)
    shape = x.shape
    if x.dim() < 2:
        x = x.reshape(1, -1)
    args, kwargs = _op_args(p, qparams, **options)
    return ops.block_noise(x, *args, **kwargs).view(shape)


def fake_quant_noise_linear(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    p: float,
    qparams: QParams,
    **options: Unpack[FakeQuantNoiseKwargs],
) -> Tensor:
    """``F.linear(input, fake_quant_noise(weight, ...), bias)`` fused (``ops.noisy_linear``): the
    noised weight is never materialised on the CPU. Arguments as :func:`fake_quant_noise`."""
    check_keywords("fake_quant_noise_linear", options, _KEYWORDS)
    args, kwargs = _op_args(p, qparams, **options)
    return ops.noisy_linear(input, weight, bias, *args, **kwargs)
