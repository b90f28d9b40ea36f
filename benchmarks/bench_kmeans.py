"""k-means: the assignment pass, k-means++ initialisation, 20-iteration k-means, and 64 independent
small problems in one call, against faiss-cpu (optional extra), plain torch and fairseq's EM distance.

Every faiss run uses torch's thread count. faiss is a benchmark extra (``make bench-extras``);
without it its rows say so.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import torch

import quantnoise_kernels as qn
from benchmarks.timing import Case, compare, make_row
from quantnoise_kernels import ops, reference

D, K = 8, 256
NO_FAISS = "faiss-cpu not installed (`make bench-extras`)"


def _data(n: int, batch: int = 1, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, n, D, generator=g).squeeze(0)


def _centroids(x: torch.Tensor) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return x[torch.randperm(x.shape[0], generator=g)[:K]].clone()


def _faiss():
    if importlib.util.find_spec("faiss") is None:
        return None
    import faiss

    faiss.omp_set_num_threads(torch.get_num_threads())
    return faiss


def _faiss_kmeans(faiss, x: torch.Tensor, n_iter: int):
    xn = x.numpy()

    def run():
        km = faiss.Kmeans(
            D, K, niter=n_iter, seed=0, max_points_per_centroid=xn.shape[0], min_points_per_centroid=1, verbose=False
        )
        km.train(xn)

    return run


def assignment(n: int, label: str, quick: bool) -> list[dict[str, Any]]:
    """One assignment pass (E-step). Target: >= 2x faiss IndexFlatL2 (k=1 search)."""
    x = _data(n)
    c = _centroids(x)
    group = f"kmeans assignment pass N={n} D={D} K={K} fp32 ({label})"
    cases = {"kmeans_assign (ours)": Case(lambda: ops.kmeans_assign(x, c), "ours")}
    faiss = _faiss()
    if faiss is not None:
        index = faiss.IndexFlatL2(D)
        index.add(c.numpy())
        xn = x.numpy()
        cases["faiss IndexFlatL2.search"] = Case(lambda: index.search(xn, 1))
    if n <= 131072:  # ~0.1-0.3 s a call
        cases["torch addmm + argmin"] = Case(lambda: reference.kmeans_assign_addmm(x, c))
    rows = compare(
        group,
        cases,
        params={"N": n, "D": D, "K": K},
        figure="kmeans_assignment",
        targets={"faiss IndexFlatL2.search": 2.0},
        rounds=3 if quick else 7,
    )
    if faiss is None:
        rows.append(make_row(group, "faiss IndexFlatL2.search", "baseline", note=NO_FAISS, target=2.0))
    return rows


def assignment_vs_fairseq(quick: bool) -> list[dict[str, Any]]:
    """fairseq's EM distance broadcasts a (K, D, N) temporary: both on 1/16 of the 131072 vectors."""
    n = 8192
    x = _data(n)
    c = _centroids(x)
    x_t = x.t().contiguous()
    cases = {
        "kmeans_assign (ours)": Case(lambda: ops.kmeans_assign(x, c), "ours"),
        "fairseq EM distance + argmin": Case(lambda: reference.kmeans_distances_fairseq(x_t, c).argmin(0)),
    }
    group = f"kmeans assignment pass N={n} D={D} K={K} fp32 (fairseq's broadcast)"
    return compare(group, cases, params={"N": n}, targets={"fairseq EM distance + argmin": 100.0}, rounds=3)


def kmeanspp(n: int, quick: bool) -> list[dict[str, Any]]:
    """k-means++ initialisation alone (n_iter=0). Target: < 100 ms for N=131072, K=256."""
    x = _data(n)
    group = f"k-means++ initialisation N={n} D={D} K={K} fp32"
    cases = {
        "kmeans(init='kmeans++', n_iter=0) (ours)": Case(
            lambda: qn.kmeans(x, K, n_iter=0, init="kmeans++", seed=0), "ours"
        )
    }
    rows = compare(group, cases, params={"N": n}, rounds=2 if quick else 3, min_round_s=0.0)
    rows[0]["note"] = "target < 100 ms (absolute)"
    return rows


def kmeans_20_iterations(n: int, quick: bool) -> list[dict[str, Any]]:
    """20 Lloyd iterations, random init, every point used (faiss subsamples to 256*K by default)."""
    x = _data(n)
    group = f"k-means 20 iterations N={n} D={D} K={K} fp32 (random init)"
    cases = {"kmeans (ours)": Case(lambda: qn.kmeans(x, K, n_iter=20, seed=0), "ours")}
    faiss = _faiss()
    if faiss is not None:
        cases["faiss.Kmeans"] = Case(_faiss_kmeans(faiss, x, 20))
    rows = compare(group, cases, params={"N": n}, figure="kmeans_training", rounds=2 if quick else 3, min_round_s=0.0)
    if faiss is None:
        rows.append(make_row(group, "faiss.Kmeans", "baseline", note=NO_FAISS))
    return rows


def batched_problems(batch: int, n: int, quick: bool) -> list[dict[str, Any]]:
    """B independent problems (B small layers) in one call against one faiss.Kmeans per problem.

    Target: >= 5x faster than the faiss loop (64 problems, N=16384, 20 iterations)."""
    x = _data(n, batch)
    group = f"{batch} independent k-means problems N={n} D={D} K={K}, 20 iterations (random init)"
    cases = {
        f"kmeans on [{batch}, {n}, {D}] (ours, one call)": Case(lambda: qn.kmeans(x, K, n_iter=20, seed=0), "ours")
    }
    cases["kmeans per problem (ours, a loop)"] = Case(
        lambda: [qn.kmeans(x[b], K, n_iter=20, seed=0) for b in range(batch)]
    )
    faiss = _faiss()
    if faiss is not None:
        runs = [_faiss_kmeans(faiss, x[b], 20) for b in range(batch)]
        cases["faiss.Kmeans per problem (a loop)"] = Case(lambda: [run() for run in runs])
    targets = {"faiss.Kmeans per problem (a loop)": 5.0}
    rows = compare(
        group, cases, params={"B": batch, "N": n}, figure="kmeans_training", targets=targets, rounds=3, min_round_s=0.0
    )
    if faiss is None:
        rows.append(make_row(group, "faiss.Kmeans per problem (a loop)", "baseline", note=NO_FAISS, target=5.0))
    return rows


def rows(quick: bool = False) -> list[dict[str, Any]]:
    """Every k-means comparison; ``quick``: small shapes (smoke test)."""
    if quick:
        return assignment(4096, "quick", quick) + kmeanspp(1024, quick) + batched_problems(2, 1024, quick)
    out = assignment(131072, "1024x1024 layer, block 8", quick)
    out += assignment(2097152, "4096x4096 layer, block 8", quick)
    out += assignment_vs_fairseq(quick)
    out += kmeanspp(131072, quick)
    out += kmeans_20_iterations(131072, quick)
    out += batched_problems(64, 16384, quick)
    return out
