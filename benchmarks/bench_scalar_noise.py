"""Scalar (int8) Quant-Noise: the fused ``fake_quant`` kernel against fairseq's algorithm and torchao's
fake quantizer, and a noisy ``Linear(4096, 4096)`` training step against the plain one (issue 8).

Observer time is excluded from all three noise implementations: each computes its quantization
parameters once, before timing (fairseq refreshes them every ``update_step`` forwards).
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from benchmarks.bench_block_noise import sgd_step
from benchmarks.timing import Case, compare
from quantnoise_kernels import ops, reference
from quantnoise_kernels import scalar as sq

P = 0.1


def _fwd_bwd(fn, w: torch.Tensor, g: torch.Tensor):
    def run():
        w.grad = None
        fn(w).backward(g)

    return run


def _torchao_fake_quantizer():
    logging.getLogger("torchao").setLevel(logging.ERROR)
    try:
        from torchao.quantization.qat import IntxFakeQuantizeConfig, IntxFakeQuantizer
    except ImportError:
        return None
    config = IntxFakeQuantizeConfig(torch.int8, "per_channel", is_symmetric=False, is_dynamic=False)
    return IntxFakeQuantizer(config)


def noise_forward_backward(n: int, rounds: int) -> list[dict[str, Any]]:
    """Targets: ours >= 5x the fairseq-style reference and >= 2x torchao's fake quantizer."""
    w = torch.randn(n, n, requires_grad=True)
    g = torch.randn(n, n)
    qp = sq.observe(w, sq.QuantGrid(8, "channel"))
    qp_tensor = sq.observe(w, sq.QuantGrid(8, "tensor"))
    cases = {
        "fake_quant block_noise (ours, fused, per-channel)": Case(
            _fwd_bwd(lambda v: sq.fake_quant_noise(v, P, qp), w, g), "ours"
        ),
        "fairseq-style IntLinear noise (per-tensor)": Case(
            _fwd_bwd(lambda v: reference.emulate_int_fairseq(v, P, qp_tensor.scale, qp_tensor.zero_point, 8), w, g)
        ),
    }
    targets = {"fairseq-style IntLinear noise (per-tensor)": 5.0}
    fq = _torchao_fake_quantizer()
    if fq is not None:
        with torch.no_grad():
            fq(w)  # computes and caches its parameters (is_dynamic=False)
        cases["torchao IntxFakeQuantizer (whole weight, per-channel)"] = Case(_fwd_bwd(fq, w, g))
        targets["torchao IntxFakeQuantizer (whole weight, per-channel)"] = 2.0
    group = f"int8 fake-quant noise forward+backward {n}x{n} fp32, p={P}"
    return compare(group, cases, params={"rows": n, "cols": n}, targets=targets, figure="scalar_noise", rounds=rounds)


def linear_training_step(n: int, rounds: int) -> list[dict[str, Any]]:
    """Target: an IntLinear(4096, 4096) step (int8 noise, batch 32) <= 1.3x the plain step."""

    model = torch.nn.Sequential(torch.nn.Linear(n, n))
    sq.quantize_model_(model, p=P, bits=8, update_step=1000, method="channel", quantize_activations=False)
    cases = {
        "IntLinear step, int8 noise (ours)": Case(sgd_step(model), "ours"),
        "plain Linear step": Case(sgd_step(torch.nn.Linear(n, n)), "yardstick"),
    }
    group = f"Linear({n}, {n}) training step with int8 Quant-Noise, batch 32, p={P}"
    return compare(group, cases, targets={"plain Linear step": 1 / 1.3}, rounds=rounds)


def forward_vs_clone(n: int, rounds: int) -> list[dict[str, Any]]:
    w = torch.randn(n, n)
    qp = sq.observe(w, sq.QuantGrid(8, "channel"))
    seed = ops.draw_seed()
    cases = {
        "fake_quant forward (ours)": Case(lambda: sq.fake_quant_noise(w, P, qp, seed=seed), "ours"),
        "weight.clone()": Case(w.clone, "yardstick"),
    }
    return compare(f"fake_quant forward vs weight.clone() {n}x{n} fp32", cases, rounds=rounds)


def rows(quick: bool = False) -> list[dict[str, Any]]:
    n, rounds = (512, 3) if quick else (4096, 7)
    return noise_forward_backward(n, rounds) + linear_training_step(n, rounds) + forward_vs_clone(n, rounds)
