"""Quant-Noise ops: ``block_noise`` and its backward, with fake kernels and autograd (the fused layers:
:mod:`.noisy`).

Every op takes the same noise arguments (:class:`NoiseSpec` bundles them): the rate ``p``, the
``block_size``, the Philox ``seed`` (a 0-d int64 tensor drawn from torch's RNG, :func:`draw_seed`)
and ``offset``, and the kind: ``noise="drop"`` (``rescale``), ``"fake_quant"`` (``scale``,
``zero_point``, ``quant_min``, ``quant_max``) or ``"centroid"`` (``centroids``). The backward of
every op (:func:`noise_backward`): straight-through (``drop``: times ``1/(1-p)`` with ``rescale``;
``fake_quant``: times the clamp mask), or dropout-style with ``straight_through=False`` (0 on
noised blocks).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, TypedDict

import torch
from torch import Tensor

from .._blocks import SEED_HIGH
from ._args import bool_arg, check_keywords, float_arg, int_arg, seed_arg
from ._noise_checks import check_noise_args, check_noise_rows

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["draw_seed", "block_noise", "noise_backward", "NoiseSpec"]


def draw_seed(generator: torch.Generator | None = None) -> Tensor:
    """Draw a Philox seed from torch's RNG, so ``torch.manual_seed`` makes noise reproducible.

    Returns a 0-d int64 CPU tensor (a tensor, not an int, so ``torch.compile`` traces it).
    """
    return torch.randint(0, SEED_HIGH, (), dtype=torch.int64, generator=generator)


class NoiseKwargs(TypedDict, total=False):
    """The keyword-only noise arguments of :func:`block_noise` and :func:`.noisy.noisy_linear`, documented at
    :func:`block_noise`; their defaults are :class:`NoiseSpec`'s."""

    offset: int
    rescale: bool
    straight_through: bool
    noise: str
    centroids: Tensor | None
    scale: Tensor | None
    zero_point: Tensor | None
    quant_min: int
    quant_max: int


_NOISE_KEYWORDS = tuple(NoiseKwargs.__annotations__)
# The scalar noise arguments and their checks (:mod:`._args`); the tensors and the kind are checked by the kernels.
_SCALAR_CHECKS = {
    "offset": int_arg,
    "rescale": bool_arg,
    "straight_through": bool_arg,
    "quant_min": int_arg,
    "quant_max": int_arg,
}


@dataclasses.dataclass(frozen=True)
class NoiseSpec:
    """The noise arguments shared by the ops, in the schemas' order after ``seed``."""

    p: float
    block_size: int
    offset: int = 0
    rescale: bool = True
    straight_through: bool = True
    noise: str = "drop"
    centroids: Tensor | None = None
    scale: Tensor | None = None
    zero_point: Tensor | None = None
    quant_min: int = 0
    quant_max: int = 255
    rows: Tensor | None = None  # block_noise(_backward) only: the weight rows' indices in the whole weight

    @classmethod
    def of(cls, op: str, p, block_size, noise_args: NoiseKwargs, rows: Tensor | None = None) -> NoiseSpec:
        """The wrapper arguments of ``op`` (its ``**noise_args``), each checked (:mod:`._args`: no
        silent truncation of ``block_size=4.5``, no truthiness of ``rescale="no"``); the tensors and the kind are
        checked by the kernels. A keyword that is not a noise argument is refused as Python refuses it
        (``TypeError``)."""
        check_keywords(op, noise_args, _NOISE_KEYWORDS)
        p, block_size = float_arg(op, "p", p), int_arg(op, "block_size", block_size)
        checked = {n: check(op, n, noise_args[n]) for n, check in _SCALAR_CHECKS.items() if n in noise_args}
        return cls(p, block_size, rows=rows, **{**noise_args, **checked})

    def schema_args(self, seed: Tensor, *, straight_through: bool = True) -> tuple:
        """``(seed, p, block_size, offset, rescale, [straight_through,] noise, centroids, scale, zero_point,
        quant_min, quant_max)`` as the schemas take them (``straight_through=False`` drops that entry, for
        ``noisy_linear_backward_input``). The wrappers' positional order ``(p, block_size, seed)`` is the
        documented one (fairseq's ``quant_noise`` order); the schemas take the seed first."""
        head = (seed, self.p, self.block_size, self.offset, self.rescale)
        st = (self.straight_through,) if straight_through else ()
        kind = (self.noise, self.centroids, self.scale, self.zero_point, self.quant_min, self.quant_max)
        return head + st + kind + (() if self.rows is None else (self.rows,))

    @property
    def drop_scale(self) -> float:
        """What kept blocks of noise="drop" are multiplied by (1 for the other kinds)."""
        return 1.0 / (1.0 - self.p) if self.noise == "drop" and self.rescale else 1.0

    def grid_bounds(self) -> tuple[Tensor, Tensor]:
        """fake_quant: the float range ``[(quant_min - z) * s, (quant_max - z) * s]`` of the grid, float32
        ``[1, 1]`` or ``[out, 1]``, computed as the kernels compute it (float32 products)."""
        z = self.zero_point.to(torch.float32).reshape(-1, 1)
        s = self.scale.reshape(-1, 1)
        return (self.quant_min - z) * s, (self.quant_max - z) * s


def _spec(args: tuple) -> NoiseSpec:
    """The NoiseSpec of a schema's ``(p, block_size, offset, rescale, straight_through, noise, ...)``."""
    return NoiseSpec(*args)


def block_noise(
    weight: Tensor,
    p: float,
    block_size: int,
    seed: int | Tensor,
    *,
    rows: Tensor | None = None,
    **noise_args: Unpack[NoiseKwargs],
) -> Tensor:
    """Fused Quant-Noise on the blocks of ``weight`` (one pass, no mask tensor; DESIGN §3.1).

    ``weight`` is viewed as ``weight.reshape(out, -1)``; a block is ``block_size`` consecutive
    entries of a row. Each block is noised with probability ``p`` from a Philox draw keyed by
    ``(seed, offset, block index)``: the same seed gives the same mask on every device.

    Args:
        weight: ``[out, ...]`` float32/float16/bfloat16/float64; never modified.
        p: noise rate, fraction of blocks noised, in ``[0, 1]`` (``< 1`` for ``noise="drop"`` with rescale).
        block_size: block length; must divide the row length ``weight[0].numel()``.
        seed: int or one-element int64 tensor (CPU or ``weight``'s device); see :func:`draw_seed`.
        offset: second Philox counter word, to draw independent masks from one seed (default 0).
        rescale: ``noise="drop"`` only: scale kept blocks by ``1/(1-p)`` (default True, as fairseq).
        straight_through: backward passes the gradient to every entry (the paper's
            ``W + stopgrad(mask*(phi(W)-W))``; default); ``False``: dropout-style, 0 on noised blocks.
        noise: ``"drop"`` (default: noised blocks become 0), ``"fake_quant"`` (noised blocks become their
            int-N fake-quantized value, kept entries are clamped to the grid's range, the gradient is
            straight-through times the clamp mask) or ``"centroid"`` (a noised block becomes its
            nearest row of ``centroids``; kept blocks are copied).
        centroids: ``noise="centroid"``: ``[K, block_size]`` codebook, ``weight``'s dtype and device.
        scale, zero_point: ``noise="fake_quant"``: float32 / int32, ``[1]`` (per tensor) or ``[out]``
            (per output channel, dim 0 of ``weight.reshape(out, -1)``); value ``(q - zero_point) * scale``.
        quant_min, quant_max: ``noise="fake_quant"``: the integer grid, 2 to 8 bits (default 0, 255).
        rows: int64 ``[weight.shape[0]]``: ``weight`` holds rows ``rows`` of a larger weight (same row length),
            whose mask it gets: block ``j`` of row ``i`` is keyed as block ``j`` of row ``rows[i]``, so noising
            looked-up rows equals looking up in the noised whole table (the row-only noise of ``nn.Embedding``).
            Per-channel ``scale``/``zero_point`` are ``weight``'s rows' (gathered by the caller).

    Returns:
        A new contiguous tensor of ``weight``'s shape and dtype.

    Raises:
        ValueError, TypeError: a bad argument, named with its value.
    """
    spec = NoiseSpec.of("block_noise", p, block_size, noise_args, rows)
    return torch.ops.quantnoise.block_noise.default(weight, *spec.schema_args(seed_arg("block_noise", seed)))


def _check_spec(op: str, weight: Tensor, seed: Tensor, spec: NoiseSpec) -> None:
    """The fake kernels' mirror of ``make_noise_args`` (csrc/host/noise_host.cpp)."""
    check_noise_args(op, weight, seed, spec.p, spec.block_size, spec.rescale, spec.noise, spec.centroids,
                     spec.scale, spec.zero_point, spec.quant_min, spec.quant_max)  # fmt: skip
    if spec.rows is not None:
        check_noise_rows(op, weight, spec.rows)


# The fakes take the schema's arguments positionally; the noise arguments follow (weight, seed) as NoiseSpec's.
@torch.library.register_fake("quantnoise::block_noise")
def _block_noise_fake(weight, seed, *noise):
    _check_spec("block_noise", weight, seed, _spec(noise))
    return torch.empty_like(weight, memory_format=torch.contiguous_format)


def noise_backward(grad: Tensor, weight: Tensor, seed: Tensor, spec: NoiseSpec) -> Tensor:
    """The gradient of ``weight`` given ``grad`` (``weight``'s shape), the gradient of the noised weight.

    Straight-through (the paper's ``W + stopgrad(mask * (phi(W) - W))``): ``grad`` times the ``drop`` rescale
    factor; ``straight_through=False``: 0 on noised blocks (the forward's mask, redrawn from the seed). For
    ``fake_quant`` also 0 where the weight lies outside the grid's range (the clamp's gradient). One pass
    (the ``block_noise_backward`` kernel); :func:`quantnoise_kernels.reference.block_noise_backward` is its
    plain-PyTorch reference.
    """
    if grad.layout != torch.strided:  # a sparse embedding's gradient, looked up in the noised weight
        grad = grad.to_dense()
    return torch.ops.quantnoise.block_noise_backward.default(grad, weight, *spec.schema_args(seed))


@torch.library.register_fake("quantnoise::block_noise_backward")
def _block_noise_backward_fake(grad, weight, seed, *noise):
    _check_spec("block_noise_backward", weight, seed, _spec(noise))
    if grad.shape != weight.shape or grad.dtype != weight.dtype:
        raise ValueError(
            f"quantnoise::block_noise_backward: grad must have weight's shape {tuple(weight.shape)} and dtype "
            f"{weight.dtype}, got {tuple(grad.shape)} {grad.dtype}"
        )
    return torch.empty_like(weight, memory_format=torch.contiguous_format)


def _register_noise_autograd(op: str, n_before: int) -> None:
    """The autograd of ``quantnoise::<op>``, whose inputs are ``n_before`` tensors, then ``(weight, seed, *noise)``.

    The gradient of input 0 (``weight`` for ``block_noise``; ``grad`` for ``block_noise_backward``, which is linear
    in ``grad`` and piecewise constant in ``weight``, the clamp mask) is the same op on the incoming gradient
    (:func:`noise_backward`); every other input gets None.
    """

    def setup_context(ctx, inputs, output):
        weight, seed, *noise = inputs[n_before:]
        ctx.save_for_backward(weight, seed)
        ctx.spec = _spec(tuple(noise))
        ctx.n_inputs = len(inputs)

    def backward(ctx, grad: Tensor):
        weight, seed = ctx.saved_tensors
        return (noise_backward(grad, weight, seed, ctx.spec),) + (None,) * (ctx.n_inputs - 1)

    torch.library.register_autograd(f"quantnoise::{op}", backward, setup_context=setup_context)


_register_noise_autograd("block_noise", n_before=0)
_register_noise_autograd("block_noise_backward", n_before=1)
