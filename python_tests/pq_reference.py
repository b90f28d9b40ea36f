"""Shared checks of the PQ op and layer tests against the plain-PyTorch reference (decode + F.linear/conv)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from quantnoise_kernels import reference


def close_rel(y: Tensor, ref: Tensor, rtol: float = 1e-5) -> None:
    """``max |y - ref| <= rtol * max |ref|`` (compared in float64)."""
    scale = ref.abs().max().clamp(min=1e-30)
    err = ((y.double() - ref.double()).abs().max() / scale).item()
    assert err <= rtol, f"max error {err:.3e} relative to max |ref|"


def linear_grads(g: Tensor, x: Tensor, codes: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """Autograd through decode + F.linear in float64: (grad_x, grad_centroids)."""
    xx = x.detach().double().requires_grad_()
    cc = c.detach().double().requires_grad_()
    reference.pq_linear(xx, codes, cc).backward(g.double())
    return xx.grad, cc.grad


def decoded_conv(x: Tensor, codes: Tensor, c: Tensor, bias: Tensor | None, dense: nn.Module) -> Tensor:
    """``dense``'s convolution (1-d or 2-d) with the reference-decoded weight (F.pad first for the non-zero
    padding modes)."""
    w = reference.pq_decode(codes, c, tuple(dense.weight.shape))
    padding = dense.padding
    if dense.padding_mode != "zeros":
        x = F.pad(x, [p for p in reversed(dense.padding) for _ in range(2)], mode=dense.padding_mode)
        padding = 0
    fn = F.conv1d if w.dim() == 3 else F.conv2d
    return fn(x, w, bias, dense.stride, padding, dense.dilation, dense.groups)


def assert_same_forward_backward(y: Tensor, ref: Tensor, leaves: list[tuple[Tensor, Tensor | None]]) -> None:
    """``y`` close to ``ref``; then one random output gradient through both, and each (ours, reference) leaf
    pair's ``.grad`` close (pairs whose reference is None are skipped)."""
    assert y.shape == ref.shape and y.dtype == ref.dtype
    close_rel(y, ref)
    g = torch.randn_like(ref)
    y.backward(g)
    ref.backward(g)
    for ours, theirs in leaves:
        if theirs is not None:
            close_rel(ours.grad, theirs.grad)
