"""Tolerances derived from the dtype, not tuned by hand.

:func:`tol` / :func:`assert_rounded_close`: a result computed in float32 (or float64) and rounded once to its
dtype (a float16 centroid gradient, a bfloat16 input gradient) is within ``tol(dtype) ~ eps(dtype)`` of the
precise value: the rounding itself is at most ``eps / 2`` relative, the rest is room for the float32
arithmetic before it (sums of ``n`` terms reordered: ``n * eps(float32)``, below a float16/bfloat16 ``eps``
for the short sums of these tests; a float32 result of a long sum passes its ``n``).

:func:`assert_close_in_dtype`, for results of a reduction computed in their own dtype (matmul, linear):

* float16 / bfloat16 / float32: flash-attention's rule. Our error against a float64 computation on the same
  inputs is at most twice the error of PyTorch's own computation in our dtype, plus the unit roundoff at the
  output's scale (``finfo(dtype).eps / 2 * max|expected|``: the rounding of the output itself, so that an exact
  PyTorch result does not demand an exact one from us).
* float64 (nothing more precise to compare with): the standard forward-error bound of a length-``n`` dot
  product, ``|err| <= gamma_n * sum_i |x_i| |w_i| + u |y|`` with ``u = eps / 2``, ``gamma_n = n u / (1 - n u)``
  (Higham, *Accuracy and Stability of Numerical Algorithms*, §3.1), element by element.
"""

from __future__ import annotations

import torch
from torch import Tensor


def tol(dtype: torch.dtype, n: int = 1) -> float:
    """Relative tolerance of a result computed in float32 (sums of up to ``n`` terms, in an order we do not
    control) and rounded once to ``dtype``: ``eps(dtype) + n * eps(float32)`` (each order's float32 error is
    within ``n * eps(float32) / 2`` of the exact sum, the rounding within ``eps(dtype) / 2``)."""
    return torch.finfo(dtype).eps + n * torch.finfo(torch.float32).eps


def assert_rounded_close(ours: Tensor, expected: Tensor, dtype: torch.dtype | None = None, n: int = 1) -> None:
    """``ours`` is ``expected`` (computed in float32 or better, sums of up to ``n`` terms) rounded to ``dtype``
    (default ``ours.dtype``).

    Within ``tol(dtype, n)`` relative, or ``tol(dtype, n) * max|expected|`` absolute: an entry near 0 is a sum of
    terms at the scale of the largest ones, so its error is too.
    """
    t = tol(dtype or ours.dtype, n)
    scale = expected.abs().max().item() if expected.numel() else 0.0
    torch.testing.assert_close(ours.double(), expected.double(), rtol=t, atol=t * scale)


def assert_close_in_dtype(ours: Tensor, expected: Tensor, torch_in_dtype: Tensor, magnitude: Tensor, n: int) -> None:
    """``ours`` (computed in its dtype) against ``expected`` (float64, same inputs).

    Args:
        ours: the result under test.
        expected: float64 result from the same (already rounded) inputs.
        torch_in_dtype: PyTorch's result computed in ``ours.dtype`` (the flash-attention baseline).
        magnitude: float64 ``sum_i |x_i| |w_i|`` per output element (``|x| @ |w|^T``), for the float64 bound.
        n: the reduction length.
    """
    assert ours.shape == expected.shape and ours.dtype == torch_in_dtype.dtype
    if ours.numel() == 0:
        return
    err = (ours.double() - expected).abs()
    eps = torch.finfo(ours.dtype).eps
    if ours.dtype == torch.float64:
        u = eps / 2
        bound = n * u / (1 - n * u) * magnitude + u * expected.abs()
        worst = (err - bound).max().item()
        assert worst <= 0, f"float64 error exceeds the forward-error bound by {worst:.3e}"
        return
    baseline = (torch_in_dtype.double() - expected).abs().max().item()
    allowed = 2 * baseline + eps / 2 * expected.abs().max().item()
    assert err.max().item() <= allowed, (
        f"{ours.dtype}: max error {err.max().item():.3e} > 2 x PyTorch's {baseline:.3e} + one ulp at scale"
    )
