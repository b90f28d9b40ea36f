"""``pq_linear`` against dense ``F.linear`` on the decoded weight (fp32 and bf16), as a model runs it.

Shape: 4096x4096, block 8, K 256, fp32 activations, codes packed and centroids fp16 as ``PQLinear``
holds them. Batch 1, 4, 16, 64, 256, 1024, each on ONE layer (its dense weight partly cached) and
rotating over 8 DISTINCT layers (8 x 64 MiB of fp32 weights, more than any L3: what a model
streams; the 8 x 2 MiB of codes can stay in L3). Every group is timed side by side in interleaved
rounds (``benchmarks.timing.compare``). The narrower CPU paths (``QUANTNOISE_CPU_ISA``) run at batch
1, 16 and 256 on the 8 layers; fairseq's decode-every-forward and AQLM's CPU kernel (optional extra)
run at batch 1 and 16 on one layer. Targets (issue 11, 8 layers): AVX2 batch 1 / 16 / 256 >= 5x /
3x / 1.5x dense fp32; AVX-512 >= 10x / 4x / 2x dense fp32 and batch 16 / 256 >= 1.5x / 0.9x dense
bf16; portable path batch 1 >= 2x dense fp32.

    python -m benchmarks.run -k bench_pq_linear
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F

from benchmarks.machine import isa_path
from benchmarks.timing import Case, compare, make_row
from quantnoise_kernels import ops, reference

BS, K = 8, 256
BATCHES = [1, 4, 16, 64, 256, 1024]
N_LAYERS = 8
FIGURE = "pq_linear_speedup"
ISAS = ["portable", "avx2", "avx512"]  # narrowest first, as QUANTNOISE_CPU_ISA spells them

# Targets of issue 11 on the 8 rotating layers: {isa: {baseline name: {batch: ratio}}}.
DENSE_FP32, DENSE_BF16 = "dense fp32 F.linear", "dense bf16 F.linear"
TARGETS = {
    "avx2": {DENSE_FP32: {1: 5.0, 16: 3.0, 256: 1.5}},
    "avx512": {DENSE_FP32: {1: 10.0, 16: 4.0, 256: 2.0}, DENSE_BF16: {16: 1.5, 256: 0.9}},
    "portable": {DENSE_FP32: {1: 2.0}},
}


@dataclass
class Layer:
    """One compressed layer and its decoded dense copies."""

    packed: torch.Tensor  # [in/bs, out] uint8, the layout PQLinear stores
    codes: torch.Tensor  # [out, in/bs] interchange
    centroids: torch.Tensor  # [K, bs] float32
    c16: torch.Tensor  # fp16 centroids, what PQLinear holds
    bias: torch.Tensor
    w32: torch.Tensor
    w16: torch.Tensor
    b16: torch.Tensor


def make_layers(n: int, out: int, inf: int, seed: int = 0) -> list[Layer]:
    """``n`` distinct random PQ layers with their dense fp32 and bf16 decodings."""
    g = torch.Generator().manual_seed(seed)
    layers = []
    for _ in range(n):
        codes = torch.randint(0, K, (out, inf // BS), dtype=torch.uint8, generator=g)
        c = torch.randn(K, BS, generator=g) / BS**0.5
        c16 = c.half()
        w32 = ops.pq_decode(codes, c16, (out, inf), out_dtype=torch.float32)
        bias = torch.randn(out, generator=g)
        layers.append(Layer(ops.pq_pack_codes(codes), codes, c, c16, bias, w32, w32.bfloat16(), bias.bfloat16()))
    return layers


def rotating(layers: list[Layer], fn: Callable[[Layer], Any]) -> Callable[[], Any]:
    """A call that runs ``fn`` on the next layer each time (round robin)."""
    cycle: Iterator[Layer] = itertools.cycle(layers)
    return lambda: fn(next(cycle))


@contextmanager
def cpu_isa(isa: str | None) -> Iterator[None]:
    """Run with ``QUANTNOISE_CPU_ISA=isa`` (the kernels read it at every call); None: unchanged."""
    old = os.environ.get("QUANTNOISE_CPU_ISA")
    if isa is not None:
        os.environ["QUANTNOISE_CPU_ISA"] = isa
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("QUANTNOISE_CPU_ISA", None)
        else:
            os.environ["QUANTNOISE_CPU_ISA"] = old


def dense_vs_pq(layers: list[Layer], batch: int, *, isa: str | None = None, bf16: bool = True, rounds: int = 7):
    """One group: ``pq_linear`` against dense fp32 (and bf16) ``F.linear`` on ``layers`` in rotation."""
    inf = layers[0].w32.shape[1]
    x = torch.randn(batch, inf, generator=torch.Generator().manual_seed(batch))
    xb = x.bfloat16()
    with cpu_isa(isa):
        path = isa_path()
        cases = {
            f"pq_linear (ours, {path} path)": Case(
                rotating(layers, lambda ly: ops.pq_linear(x, ly.packed, ly.c16, ly.bias, codes_transposed=True)), "ours"
            ),
            DENSE_FP32: Case(rotating(layers, lambda ly: F.linear(x, ly.w32, ly.bias))),
        }
        if bf16:
            cases[DENSE_BF16] = Case(rotating(layers, lambda ly: F.linear(xb, ly.w16, ly.b16)))
        n = len(layers)
        where = "1 layer" if n == 1 else f"{n} layers in rotation"
        out = layers[0].w32.shape[0]
        targets = {}
        if n == N_LAYERS:
            targets = {name: by_batch[batch] for name, by_batch in TARGETS[path].items() if batch in by_batch}
        with torch.no_grad():
            return compare(
                f"pq_linear {out}x{inf} bs {BS} K {K} fp32 x, {path} path, {where}, batch {batch}",
                cases,
                params={"batch": batch, "layers": n, "isa": path},
                figure=FIGURE,
                x="batch",
                targets=targets,
                rounds=rounds,
            )


def peers(layer: Layer, batch: int, rounds: int) -> list[dict]:
    """fairseq's PQLinear forward (decode the weight every call) and AQLM's CPU kernel, one layer."""
    out, inf = layer.w32.shape
    x = torch.randn(batch, inf)
    assignments = layer.codes.t().reshape(-1).long()  # fairseq's order: block index first, then row
    cases = {
        "pq_linear (ours)": Case(
            lambda: ops.pq_linear(x, layer.packed, layer.c16, layer.bias, codes_transposed=True), "ours"
        ),
        "fairseq PQLinear (decode every forward)": Case(
            lambda: reference.pq_linear_fairseq(x, layer.centroids, assignments, layer.bias, out)
        ),
    }
    group = f"pq_linear {out}x{inf} against peers, 1 layer, batch {batch}"
    aqlm = _aqlm_layer(layer)
    if isinstance(aqlm, str):
        extra = [make_row(group, "AQLM QuantizedLinear 1x8 (numba)", "baseline", note=aqlm)]
    else:
        cases["AQLM QuantizedLinear 1x8 (numba)"] = Case(lambda: aqlm(x), note=_aqlm_error(aqlm, layer, x))
        extra = []
    with torch.no_grad():
        return compare(group, cases, params={"batch": batch, "layers": 1}, rounds=rounds) + extra


def _aqlm_layer(layer: Layer):
    """AQLM's ``QuantizedLinear`` in format "1x8" (one codebook of 256 groups of 8 inputs) holding
    our codes and centroids (scales 1): the same product. Returns a note if AQLM is not installed."""
    try:
        import aqlm
        import numba
    except ImportError:
        return "aqlm/numba not installed (make bench-extras)"
    numba.set_num_threads(min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))
    out, inf = layer.w32.shape
    q = aqlm.QuantizedLinear(inf, out, in_group_size=BS, out_group_size=1, num_codebooks=1, nbits_per_codebook=8)
    with torch.no_grad():
        q.codes.copy_(layer.codes.view(torch.int8).reshape(out, inf // BS, 1))  # int8 storage of uint8 codes
        q.codebooks.copy_(layer.c16.float().reshape(1, K, 1, BS))
        q.scales.fill_(1.0)
        q.bias.copy_(layer.bias)
    return q


def _aqlm_error(q, layer: Layer, x: torch.Tensor) -> str:
    """AQLM's numba kernel adds into ``output[i]`` inside a prange over input groups (a race across
    threads): its error is recorded, not asserted. The first call also compiles it (seconds)."""
    with torch.no_grad():
        err = (q(x) - F.linear(x, layer.w32, layer.bias)).abs().max().item()
    return f"max abs error {err:.3g} (|y| ~ {F.linear(x, layer.w32, layer.bias).abs().max().item():.3g})"


def narrower_paths() -> list[str]:
    """The CPU paths below the widest this CPU runs (each can be forced with QUANTNOISE_CPU_ISA)."""
    best = isa_path()
    return ISAS[: ISAS.index(best)]


def rows(quick: bool = False) -> list[dict]:
    """Every group of this module (``quick``: 512x512, 2 layers, 3 batches, 2 rounds)."""
    size, n_layers, batches, rounds = (512, 2, [1, 16, 256], 2) if quick else (4096, N_LAYERS, BATCHES, 7)
    layers = make_layers(n_layers, size, size)
    out: list[dict] = []
    for subset in (layers[:1], layers):
        for batch in batches:
            out += dense_vs_pq(subset, batch, rounds=rounds)
    for isa in narrower_paths():
        for batch in (1, 16, 256):
            out += dense_vs_pq(layers, batch, isa=isa, bf16=False, rounds=rounds)
    for batch in (1, 16):
        out += peers(layers[0], batch, rounds)
    return out
