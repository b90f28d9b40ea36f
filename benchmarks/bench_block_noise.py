"""Fused block noise against fairseq's algorithm, a plain training step, and weight.clone()."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from quantnoise_kernels import ops, quant_noise, reference

SHAPES = [(4096, 4096), (1024, 4096)]
P, BLOCK = 0.1, 8


def _fwd_bwd(fn, w, g):
    def run():
        w.grad = None
        fn(w).backward(g)

    return run


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("impl", ["fused", "fairseq"])
def test_noise_forward_backward(benchmark, shape, impl):
    """Target: fused >= 5x faster than fairseq's bernoulli/repeat_interleave/masked_fill/scale."""
    w = torch.randn(shape, requires_grad=True)
    g = torch.randn(shape)
    if impl == "fused":
        fn = lambda x: ops.block_noise(x, P, BLOCK, ops.draw_seed())  # noqa: E731
    else:
        fn = lambda x: reference.block_noise_fairseq(x, P, BLOCK)  # noqa: E731
    benchmark.group = f"block_noise forward+backward {shape[0]}x{shape[1]} fp32"
    benchmark.extra_info["role"] = "ours" if impl == "fused" else "baseline"
    benchmark(_fwd_bwd(fn, w, g))


@pytest.mark.parametrize("impl", ["fused", "clone"])
def test_noise_forward_vs_clone(benchmark, impl):
    """Target: the op's forward runs at >= 60% of the speed of weight.clone()."""
    w = torch.randn(4096, 4096)
    benchmark.group = "block_noise forward vs weight.clone() 4096x4096 fp32"
    benchmark.extra_info["role"] = "ours" if impl == "fused" else "yardstick"
    if impl == "fused":
        seed = ops.draw_seed()
        benchmark(lambda: ops.block_noise(w, P, BLOCK, seed))
    else:
        benchmark(w.clone)


@pytest.mark.parametrize("impl", ["noisy", "plain"])
def test_linear_training_step(benchmark, impl):
    """Target: a noisy Linear(4096, 4096) step (batch 32) <= 1.25x the plain step (fairseq: 3.8x)."""
    layer = torch.nn.Linear(4096, 4096)
    if impl == "noisy":
        quant_noise(layer, P, BLOCK)
    opt = torch.optim.SGD(layer.parameters(), lr=1e-3)
    x, target = torch.randn(32, 4096), torch.randn(32, 4096)

    def step():
        opt.zero_grad(set_to_none=True)
        F.mse_loss(layer(x), target).backward()
        opt.step()

    benchmark.group = "Linear(4096, 4096) training step, batch 32"
    benchmark.extra_info["role"] = "ours" if impl == "noisy" else "yardstick"
    benchmark(step)
