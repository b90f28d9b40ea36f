"""Activation-aware k-means (issue 10): ``ops.kmeans_assign_weighted`` / ``ops.kmeans_update_weighted`` against the
fp64 reference on random SPD ``H``, equivalence with plain k-means at ``H = I``, every ISA path, opcheck, compile,
determinism, bad input, and ``clustering.kmeans(..., h=)``. Budget: ~10 s (cuda-emu cases are small)."""

from __future__ import annotations

import os

import pytest
import torch
from devices import device_params
from launch_constants import constant

from quantnoise_kernels import ops, reference
from quantnoise_kernels.clustering import kmeans
from quantnoise_kernels.clustering_weighted import weighted_centroids

ISAS = ["avx512", "avx2", "portable"]


def _spd(batch, groups, dim, diag=False, device="cpu"):
    """Random symmetric positive definite H (or a positive diagonal), anisotropic like real activations."""
    if diag:
        return torch.rand(batch, groups, dim, device=device) * 4 + 0.05
    a = torch.randn(batch, groups, dim, dim, device=device)
    h = a @ a.transpose(-1, -2) / dim + 0.1 * torch.eye(dim, device=device)
    return 0.5 * (h + h.transpose(-1, -2))


def _problem(batch=2, groups=3, per_group=40, k=17, dim=5, diag=False, device="cpu"):
    x = torch.randn(batch, groups * per_group, dim, device=device)
    c = torch.randn(batch, k, dim, device=device)
    return x, c, _spd(batch, groups, dim, diag, device)


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("diag", [False, True])
def test_assign_matches_reference(device, diag):
    x, c, h = _problem(diag=diag, device=device)
    codes, dist = ops.kmeans_assign_weighted(x, c, h)
    ref_codes, _ = reference.kmeans_assign_weighted(x.cpu(), c.cpu(), h.cpu())
    full = reference.kmeans_assign_weighted(x.cpu(), c.cpu(), h.cpu())[1]
    assert codes.dtype == torch.int64 and dist.dtype == torch.float32
    # fp32 scores may rank near-ties differently from fp64: the chosen distance must still be minimal.
    agree = (codes.cpu() == ref_codes).float().mean()
    assert agree >= 0.98, agree
    ours_exact = _weighted_dist(x.cpu(), c.cpu(), h.cpu(), codes.cpu())
    torch.testing.assert_close(dist.cpu(), ours_exact.float(), rtol=1e-4, atol=1e-5)
    assert (ours_exact <= full.double() * (1 + 1e-4) + 1e-5).all()


@pytest.mark.parametrize("device", device_params())
def test_assign_across_centroid_tiles(device):
    """More centroids than one shared-memory tile of the CUDA kernel holds (the rule of
    kmeans_assign_weighted_tile_k: kKMeansWeightedSmemBytes less H, 2 D + 1 floats per centroid), the
    last tile partial, and a duplicate of centroid 0 in the last tile: the restaging and the tile
    offset of the codes."""
    dim = 16
    tile_k = (constant("kmeans_weighted_kernels.cuh", "kKMeansWeightedSmemBytes") // 4 - dim * dim) // (2 * dim + 1)
    k = 2 * tile_k + 20  # three tiles, the last partial
    assert 2 * tile_k < k < 3 * tile_k
    x, c, h = _problem(batch=1, groups=1, per_group=300, k=k, dim=dim, device=device)
    c[0, -1] = c[0, 0]
    x[0, :10] = c[0, 0]  # points on centroid 0 (and on its copy, which must never win)
    codes, dist = ops.kmeans_assign_weighted(x, c, h)
    ref_codes, full = reference.kmeans_assign_weighted(x.cpu(), c.cpu(), h.cpu())
    assert (codes.cpu() == ref_codes).float().mean() >= 0.98
    assert (codes[0, :10] == 0).all()
    ours_exact = _weighted_dist(x.cpu(), c.cpu(), h.cpu(), codes.cpu())
    torch.testing.assert_close(dist.cpu(), ours_exact.float(), rtol=1e-4, atol=1e-5)
    assert (ours_exact <= full.double() * (1 + 1e-4) + 1e-5).all()


def _weighted_dist(x, c, h, codes):
    hp = h.double() if h.dim() == 4 else torch.diag_embed(h.double())
    hp = hp.repeat(1, x.shape[1] // h.shape[1], 1, 1)
    diff = x.double() - torch.gather(c.double(), 1, codes[..., None].expand(-1, -1, x.shape[2]))
    return torch.einsum("bnd,bnde,bne->bn", diff, hp, diff)


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("diag", [False, True])
def test_update_matches_reference(device, diag):
    x, _, h = _problem(diag=diag, device=device)
    codes = torch.randint(0, 17, x.shape[:2], device=device)
    got = ops.kmeans_update_weighted(x, codes, h, 17)
    want = reference.kmeans_update_weighted(x.cpu(), codes.cpu(), h.cpu(), 17)
    for g, w in zip(got[:3], want[:3]):
        torch.testing.assert_close(g.cpu(), w, rtol=1e-5, atol=1e-4)
    assert torch.equal(got[3].cpu(), want[3])


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("bad", [17, -1])
def test_update_rejects_a_code_equal_to_k_or_negative(device, bad):
    """The edges of the code range, among valid codes: K (a write into the next problem's first
    centroid, or past the end of the last problem's) and -1, in the first problem of two."""
    x, _, h = _problem(device=device)
    codes = torch.randint(0, 17, x.shape[:2], device=device)
    codes[0, 33] = bad
    with pytest.raises(ValueError, match=r"kmeans_update_weighted: codes must lie in \[0, n_centroids=17\)"):
        ops.kmeans_update_weighted(x, codes, h, 17)


@pytest.mark.parametrize("device", device_params())
def test_identity_h_is_plain_kmeans(device):
    """H = I (full or diagonal): the same fmaf chains as kmeans_assign, so codes and distances are bit-identical."""
    x, c, _ = _problem(device=device)
    plain = ops.kmeans_assign(x, c)
    eye = torch.eye(5, device=device).expand(2, 3, 5, 5).contiguous()
    for h in (eye, torch.ones(2, 3, 5, device=device)):
        codes, dist = ops.kmeans_assign_weighted(x, c, h)
        assert torch.equal(codes, plain[0]) and torch.equal(dist, plain[1])
        _, hx_sums, sums, counts = ops.kmeans_update_weighted(x, codes, h, 17)
        torch.testing.assert_close(hx_sums, sums)


def test_identity_h_kmeans_run_matches_plain():
    x = torch.randn(600, 4)
    plain = kmeans(x, 16, n_iter=8, seed=3)
    aa = kmeans(x, 16, h=torch.eye(4).expand(6, 4, 4), n_iter=8, seed=3)
    assert (aa.codes == plain.codes).float().mean() >= 0.99
    torch.testing.assert_close(aa.centroids, plain.centroids, rtol=1e-4, atol=1e-4)


def test_all_isas_identical():
    x, c, h = _problem(batch=2, groups=4, per_group=300, k=70, dim=8)
    outs = []
    for name in ISAS:
        os.environ["QUANTNOISE_CPU_ISA"] = name
        try:
            outs.append(ops.kmeans_assign_weighted(x, c, h))
        finally:
            del os.environ["QUANTNOISE_CPU_ISA"]
    for codes, d in outs[1:]:
        assert torch.equal(codes, outs[0][0]) and torch.equal(d, outs[0][1])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_x_reads_as_float(dtype):
    x, c, h = _problem()
    x = x.to(dtype)
    assert torch.equal(ops.kmeans_assign_weighted(x, c, h)[0], ops.kmeans_assign_weighted(x.float(), c, h)[0])


@pytest.mark.parametrize("device", device_params())
def test_opcheck(device):
    x, c, h = _problem(batch=1, groups=2, per_group=10, k=4, dim=3, device=device)
    torch.library.opcheck(torch.ops.quantnoise.kmeans_assign_weighted.default, (x, c, h))
    codes = torch.randint(0, 4, (1, 20), device=device)
    torch.library.opcheck(torch.ops.quantnoise.kmeans_update_weighted.default, (x, codes, h, 4))
    torch.library.opcheck(torch.ops.quantnoise.kmeans_update_weighted.default, (x, codes, h.diagonal(0, -2, -1), 4))


def test_compile():
    @torch.compile(fullgraph=True)
    def step(x, c, h):
        codes, d = ops.kmeans_assign_weighted(x, c, h)
        h_sums, hx_sums, _, _ = ops.kmeans_update_weighted(x, codes, h, c.shape[1])
        return h_sums, hx_sums, d.sum()

    x, c, h = _problem()
    got = step(x, c, h)
    codes, d = ops.kmeans_assign_weighted(x, c, h)
    want = ops.kmeans_update_weighted(x, codes, h, 17)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    torch.testing.assert_close(got[2], d.sum())


def test_empty_and_noncontiguous():
    x, c, h = _problem()
    codes, dist = ops.kmeans_assign_weighted(x[:, :0], c, h)
    assert codes.shape == (2, 0) and dist.shape == (2, 0)
    xt = x.transpose(0, 1).contiguous().transpose(0, 1)  # same values, non-contiguous
    assert not xt.is_contiguous()
    assert torch.equal(ops.kmeans_assign_weighted(xt, c, h)[0], ops.kmeans_assign_weighted(x, c, h)[0])


def test_bad_input_names_h_and_value():
    x, c, h = _problem()
    with pytest.raises(ValueError, match=r"h must have shape \[B, G, D, D\].*got \[2, 3, 5, 4\]"):
        ops.kmeans_assign_weighted(x, c, h[..., :4])
    with pytest.raises(ValueError, match="group count G must divide the number of points N=120, got G=7"):
        ops.kmeans_assign_weighted(x, c, _spd(2, 7, 5))
    asym = h.clone()
    asym[0, 0, 0, 1] += 1.0
    with pytest.raises(ValueError, match=r"h must be symmetric, got max \|h - h\^T\| = 1"):
        ops.kmeans_assign_weighted(x, c, asym)
    nan = h.clone()
    nan[1, 2, 3, 3] = float("nan")
    with pytest.raises(ValueError, match="h must be finite, got 1 NaN or infinite values"):
        ops.kmeans_update_weighted(x, torch.zeros(2, 120, dtype=torch.long), nan, 17)
    with pytest.raises(ValueError, match="h must have a non-negative diagonal"):
        ops.kmeans_assign_weighted(x, c, -torch.ones(2, 3, 5))
    with pytest.raises(TypeError, match="h must be float32, got dtype Double"):
        ops.kmeans_assign_weighted(x, c, h.double())
    # the checks shared with the plain ops name the weighted op
    with pytest.raises(ValueError, match="kmeans_assign_weighted: centroids must have x's dimension D=5"):
        ops.kmeans_assign_weighted(x, c[..., :4], h)
    with pytest.raises(TypeError, match="kmeans_update_weighted: codes must be int64"):
        ops.kmeans_update_weighted(x, torch.zeros(2, 120, dtype=torch.int32), h, 17)
    with pytest.raises(ValueError, match="kmeans: h must be"):
        kmeans(x[0], 4, h=h)
    with pytest.raises(ValueError, match="kmeans: h must be positive semi-definite, got an eigenvalue -1"):
        kmeans(x[0], 4, h=torch.diag_embed(torch.tensor([1.0, -1.0, 1, 1, 1]))[None].expand(3, 5, 5))


def test_kmeans_weighted_deterministic_and_better_on_its_objective():
    """On anisotropic H, the activation-aware run reaches a lower weighted objective than plain k-means."""
    torch.manual_seed(0)
    x = torch.randn(3 * 400, 6)
    scale = torch.logspace(-1, 1, 6).sqrt()
    h = scale[:, None] * _spd(1, 3, 6)[0] * scale[None, :]  # strongly anisotropic, still SPD
    a = kmeans(x, 32, h=h, n_iter=10, seed=5)
    b = kmeans(x, 32, h=h, n_iter=10, seed=5)
    assert torch.equal(a.codes, b.codes) and torch.equal(a.centroids, b.centroids)
    plain = kmeans(x, 32, n_iter=10, seed=5)
    best_codes, _ = ops.kmeans_assign_weighted(x, plain.centroids, h)
    plain_obj = _weighted_dist(x[None], plain.centroids[None], h[None], best_codes[None]).sum()
    assert a.objective[-1] < 0.9 * float(plain_obj)
    assert all(later <= earlier * (1 + 1e-5) for earlier, later in zip(a.objective, a.objective[1:]))


def test_weighted_centroids_fallback_rule():
    """A singular summed H takes the plain mean; an empty cluster keeps its previous centroid."""
    h_sums = torch.stack([2 * torch.eye(2), torch.zeros(2, 2), torch.eye(2)])[None]
    hx_sums = torch.tensor([[[2.0, 4.0], [9.0, 9.0], [0.0, 0.0]]])
    sums = torch.tensor([[[5.0, 5.0], [3.0, 6.0], [0.0, 0.0]]])
    counts = torch.tensor([[2, 3, 0]])
    prev = torch.full((1, 3, 2), 7.0)
    got = weighted_centroids((h_sums, hx_sums, sums, counts), prev)
    torch.testing.assert_close(got, torch.tensor([[[1.0, 2.0], [1.0, 2.0], [7.0, 7.0]]]))
    diag = weighted_centroids(
        (torch.tensor([[[2.0, 0.0]]]), torch.tensor([[[4.0, 1.0]]]), torch.ones(1, 1, 2) * 6, torch.tensor([[3]])),
        torch.zeros(1, 1, 2),
    )
    torch.testing.assert_close(diag, torch.tensor([[[2.0, 2.0]]]))
