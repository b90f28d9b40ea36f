"""k-means++ seeding: the fused ``kmeanspp_init`` op, its halves ``kmeanspp_step``/``kmeanspp_sample``,
and ``kmeans(init="kmeans++")``, against plain-PyTorch/Python references. Time budget: ~15 s."""

from __future__ import annotations

import pytest
import torch
from devices import device_params, runnable_cpu_isas

import quantnoise_kernels as qn
from quantnoise_kernels import ops, reference


def _draws(batch: int, n: int, k: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, n, (batch,), generator=g), torch.rand(batch, k - 1, generator=g, dtype=torch.float64)


def _textbook(x: torch.Tensor, first: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """D^2 sampling as earlier versions ran it: one float64 cumsum over all points per step, the first
    index whose prefix exceeds u * total. Weights from ops.kmeans_assign (the kernels' FMA chain)."""
    picks = [first]
    dmin = None
    for s in range(uniforms.shape[1]):
        c = x[torch.arange(x.shape[0]), picks[-1]][:, None]
        d = ops.kmeans_assign(x, c)[1]
        dmin = d if dmin is None else torch.minimum(dmin, d)
        cum = torch.cumsum(dmin, 1, dtype=torch.float64)
        u = uniforms[:, s] * cum[:, -1]
        picks.append(torch.searchsorted(cum, u[:, None], right=True)[:, 0].clamp(max=x.shape[1] - 1))
    return torch.stack(picks, 1)


SHAPES = [(2, 3000, 5, 32), (1, 1500, 8, 64), (3, 700, 1, 16)]  # B, N, D, K


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("shape", SHAPES)
def test_init_matches_reference_integer_data(device, shape):
    _check_integer_data(device, shape)


@pytest.mark.parametrize("shape", SHAPES)
def test_init_every_cpu_path_matches_reference_integer_data(shape, isa):
    _check_integer_data("cpu", shape)


def _check_integer_data(device: str, shape: tuple[int, int, int, int]) -> None:
    """Integer data: every weight and sum is exact, so the rule alone decides; many duplicated points."""
    batch, n, dim, k = shape
    x = torch.randint(-3, 4, (batch, n, dim)).float()
    first, uniforms = _draws(batch, n, k)
    got = ops.kmeanspp_init(x.to(device), first.to(device), uniforms.to(device))
    assert got.dtype == torch.int64 and got.shape == (batch, k)
    assert torch.equal(got.cpu(), reference.kmeanspp_init(x, first, uniforms))
    # A point of weight 0 (a duplicate of a chosen one) is never drawn while others remain.
    chosen = x[torch.arange(batch)[:, None], got.cpu()]
    distinct = torch.tensor([len({tuple(v) for v in row.tolist()}) for row in chosen])
    n_distinct = torch.tensor([len({tuple(v) for v in row.tolist()}) for row in x])
    assert torch.equal(distinct, torch.minimum(n_distinct, torch.tensor(k)))


@pytest.mark.parametrize("device", device_params())
def test_init_degenerate_draws_uniformly(device):
    x = torch.ones(2, 100, 4)  # every weight 0 after the first point: floor(u * N)
    first, uniforms = _draws(2, 100, 10)
    got = ops.kmeanspp_init(x.to(device), first.to(device), uniforms.to(device)).cpu()
    assert torch.equal(got[:, 1:], (uniforms * 100).long())
    assert torch.equal(got, reference.kmeanspp_init(x, first, uniforms))


@pytest.mark.parametrize("seed", range(3))
def test_init_same_draws_as_the_textbook_rule(seed):
    """Float data: the chunked float64 sums pick what one sequential cumsum picks (earlier versions)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 2500, 8, generator=g)
    first, uniforms = _draws(3, 2500, 48, seed)
    assert torch.equal(ops.kmeanspp_init(x, first, uniforms), _textbook(x, first, uniforms))


def test_init_identical_for_any_thread_count_and_split():
    """The CPU kernel's two schedules (problems in parallel; one problem's chunks in parallel) and one
    thread agree; the CUDA kernel against the CPU one: test_cuda_vs_cpu.py."""
    x = torch.randn(3, 2100, 9)
    first, uniforms = _draws(3, 2100, 40)
    expected = ops.kmeanspp_init(x, first, uniforms)  # CPU, widest path, all threads, 3 problems
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert torch.equal(ops.kmeanspp_init(x, first, uniforms), expected)
    finally:
        torch.set_num_threads(threads)
    alone = [ops.kmeanspp_init(x[b : b + 1], first[b : b + 1], uniforms[b : b + 1]) for b in range(3)]
    assert torch.equal(torch.cat(alone), expected)  # one problem: chunks in parallel per step


def test_init_isas_identical(monkeypatch):
    x = torch.randn(2, 1800, 7).half()
    first, uniforms = _draws(2, 1800, 30)
    outs = []
    for name in runnable_cpu_isas():
        monkeypatch.setenv("QUANTNOISE_CPU_ISA", name)
        outs.append(ops.kmeanspp_init(x, first, uniforms))
    assert all(torch.equal(o, outs[0]) for o in outs[1:])


@pytest.mark.parametrize("device", device_params())
def test_step_and_sample_match_reference(device):
    _check_step_and_sample(device)


def test_step_and_sample_every_cpu_path(isa):
    _check_step_and_sample("cpu")


def _check_step_and_sample(device: str) -> None:
    x = torch.randn(2, 2600, 6)
    dmin = torch.rand(2, 2600) * 10
    dmin[1, :700] = float("inf")
    c = torch.randn(2, 6)
    got_d, got_w = ops.kmeanspp_step(x.to(device), dmin.to(device), c.to(device))
    d = ops.kmeans_assign(x, c[:, None])[1]  # the same FMA chain, verified against the reference in test_kmeans
    assert torch.equal(got_d.cpu(), torch.minimum(dmin, d))
    assert got_w.dtype == torch.float64 and got_w.shape == (2, 3)
    for b in range(2):
        w = got_d[b].cpu().tolist()
        assert got_w[b].tolist() == reference.kmeanspp_chunk_weights(w)
        for target in [0.0, 0.3 * sum(w), 0.999 * sum(w), 2.0 * sum(w)]:
            t = torch.tensor([target, target], dtype=torch.float64)
            got = ops.kmeanspp_sample(got_d.to(device), got_w.to(device), t.to(device))
            assert got[b].item() == reference.kmeanspp_sample(w, got_w[b].tolist(), target)
    zero = torch.zeros(1, 50)
    assert ops.kmeanspp_sample(zero, torch.zeros(1, 1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)) == -1


@pytest.mark.parametrize("device", device_params())
def test_small_and_empty(device):
    x = torch.randn(2, 1, 3, device=device)
    first = torch.zeros(2, dtype=torch.int64, device=device)
    got = ops.kmeanspp_init(x, first, torch.rand(2, 3, dtype=torch.float64, device=device))
    assert torch.equal(got.cpu(), torch.zeros(2, 4, dtype=torch.int64))  # one point: drawn again and again
    assert ops.kmeanspp_init(x, first, torch.empty(2, 0, dtype=torch.float64, device=device)).shape == (2, 1)
    empty = ops.kmeanspp_init(torch.empty(0, 5, 3, device=device), first[:0], torch.empty(0, 4, dtype=torch.float64))
    assert empty.shape == (0, 5)
    x2 = torch.randn(700, 3, device=device)  # 2-D: one problem
    assert ops.kmeanspp_init(x2, torch.tensor(4, device=device), torch.rand(5, dtype=torch.float64)).shape == (6,)
    d, w = ops.kmeanspp_step(torch.empty(2, 0, 3, device=device), torch.empty(2, 0, device=device), x[:, 0])
    assert d.shape == (2, 0) and w.shape == (2, 0)


@pytest.mark.parametrize("device", device_params())
def test_errors(device):
    x = torch.randn(2, 10, 3, device=device)
    first = torch.tensor([0, 9], device=device)
    u = torch.rand(2, 4, dtype=torch.float64, device=device)
    with pytest.raises(ValueError, match=r"first must lie in \[0, N=10\), got values in \[1, 10\]"):
        ops.kmeanspp_init(x, first + 1, u)
    with pytest.raises(ValueError, match=r"uniforms must lie in \[0, 1\), got values in"):
        ops.kmeanspp_init(x, first, u + 1)
    with pytest.raises(TypeError, match="uniforms must be float64, got dtype Float"):
        ops.kmeanspp_init(x, first, u.float())
    with pytest.raises(TypeError, match="x must be float32, float16 or bfloat16, got dtype Double"):
        ops.kmeanspp_init(x.double(), first, u)
    with pytest.raises(ValueError, match=r"first must have shape \[B\] = \[2\], got \[3\]"):
        ops.kmeanspp_init(x, torch.zeros(3, dtype=torch.int64, device=device), u)
    bad = x.clone()
    bad[1, 3, 0] = float("nan")
    with pytest.raises(ValueError, match="x must be finite"):
        ops.kmeanspp_init(bad, first, u)
    with pytest.raises(ValueError, match=r"centroid must have shape \[B, D\] = \[2, 3\], got \[2, 4\]"):
        ops.kmeanspp_step(x, torch.zeros(2, 10, device=device), torch.zeros(2, 4, device=device))
    cw = torch.zeros(2, 1, dtype=torch.float64, device=device)
    with pytest.raises(ValueError, match="target must be >= 0, got -1"):
        ops.kmeanspp_sample(torch.zeros(2, 10, device=device), cw, torch.tensor([0.0, -1.0], dtype=torch.float64))
    with pytest.raises(ValueError, match=r"chunk_weights must have shape \[B, ceil\(N / 1024\)\] = \[2, 1\]"):
        ops.kmeanspp_sample(torch.zeros(2, 10, device=device), cw[:, :0], torch.zeros(2, dtype=torch.float64))


@pytest.mark.parametrize("device", device_params())
def test_opcheck(device):
    x = torch.randn(2, 1100, 4, device=device)
    first, u = _draws(2, 1100, 6)
    torch.library.opcheck(torch.ops.quantnoise.kmeanspp_init.default, (x, first.to(device), u.to(device)))
    dmin = torch.rand(2, 1100, device=device)
    torch.library.opcheck(torch.ops.quantnoise.kmeanspp_step.default, (x, dmin, x[:, 0]))
    d, w = ops.kmeanspp_step(x, dmin, x[:, 0])
    target = torch.tensor([0.5, 1.5], dtype=torch.float64, device=device)
    torch.library.opcheck(torch.ops.quantnoise.kmeanspp_sample.default, (d, w, target))


def test_kmeans_kmeanspp_seed_gives_the_textbook_centroids():
    """kmeans(init="kmeans++") draws first = randint(N, (B,)), then rand(K-1, B) float64 from the seed's
    generator: the draws of earlier versions, so a seed keeps its centroids."""
    x = torch.randn(2, 3000, 8)
    r = qn.kmeans(x, 24, n_iter=0, init="kmeans++", seed=11)
    g = torch.Generator().manual_seed(11)
    first = torch.randint(0, 3000, (2,), generator=g)
    uniforms = torch.rand(23, 2, generator=g, dtype=torch.float64).t()
    idx = _textbook(x, first, uniforms)
    assert torch.equal(r.centroids, x[torch.arange(2)[:, None], idx])
