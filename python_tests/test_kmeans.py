"""kmeans_assign / kmeans_update ops and kmeans() against plain-PyTorch references."""

from __future__ import annotations

import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from devices import device_params, runnable_cpu_isas, runs_cuda_kernel
from dist_worker import finish_worker

import quantnoise_kernels as qn
from quantnoise_kernels import ops, reference


def _integer_data(batch, n, k, dim, device):
    """Small integers: every score is exact in fp32, so exact ties abound; plus duplicated centroids."""
    x = torch.randint(-4, 5, (batch, n, dim), device=device).float()
    c = torch.randint(-4, 5, (batch, k, dim), device=device).float()
    c[:, k // 2] = c[:, 1]  # a duplicated centroid: its higher index must never win
    c[:, -1] = c[:, 0]
    return x, c


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("dim", [1, 4, 5, 8, 9, 16, 27, 33])
def test_assign_matches_reference_with_ties(device, dim, isa):
    x, c = _integer_data(2, 700, 37, dim, device)
    codes, d = ops.kmeans_assign(x, c)
    ref_codes, ref_d = reference.kmeans_assign(x, c)
    assert codes.dtype == torch.int64 and d.dtype == torch.float32 and codes.shape == (2, 700)
    assert torch.equal(codes, ref_codes)
    assert torch.equal(d, ref_d)  # integer data: exact
    assert not (codes == c.shape[1] // 2).any() and not (codes == c.shape[1] - 1).any()


@pytest.mark.parametrize("device", device_params())
# 7 and 301: a tail of k % 4 (AVX2) and k % 8 (AVX-512) centroids after the interleaved main loop.
@pytest.mark.parametrize("k", [1, 7, 16, 100, 256, 301, 1000])
def test_assign_random_data(device, k, isa):
    x = torch.randn(1, 3000, 8, device=device)
    c = torch.randn(1, k, 8, device=device)
    codes, d = ops.kmeans_assign(x, c)
    ref_codes, ref_d = reference.kmeans_assign(x, c)
    torch.testing.assert_close(d, ref_d, rtol=1e-5, atol=1e-5)
    # Codes are identical except at near-ties below fp32 rounding, where both choices are optimal.
    chosen = ((x[0] - c[0][codes[0]]) ** 2).sum(-1)
    assert torch.allclose(chosen, ref_d[0], rtol=1e-5, atol=1e-5)
    assert (codes == ref_codes).float().mean() > 0.999


@pytest.mark.parametrize("dim", [5, 8, 9])
def test_all_isas_identical(monkeypatch, dim):
    """kmeans_assign's contract: every CPU path gives the same codes and distances, bit for bit."""
    x, c = torch.randn(3, 1001, dim), torch.randn(3, 301, dim)
    outs = []
    for name in runnable_cpu_isas():
        monkeypatch.setenv("QUANTNOISE_CPU_ISA", name)
        outs.append(ops.kmeans_assign(x, c))
    assert len(outs) >= 2 or qn.cpu_isa() == "portable"
    for codes, d in outs[1:]:
        assert torch.equal(codes, outs[0][0]) and torch.equal(d, outs[0][1])


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_assign_low_precision(device, dtype):
    x = torch.randn(2, 500, 8, device=device).to(dtype)
    c = torch.randn(2, 64, 8, device=device).to(dtype)
    codes, d = ops.kmeans_assign(x, c)
    ref_codes, ref_d = reference.kmeans_assign(x.float(), c.float())
    assert d.dtype == torch.float32
    torch.testing.assert_close(d, ref_d, rtol=1e-5, atol=1e-5)
    assert (codes == ref_codes).float().mean() > 0.999


@pytest.mark.parametrize("device", device_params())
def test_assign_2d_noncontiguous_empty(device):
    x = torch.randn(20, 300, device=device)[:, ::30].t()  # [10, 20] non-contiguous
    c = torch.randn(5, 20, device=device)
    codes, d = ops.kmeans_assign(x, c)
    ref_codes, _ = reference.kmeans_assign(x[None], c[None])
    assert codes.shape == (10,) and torch.equal(codes, ref_codes[0])
    codes, d = ops.kmeans_assign(torch.empty(2, 0, 4, device=device), torch.randn(2, 3, 4, device=device))
    assert codes.shape == (2, 0) and d.shape == (2, 0)


@pytest.mark.parametrize("device", device_params())
def test_update_matches_reference(device):
    x = torch.randn(3, 40000, 9, device=device)
    codes = torch.randint(0, 50, (3, 40000), device=device)
    sums, counts = ops.kmeans_update(x, codes, 50)
    ref_sums, ref_counts = reference.kmeans_update(x, codes, 50)
    # The CUDA kernel adds ~2400 floats per sum with atomics, in arrival order (found by cuda-emu).
    cuda = runs_cuda_kernel(device)
    torch.testing.assert_close(sums, ref_sums, rtol=1e-6, atol=3e-4 if cuda else 1e-5)
    assert torch.equal(counts, ref_counts)
    s2, c2 = ops.kmeans_update(x[0], codes[0], 50)
    assert torch.equal(c2, counts[0])
    torch.testing.assert_close(s2, sums[0], rtol=0, atol=3e-4 if cuda else 0)  # atomics: not bitwise on a GPU


def test_update_deterministic_across_threads():
    x, codes = torch.randn(1, 100000, 8), torch.randint(0, 256, (1, 100000))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = ops.kmeans_update(x, codes, 256)
    finally:
        torch.set_num_threads(threads)
    two = ops.kmeans_update(x, codes, 256)
    assert torch.equal(one[0], two[0]) and torch.equal(one[1], two[1])


@pytest.mark.parametrize("device", device_params())
def test_op_errors(device):
    x, c = torch.randn(1, 10, 4, device=device), torch.randn(1, 3, 4, device=device)
    with pytest.raises(ValueError, match="centroids must have x's dimension D=4, got shape"):
        ops.kmeans_assign(x, torch.randn(1, 3, 5, device=device))
    with pytest.raises(TypeError, match="x must be float32, float16 or bfloat16, got dtype Int"):
        ops.kmeans_assign(x.int(), c)
    with pytest.raises(ValueError, match="between 1 and 65536 centroids, got K=65537"):
        ops.kmeans_assign(x, torch.randn(1, 65537, 4, device=device))
    # The CUDA launcher only learns that some code was out of range, not which (found by cuda-emu).
    got = "" if runs_cuda_kernel(device) else ", got 7"
    with pytest.raises(ValueError, match=r"codes must lie in \[0, n_centroids=3\)" + got):
        ops.kmeans_update(x, torch.full((1, 10), 7, device=device), 3)
    # The edges: one code equal to K (a write into the next centroid's row) or -1, among valid ones.
    for bad in (3, -1):
        codes = torch.randint(0, 3, (1, 10), device=device)
        codes[0, 6] = bad
        got = "" if runs_cuda_kernel(device) else f", got {bad}"
        with pytest.raises(ValueError, match=r"codes must lie in \[0, n_centroids=3\)" + got):
            ops.kmeans_update(x, codes, 3)
    with pytest.raises(ValueError, match="n_centroids must be in"):
        ops.kmeans_update(x, torch.zeros(1, 10, dtype=torch.int64, device=device), 0)


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("bad", [3, -1])
def test_update_code_edges_in_the_first_of_two_problems(device, bad):
    """A code equal to K (or -1) in problem 0 of two: a kernel that let it through would write into
    problem 1's first centroid (or problem 0's last count), inside its buffers, so nothing but this
    check finds it (test_op_errors' single problem would write past the end: caught, if at all, by
    the allocator)."""
    x = torch.randn(2, 10, 4, device=device)
    codes = torch.randint(0, 3, (2, 10), device=device)
    codes[0, 6] = bad
    got = "" if runs_cuda_kernel(device) else f", got {bad}"
    with pytest.raises(ValueError, match=r"codes must lie in \[0, n_centroids=3\)" + got):
        ops.kmeans_update(x, codes, 3)


def test_large_k():
    x, c = torch.randn(1, 200, 4), torch.randn(1, 65536, 4)
    codes, d = ops.kmeans_assign(x, c)
    ref_codes, ref_d = reference.kmeans_assign(x, c, chunk=8)
    torch.testing.assert_close(d, ref_d, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("device", device_params())
def test_opcheck(device):
    x, c = torch.randn(2, 50, 8, device=device), torch.randn(2, 7, 8, device=device)
    torch.library.opcheck(torch.ops.quantnoise.kmeans_assign.default, (x, c))
    codes = torch.randint(0, 7, (2, 50), device=device)
    torch.library.opcheck(torch.ops.quantnoise.kmeans_update.default, (x, codes, 7))


def test_compile():
    @torch.compile(fullgraph=True)
    def step(x, c):
        codes, d = ops.kmeans_assign(x, c)
        sums, counts = ops.kmeans_update(x, codes, c.shape[1])
        return sums / counts.clamp(min=1)[..., None], d.sum()

    x, c = torch.randn(2, 300, 8), torch.randn(2, 16, 8)
    got = step(x, c)
    codes, d = ops.kmeans_assign(x, c)
    sums, counts = ops.kmeans_update(x, codes, 16)
    torch.testing.assert_close(got[0], sums / counts.clamp(min=1)[..., None])


# ---------------------------------------------------------------------------------------------
# kmeans()


def _reference_em(x: torch.Tensor, init: torch.Tensor, n_iter: int) -> tuple[torch.Tensor, list[float]]:
    """Plain-torch Lloyd EM (exact distances, mean update) from the given initial centroids."""
    c = init.clone()
    objective = []
    for it in range(n_iter + 1):
        codes, d = reference.kmeans_assign(x, c)
        objective.append(float(d.double().sum()))
        if it == n_iter:
            break
        sums, counts = reference.kmeans_update(x, codes, c.shape[1])
        assert (counts > 0).all(), "the reference EM does not repair empty clusters"
        c = sums / counts[..., None]
    return c, objective


def _unique_seed(n, k, batch=1):
    for seed in range(100):
        idx = torch.randint(0, n, (batch, k), generator=torch.Generator().manual_seed(seed))
        if all(len(set(row.tolist())) == k for row in idx):
            return seed, idx
    raise AssertionError("no seed with distinct initial vectors")


def test_kmeans_objective_matches_reference_em():
    torch.manual_seed(1)
    centers = torch.randn(2, 12, 6) * 3
    x = (centers[:, torch.randint(0, 12, (4000,))] + torch.randn(2, 4000, 6)).contiguous()
    seed, idx = _unique_seed(4000, 12, batch=2)
    init = torch.stack([x[b, idx[b]] for b in range(2)])
    result = qn.kmeans(x, 12, n_iter=10, seed=seed)
    ref_c, ref_obj = _reference_em(x, init, 10)
    assert len(result.objective) == 11
    torch.testing.assert_close(torch.tensor(result.objective), torch.tensor(ref_obj), rtol=1e-4, atol=0)
    torch.testing.assert_close(result.centroids, ref_c, rtol=1e-4, atol=1e-4)
    assert all(b <= a * (1 + 1e-6) for a, b in zip(result.objective, result.objective[1:]))


def test_kmeans_shapes_determinism_tol_progress(caplog):
    x = torch.randn(2000, 4)
    a = qn.kmeans(x, 32, seed=3, init="kmeans++", verbose=True)  # progress: INFO records of the module's logger
    assert any(r.name == "quantnoise_kernels.clustering" and "iteration 1/20" in r.message for r in caplog.records)
    assert "k-means++ init: 32 centroids from 2000 vectors" in caplog.records[0].message  # before the slow init
    b = qn.kmeans(x, 32, seed=3, init="kmeans++")
    assert a.centroids.shape == (32, 4) and a.codes.shape == (2000,) and a.centroids.dtype == torch.float32
    assert torch.equal(a.centroids, b.centroids) and torch.equal(a.codes, b.codes)
    short = qn.kmeans(x, 32, seed=3, n_iter=100, tol=1e-3)
    assert len(short.objective) < 101
    torch.manual_seed(5)
    c1 = qn.kmeans(x, 8).centroids
    torch.manual_seed(5)
    assert torch.equal(c1, qn.kmeans(x, 8).centroids)


def test_kmeans_repairs_empty_clusters():
    # Initial centroids drawn with replacement from few points: duplicates -> empty clusters,
    # which the vectorised split must refill.
    x = torch.randn(300, 2)
    seed = next(
        s
        for s in range(100)
        if torch.randint(0, 300, (1, 40), generator=torch.Generator().manual_seed(s)).unique().numel() < 40
    )
    r = qn.kmeans(x, 40, seed=seed)
    assert r.n_empty == 0 and torch.bincount(r.codes, minlength=40).min() > 0


def test_kmeans_warns_when_empty_clusters_remain():
    x = torch.tensor([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]]).repeat(20, 1)  # 3 distinct vectors
    with pytest.warns(UserWarning, match="5 of 8 clusters are empty"):
        r = qn.kmeans(x, 8, seed=0, n_iter=3, max_tentatives=2)
    assert r.n_empty == 5


def test_kmeans_errors():
    with pytest.raises(ValueError, match="n_centroids must be at most the number of vectors N=10, got 11"):
        qn.kmeans(torch.randn(10, 2), 11)
    with pytest.raises(TypeError, match="x must be float32, float16, bfloat16 or float64, got dtype torch.int64"):
        qn.kmeans(torch.ones(10, 2, dtype=torch.int64), 2)
    x = torch.randn(10, 2)
    x[3, 1] = float("nan")
    with pytest.raises(ValueError, match="x must be finite, got 1 NaN or infinite values"):
        qn.kmeans(x, 2)
    with pytest.raises(ValueError, match=r"n_centroids must be an int in \[1, 65536\], got 65537"):
        qn.kmeans(torch.randn(70000, 1), 65537)
    with pytest.raises(ValueError, match="init must be"):
        qn.kmeans(torch.randn(10, 2), 2, init="foo")


def _distributed_worker(rank: int, world: int, path: str, x: torch.Tensor, init: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{path}.store", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        shard = x.tensor_split(world, dim=1)[rank]
        r = qn.kmeans(shard, 24, n_iter=8, seed=7, init=init, process_group=dist.group.WORLD)
        torch.save({"centroids": r.centroids, "codes": r.codes, "objective": r.objective}, f"{path}.{rank}")
    except BaseException:
        dist.destroy_process_group()
        raise
    finish_worker()


@pytest.mark.parametrize("init", ["random", "kmeans++"])
def test_kmeans_distributed_matches_single_process(init):
    x = torch.randn(2, 3001, 5)
    single = qn.kmeans(x, 24, n_iter=8, seed=7, init=init)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "km")
        mp.start_processes(_distributed_worker, args=(2, path, x, init), nprocs=2, join=True, start_method="fork")
        parts = [torch.load(f"{path}.{r}") for r in range(2)]
    for p in parts:
        torch.testing.assert_close(p["centroids"], single.centroids, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(torch.tensor(p["objective"]), torch.tensor(single.objective), rtol=1e-6, atol=0)
    assert torch.equal(torch.cat([p["codes"] for p in parts], 1), single.codes)


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_kmeans_devices_and_dtypes(device, dtype):
    x = torch.randn(2, 1500, 8).to(dtype)
    cpu = qn.kmeans(x, 16, n_iter=5, seed=2)
    got = qn.kmeans(x.to(device), 16, n_iter=5, seed=2)
    assert got.centroids.dtype == torch.float32 and got.centroids.device.type == torch.device(device).type
    torch.testing.assert_close(got.centroids.cpu(), cpu.centroids, rtol=1e-5, atol=1e-5)
    assert (got.codes.cpu() == cpu.codes).float().mean() > 0.999
    ref_c, ref_obj = _reference_em(x.float(), _random_init(x.float(), 16, 2), 0)
    torch.testing.assert_close(torch.tensor(cpu.objective[0]), torch.tensor(ref_obj[0]), rtol=1e-5, atol=0)


def _random_init(x: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    idx = torch.randint(0, x.shape[1], (x.shape[0], k), generator=torch.Generator().manual_seed(seed))
    return torch.stack([x[b, idx[b]] for b in range(x.shape[0])])
