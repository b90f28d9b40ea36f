"""Fused block noise against fairseq's algorithm, a plain training step, and weight.clone()."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from benchmarks.timing import Case, compare
from quantnoise_kernels import ops, quant_noise, reference

P, BLOCK = 0.1, 8


def _fwd_bwd(fn, w: torch.Tensor, g: torch.Tensor):
    def run():
        w.grad = None
        fn(w).backward(g)

    return run


def forward_backward(shape: tuple[int, int], quick: bool) -> list[dict[str, Any]]:
    """Target: fused >= 5x faster than fairseq's bernoulli/repeat_interleave/masked_fill/scale."""
    w = torch.randn(shape, requires_grad=True)
    g = torch.randn(shape)
    cases = {
        "block_noise (ours, fused)": Case(
            _fwd_bwd(lambda v: ops.block_noise(v, P, BLOCK, ops.draw_seed()), w, g), "ours"
        ),
        "fairseq-style reference": Case(_fwd_bwd(lambda v: reference.block_noise_fairseq(v, P, BLOCK), w, g)),
    }
    group = f"block_noise forward+backward {shape[0]}x{shape[1]} fp32, p={P}, block {BLOCK}"
    params = {"rows": shape[0], "cols": shape[1]}
    return compare(
        group,
        cases,
        params=params,
        figure="block_noise",
        targets={"fairseq-style reference": 5.0},
        rounds=3 if quick else 7,
    )


def forward_vs_clone(quick: bool) -> list[dict[str, Any]]:
    """Target: the op's forward runs at >= 60% of the speed of weight.clone()."""
    n = 1024 if quick else 4096
    w = torch.randn(n, n)
    seed = ops.draw_seed()
    cases = {
        "block_noise forward (ours)": Case(lambda: ops.block_noise(w, P, BLOCK, seed), "ours"),
        "weight.clone()": Case(w.clone, "yardstick"),
    }
    group = f"block_noise forward vs weight.clone() {n}x{n} fp32"
    return compare(group, cases, targets={"weight.clone()": 0.6}, rounds=3 if quick else 7)


def sgd_step(model: torch.nn.Module, batch: int = 32):
    """One SGD training step of ``model`` (a square layer) on a fixed random batch, MSE loss."""
    n = next(model.parameters()).shape[-1]
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x, target = torch.randn(batch, n), torch.randn(batch, n)

    def step():
        opt.zero_grad(set_to_none=True)
        F.mse_loss(model(x), target).backward()
        opt.step()

    return step


def linear_training_step(quick: bool) -> list[dict[str, Any]]:
    """Target: a noisy Linear(4096, 4096) step (batch 32) <= 1.25x the plain step (fairseq: 3.8x)."""
    n = 1024 if quick else 4096

    cases = {
        "quant_noise Linear step (ours)": Case(sgd_step(quant_noise(torch.nn.Linear(n, n), P, BLOCK)), "ours"),
        "plain Linear step": Case(sgd_step(torch.nn.Linear(n, n)), "yardstick"),
    }
    group = f"Linear({n}, {n}) training step, batch 32, p={P}"
    return compare(group, cases, targets={"plain Linear step": 0.8}, rounds=3 if quick else 7)


def embedding_training_forward(quick: bool) -> list[dict[str, Any]]:
    """Target: a quant_noise Embedding(50000, 1024) training forward on 4096 tokens >= 5x the whole-table path.

    Ours noises the looked-up rows only; the baseline is the previous forward, written out: noise the whole table
    with the same op, then look up. Same seed rule, same result (python_tests/test_quant_noise_kinds.py)."""
    rows, dim, tokens = (5000, 256, 512) if quick else (50000, 1024, 4096)
    emb = quant_noise(torch.nn.Embedding(rows, dim), P, BLOCK)
    idx = torch.randint(0, rows, (tokens,))

    def whole_table():
        return F.embedding(idx, ops.block_noise(emb.weight, P, BLOCK, ops.draw_seed()))

    cases = {
        "quant_noise Embedding forward, looked-up rows (ours)": Case(lambda: emb(idx), "ours"),
        "whole-table noise + lookup (before)": Case(whole_table),
    }
    group = f"Embedding({rows}, {dim}) training forward, {tokens} tokens, p={P}, block {BLOCK}"
    return compare(group, cases, targets={"whole-table noise + lookup (before)": 5.0}, rounds=3 if quick else 7)


def rows(quick: bool = False) -> list[dict[str, Any]]:
    shapes = [(256, 1024)] if quick else [(4096, 4096), (1024, 4096)]
    out = [row for shape in shapes for row in forward_backward(shape, quick)]
    return out + forward_vs_clone(quick) + linear_training_step(quick) + embedding_training_forward(quick)
