"""Every CUDA op against the CPU op on the same inputs: on a real GPU (``cuda``, skipped without
one) and through the emulated CUDA kernels (``cuda-emu``). Add a case for every new op."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from devices import selected_devices
from emu import cuda_emulation, ops_with_cuda_kernels

from quantnoise_kernels import ops


def _block_noise_cases() -> list[tuple[str, Callable[[str], object]]]:
    cases = []
    for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        w = torch.randn(129, 72, dtype=dtype)
        seed = int(torch.randint(0, 2**62, ()))
        cases.append((f"{dtype} host seed", lambda d, w=w, s=seed: ops.block_noise(w.to(d), 0.3, 8, s, offset=3)))
        seed_t = torch.tensor(seed)
        cases.append(
            (f"{dtype} device seed", lambda d, w=w, s=seed_t: ops.block_noise(w.to(d), 0.3, 8, s.to(d), offset=3))
        )
    w = torch.randn(40, 16, 3, 3)
    cases.append(("conv 3x3, no rescale", lambda d: ops.block_noise(w.to(d), 0.5, 9, 77, rescale=False)))
    return cases


def _noisy_linear_cases() -> list[tuple[str, Callable[[str], object]]]:
    x, w, b = torch.randn(5, 7, 64), torch.randn(48, 64), torch.randn(48)
    return [("forward", lambda d: ops.noisy_linear(x.to(d), w.to(d), b.to(d), 0.25, 8, 41, offset=1))]


def _noisy_linear_backward_input_cases() -> list[tuple[str, Callable[[str], object]]]:
    g, w = torch.randn(5, 7, 48), torch.randn(48, 64)
    op = torch.ops.quantnoise.noisy_linear_backward_input
    return [("grad input", lambda d: op(g.to(d), w.to(d), torch.tensor(41), 0.25, 8, 1, True))]


def _kmeans_assign_cases() -> list[tuple[str, Callable[[str], object]]]:
    cases = []
    for b, n, k, d in ((1, 300, 16, 8), (3, 257, 100, 5), (2, 40, 700, 33)):
        x, c = torch.randn(b, n, d), torch.randn(b, k, d)
        cases.append((f"B={b} N={n} K={k} D={d}", lambda dev, x=x, c=c: ops.kmeans_assign(x.to(dev), c.to(dev))))
    return cases


def _kmeans_update_cases() -> list[tuple[str, Callable[[str], object]]]:
    x, codes = torch.randn(2, 500, 8), torch.randint(0, 20, (2, 500))
    return [("B=2 N=500 K=20 D=8", lambda dev: ops.kmeans_update(x.to(dev), codes.to(dev), 20))]


def _pq_cases(op: str):
    def cases() -> list[tuple[str, Callable[[str], object]]]:
        out_f, in_f, bs, k = 48, 64, 8, 256
        codes = torch.randint(0, k, (out_f, in_f // bs), dtype=torch.uint8)
        c = torch.randn(k, bs)
        x, bias, idx = torch.randn(3, 5, in_f), torch.randn(out_f), torch.randint(0, out_f, (4, 7))
        if op == "pq_decode":
            return [("uint8 codes", lambda d: ops.pq_decode(codes.to(d), c.to(d), (out_f, in_f)))]
        if op == "pq_embedding":
            return [("uint8 codes", lambda d: ops.pq_embedding(idx.to(d), codes.to(d), c.to(d)))]
        return [
            (f"path={p}", lambda d, p=p: ops.pq_linear(x.to(d), codes.to(d), c.to(d), bias.to(d), path=p))
            for p in ("auto", "lut")
        ]

    return cases


# op name -> cases; each case maps a device to the op's output(s) on inputs built once on the CPU.
CASES: dict[str, Callable[[], list[tuple[str, Callable[[str], object]]]]] = {
    "block_noise": _block_noise_cases,
    "noisy_linear": _noisy_linear_cases,
    "noisy_linear_backward_input": _noisy_linear_backward_input_cases,
    "kmeans_assign": _kmeans_assign_cases,
    "kmeans_update": _kmeans_update_cases,
    "pq_decode": _pq_cases("pq_decode"),
    "pq_embedding": _pq_cases("pq_embedding"),
    "pq_linear": _pq_cases("pq_linear"),
}
# How close each op must be: block noise is bit-identical; reductions may differ in summation order.
TOLERANCE: dict[str, dict] = {
    "block_noise": {"rtol": 0, "atol": 0},
    "kmeans_assign": {"rtol": 1e-5, "atol": 1e-5},  # codes exact (ints); distances up to rounding
    "kmeans_update": {"rtol": 1e-5, "atol": 1e-5},  # float atomics sum in arrival order
    "pq_decode": {"rtol": 0, "atol": 0},
    "pq_embedding": {"rtol": 0, "atol": 0},
    "pq_linear": {"rtol": 1e-4, "atol": 1e-4},  # summation order differs between kernels
}


def test_every_cuda_op_has_a_case():
    assert not sorted(set(ops_with_cuda_kernels()) - set(CASES)), "add the op to CASES"


def _to_cpu(out):
    if isinstance(out, (tuple, list)):
        return type(out)(_to_cpu(o) for o in out)
    return out.cpu()


TARGETS = [pytest.param(d, marks=pytest.mark.cuda) if d == "cuda" else d for d in selected_devices() if d != "cpu"]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("op", sorted(CASES))
def test_cuda_op_matches_cpu_op(target, op):
    for name, run in CASES[op]():
        expected = run("cpu")
        if target == "cuda":
            assert torch._C._dispatch_has_kernel_for_dispatch_key(f"quantnoise::{op}", "CUDA")
            got = _to_cpu(run("cuda"))
        else:
            with cuda_emulation():
                got = run("cpu")
        torch.testing.assert_close(got, expected, **TOLERANCE.get(op, {}), msg=lambda m, n=name: f"{op} {n}: {m}")
