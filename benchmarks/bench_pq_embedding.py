"""``pq_embedding`` (decodes only the rows looked up) against dense ``F.embedding`` on the decoded fp32
table: 50000 x 1024, block 8, K 256, fp16 centroids (as ``PQEmbedding`` holds them), fp32 output,
4096 lookups (32 x 128 tokens); one table, and 8 distinct tables in rotation (8 x 200 MiB dense).
Target (issue 11): >= 1.0x dense ``F.embedding``.

    python -m benchmarks.run -k bench_pq_embedding
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F

from benchmarks.timing import Case, compare
from quantnoise_kernels import ops

BS, K = 8, 256
N_TABLES = 8


def rows(quick: bool = False) -> list[dict]:
    n, dim, n_tables, rounds = (5000, 128, 2, 2) if quick else (50000, 1024, N_TABLES, 7)
    g = torch.Generator().manual_seed(0)
    tables = []
    for _ in range(n_tables):
        codes = torch.randint(0, K, (n, dim // BS), dtype=torch.uint8, generator=g)
        c16 = torch.randn(K, BS, generator=g).half()
        tables.append((codes, c16, ops.pq_decode(codes, c16, (n, dim), out_dtype=torch.float32)))
    idx = torch.randint(0, n, (32, 128), generator=g)
    out = []
    for subset in (tables[:1], tables):
        ours, dense = itertools.cycle(subset), itertools.cycle(subset)

        def pq(it=ours):
            codes, c16, _ = next(it)
            return ops.pq_embedding(idx, codes, c16, out_dtype=torch.float32)

        def emb(it=dense):
            return F.embedding(idx, next(it)[2])

        where = "1 table" if len(subset) == 1 else f"{len(subset)} tables in rotation"
        cases = {"pq_embedding (ours)": Case(pq, "ours"), "dense fp32 F.embedding": Case(emb)}
        with torch.no_grad():
            out += compare(
                f"pq_embedding {n}x{dim} bs {BS} K {K}, 4096 lookups, {where}",
                cases,
                params={"layers": len(subset)},
                targets={"dense fp32 F.embedding": 1.0} if not quick else {},
                rounds=rounds,
            )
    return out
