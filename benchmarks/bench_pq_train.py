"""A PQ layer's finetuning step (forward + backward to x, the centroids and the bias) from the codes,
against the same step through the dense decode (``reference.pq_linear``: decode W, ``F.linear``,
autograd: a dense [out, in] weight and weight gradient every step, as fairseq's ``PQLinear``).

``PQLinear(4096, 4096)``, block 8, K 256, batch 32 (issue 11 target: >= 2x faster, peak extra
memory < 8 MiB), one layer and 8 layers in rotation; ``PQConv2d`` and ``PQEmbedding`` steps against
their dense-decode counterparts. Peak extra memory: the highest running sum of the bytes torch's
CPU allocator handed out minus those it took back during one step, from the profiler's allocation
events (``peak_extra_bytes``); it counts the step's outputs and gradients too.

    python -m benchmarks.run -k bench_pq_train
"""

from __future__ import annotations

import itertools
from typing import Callable

import torch
import torch.nn.functional as F

from benchmarks.timing import Case, compare
from quantnoise_kernels import reference
from quantnoise_kernels.pq import PQConv2d, PQEmbedding, PQLinear

BS, K = 8, 256
MIB = 1 << 20


def peak_extra_bytes(fn: Callable[[], object]) -> int:
    """Peak of (bytes allocated - bytes freed) by torch's CPU allocator while ``fn`` runs.

    Read from the profiler's memory events (one per allocation and per free, with its size), summed
    in time order; what ``fn`` returns is freed before the profile ends."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
    running = peak = 0
    for _, nbytes in events:
        running += nbytes
        peak = max(peak, running)
    return peak


def _pq_linear(out: int, inf: int, seed: int) -> PQLinear:
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, K, (out, inf // BS), dtype=torch.uint8, generator=g)
    centroids = (torch.randn(K, BS, generator=g) / BS**0.5).half()
    return PQLinear(centroids, codes, torch.randn(out, generator=g), inf, out)


def _dense_decode_step(layer: PQLinear, x: torch.Tensor, g: torch.Tensor) -> None:
    """The same step through the decoded weight (fp32 copy of the centroids, as autocast would)."""
    c = layer.centroids.detach().float().requires_grad_()
    b = layer.bias.detach().requires_grad_()
    xx = x.detach().requires_grad_()
    reference.pq_linear(xx, layer.interchange_codes(), c, b).backward(g)


def _ours_step(layer: torch.nn.Module, x: torch.Tensor, g: torch.Tensor) -> None:
    layer.zero_grad(set_to_none=True)
    xx = x.detach().requires_grad_()
    layer(xx).backward(g)


def linear_step(n_layers: int, batch: int, size: int, rounds: int) -> list[dict]:
    layers = [_pq_linear(size, size, seed) for seed in range(n_layers)]
    x, g = torch.randn(batch, size), torch.randn(batch, size)
    ours, dense = itertools.cycle(layers), itertools.cycle(layers)
    mem_ours = peak_extra_bytes(lambda: _ours_step(layers[0], x, g))
    mem_dense = peak_extra_bytes(lambda: _dense_decode_step(layers[0], x, g))
    where = "1 layer" if n_layers == 1 else f"{n_layers} layers in rotation"
    cases = {
        "PQLinear step, backward from the codes (ours)": Case(
            lambda: _ours_step(next(ours), x, g), "ours", note=f"peak extra memory {mem_ours / MIB:.2f} MiB"
        ),
        "dense-decode step (decode + F.linear + autograd)": Case(
            lambda: _dense_decode_step(next(dense), x, g), note=f"peak extra memory {mem_dense / MIB:.1f} MiB"
        ),
    }
    target = {"dense-decode step (decode + F.linear + autograd)": 2.0} if size == 4096 and batch == 32 else {}
    return compare(
        f"PQLinear({size}, {size}) finetuning step (fwd + bwd to x, centroids, bias), batch {batch}, {where}",
        cases,
        params={"batch": batch, "layers": n_layers, "peak_extra_bytes_ours": mem_ours, "peak_extra_bytes": mem_dense},
        targets=target,
        rounds=rounds,
    )


def conv_step(rounds: int, quick: bool) -> list[dict]:
    """PQConv2d(256, 256, 3x3), block 9, on 8 x 256 x 14 x 14 (quick: 32 channels)."""
    ch = 32 if quick else 256
    conv = torch.nn.Conv2d(ch, ch, 3, padding=1)
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, K, (ch, ch), dtype=torch.uint8, generator=g)
    pq = PQConv2d(torch.randn(K, 9, generator=g).half(), codes, conv.bias, ch, ch, 3, padding=1)
    x, grad = torch.randn(8, ch, 14, 14), torch.randn(8, ch, 14, 14)

    def dense() -> None:
        c = pq.centroids.detach().float().requires_grad_()
        w = reference.pq_decode(codes, c, (ch, ch, 3, 3))
        F.conv2d(x.requires_grad_(), w, pq.bias, padding=1).backward(grad)

    mem = peak_extra_bytes(lambda: _ours_step(pq, x, grad))
    cases = {
        "PQConv2d step (ours)": Case(lambda: _ours_step(pq, x, grad), "ours", note=f"peak extra {mem / MIB:.2f} MiB"),
        "dense-decode step (decode + F.conv2d + autograd)": Case(dense),
    }
    return compare(f"PQConv2d({ch}, {ch}, 3x3) bs 9 step, 8 x {ch} x 14 x 14", cases, rounds=rounds)


def embedding_step(rounds: int, quick: bool) -> list[dict]:
    """PQEmbedding(50000, 1024), block 8, 4096 lookups: forward + centroid gradient."""
    n, dim = (5000, 128) if quick else (50000, 1024)
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, K, (n, dim // BS), dtype=torch.uint8, generator=g)
    emb = PQEmbedding(torch.randn(K, BS, generator=g).half(), codes, n, dim)
    idx = torch.randint(0, n, (32, 128), generator=g)
    grad = torch.randn(32, 128, dim)

    def ours() -> None:
        emb.zero_grad(set_to_none=True)
        emb(idx).backward(grad)

    def dense() -> None:
        c = emb.centroids.detach().float().requires_grad_()
        reference.pq_embedding(idx, codes, c).backward(grad)

    cases = {
        "PQEmbedding step (ours)": Case(ours, "ours"),
        "dense-decode step (decode table + F.embedding)": Case(dense),
    }
    return compare(f"PQEmbedding({n}, {dim}) bs 8 step, 4096 lookups", cases, rounds=rounds)


def rows(quick: bool = False) -> list[dict]:
    size, rounds = (512, 2) if quick else (4096, 7)
    out: list[dict] = []
    for n_layers in (1, 8):
        out += linear_step(n_layers, 32, size, rounds)
    out += conv_step(rounds, quick)
    out += embedding_step(rounds, quick)
    return out
