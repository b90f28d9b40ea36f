"""PQ ops (pq_decode, pq_linear, pq_embedding) and layers against the decode-then-torch reference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from devices import device_params, runs_cuda_kernel
from tolerances import assert_close_in_dtype, assert_rounded_close

from quantnoise_kernels import ops, reference
from quantnoise_kernels.pq import PQConv2d, PQEmbedding, PQLinear

DEVICES = device_params()


def _codebook(out, in_features, bs, K, device="cpu", codes_dtype=None, dtype=torch.float32):
    codes_dtype = codes_dtype or (torch.uint8 if K <= 256 else torch.int32)
    codes = torch.randint(0, K, (out, in_features // bs), device=device).to(codes_dtype)
    return codes, torch.randn(K, bs, device=device, dtype=dtype)


def _close(y, ref, rtol=1e-5):
    # 1e-5 relative to the output's scale (elementwise relative error is meaningless near 0).
    scale = ref.abs().max().clamp(min=1e-30)
    assert ((y - ref).abs().max() / scale).item() <= rtol, f"max rel err {((y - ref).abs().max() / scale).item():.3e}"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("codes_dtype", [torch.uint8, torch.int32])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("transposed", [False, True])
def test_decode_matches_reference(device, codes_dtype, dtype, transposed):
    codes, c = _codebook(24, 48, 4, 200, device, codes_dtype, dtype)
    packed = ops.pq_pack_codes(codes) if transposed else codes
    w = ops.pq_decode(packed, c, (24, 3, 4, 4), codes_transposed=transposed)
    assert w.dtype == dtype and w.shape == (24, 3, 4, 4)
    torch.testing.assert_close(w, reference.pq_decode(codes, c, (24, 3, 4, 4)), rtol=0, atol=0)


# (M rows, out, in, bs, K): batch 1, the 16-row chunk edges, odd sizes, int32 codes with K > 256.
LINEAR_CASES = [(1, 4096, 512, 8, 256), (1, 50, 24, 4, 16), (2, 64, 64, 8, 256), (15, 33, 40, 8, 100),
                (16, 300, 64, 4, 256), (17, 130, 72, 9, 64), (40, 64, 32, 8, 300), (0, 16, 16, 4, 8)]  # fmt: skip


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", LINEAR_CASES, ids=str)
@pytest.mark.parametrize("path", ["lut", "tile", "auto"])
@pytest.mark.parametrize("transposed", [False, True])
def test_linear_matches_reference_on_both_paths(device, case, path, transposed):
    m, out, inf, bs, K = case
    if out * inf > 1 << 20 and runs_cuda_kernel(device) and device == "cpu":
        pytest.skip("too slow emulated (~20 s): the smaller cases cover the same kernels under cuda-emu")
    codes, c = _codebook(out, inf, bs, K, device)
    x, bias = torch.randn(m, inf, device=device), torch.randn(out, device=device)
    packed = ops.pq_pack_codes(codes) if transposed else codes
    y = ops.pq_linear(x, packed, c, bias, codes_transposed=transposed, path=path)
    assert y.shape == (m, out) and y.dtype == x.dtype
    if m:
        _close(y, reference.pq_linear(x, codes, c, bias))


def test_linear_switch_over_sizes_agree():
    """Both paths and 'auto' agree around the 16-row chunk and the one-row register path."""
    codes, c = _codebook(256, 256, 8, 256)
    packed = ops.pq_pack_codes(codes)
    for m in (1, 2, 3, 15, 16, 17, 31, 32, 33):
        x = torch.randn(m, 256)
        ref = reference.pq_linear(x, codes, c)
        for path in ("lut", "tile", "auto"):
            _close(ops.pq_linear(x, packed, c, codes_transposed=True, path=path), ref)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_linear_dtypes_and_batch_dims(device, dtype):
    codes, c = _codebook(20, 32, 8, 32, device, dtype=dtype)
    x = torch.randn(2, 3, 32, device=device, dtype=dtype)
    y = ops.pq_linear(x, codes, c)
    assert y.shape == (2, 3, 20) and y.dtype == dtype
    w = reference.pq_decode(codes, c, (20, 32))
    expected, magnitude = F.linear(x.double(), w.double()), F.linear(x.double().abs(), w.double().abs())
    assert_close_in_dtype(y, expected, F.linear(x, w), magnitude, 32)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_linear_large_batch_low_precision(device, dtype):
    """Above 16 rows with fp16/bf16 x, CUDA runs the tensor-core tile kernel (W tiles rounded to x's dtype,
    float32 accumulation; emulated: that kernel's plain path); the CPU its LUT. As accurate as F.linear in
    that dtype."""
    codes, c = _codebook(70, 72, 8, 256, device, dtype=dtype)
    x = torch.randn(40, 72, device=device, dtype=dtype)
    y = ops.pq_linear(x, codes, c)
    w = reference.pq_decode(codes, c, (70, 72))
    expected, magnitude = F.linear(x.double(), w.double()), F.linear(x.double().abs(), w.double().abs())
    assert_close_in_dtype(y, expected, F.linear(x, w), magnitude, 72)


def test_linear_non_contiguous_input():
    codes, c = _codebook(40, 64, 8, 64)
    x = torch.randn(64, 5).t()
    _close(ops.pq_linear(x, codes, c), reference.pq_linear(x, codes, c))


@pytest.mark.parametrize("per_centroid", [False, True])
def test_int8_centroids(per_centroid):
    K = 64
    codes, _ = _codebook(48, 64, 8, K)
    cq = torch.randint(-128, 128, (K, 8), dtype=torch.int8)
    scale = torch.rand(K if per_centroid else 1) * 0.1 + 0.01
    zp = torch.randint(-5, 5, (K if per_centroid else 1,)).float()
    x = torch.randn(3, 64)
    for path in ("lut", "tile"):
        y = ops.pq_linear(x, codes, cq, centroid_scale=scale, centroid_zero_point=zp, path=path)
        _close(y, reference.pq_linear(x, codes, cq, None, scale, zp))
    w = ops.pq_decode(codes, cq, (48, 64), centroid_scale=scale, centroid_zero_point=zp)
    torch.testing.assert_close(w, reference.pq_decode(codes, cq, (48, 64), scale, zp), rtol=0, atol=0)


@pytest.mark.parametrize("granularity", ["tensor", "token"])
@pytest.mark.parametrize("bits", [8, 4])
def test_activation_fake_quant_fused(granularity, bits):
    codes, c = _codebook(96, 64, 8, 256)
    x = torch.randn(5, 64, requires_grad=True)
    for path in ("lut", "tile"):
        y = ops.pq_linear(x, codes, c, act_bits=bits, act_granularity=granularity, path=path)
        _close(y, reference.pq_linear(x.detach(), codes, c, act_bits=bits, act_granularity=granularity))
    # Straight-through: the gradient to x is as if x were not quantized.
    g = torch.randn(5, 96)
    y.backward(g)
    x2 = x.detach().clone().requires_grad_()
    reference.pq_linear(x2, codes, c, act_bits=bits, act_granularity=granularity).backward(g)
    _close(x.grad, x2.grad)


@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("act_bits", [0, 8])
def test_linear_gradients_equal_autograd_through_reference(transposed, act_bits):
    codes, c0 = _codebook(40, 32, 4, 16)
    codes[:, 0] = 3  # make centroid 15 empty: its gradient must be exactly 0, never NaN
    codes[codes == 15] = 2
    x = torch.randn(6, 32, requires_grad=True)
    c = c0.clone().requires_grad_()
    b = torch.randn(40, requires_grad=True)
    packed = ops.pq_pack_codes(codes) if transposed else codes
    g = torch.randn(6, 40)
    ops.pq_linear(x, packed, c, b, codes_transposed=transposed, act_bits=act_bits).backward(g)
    x2, c2, b2 = (t.detach().clone().requires_grad_() for t in (x, c0, b))
    reference.pq_linear(x2, codes, c2, b2, act_bits=act_bits).backward(g)
    for a, r in ((x.grad, x2.grad), (c.grad, c2.grad), (b.grad, b2.grad)):
        _close(a, r)
    assert torch.equal(c.grad[15], torch.zeros(4))


def test_gradcheck_float64():
    codes, _ = _codebook(6, 8, 4, 5)
    c = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    x = torch.randn(3, 8, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, c, b: ops.pq_linear(x, codes, c, b), (x, c, b))
    idx = torch.tensor([[0, 5], [2, 2]])
    assert torch.autograd.gradcheck(lambda c: ops.pq_embedding(idx, codes, c), (c,))
    assert torch.autograd.gradcheck(lambda c: ops.pq_decode(codes, c, (6, 8)), (c,))


@pytest.mark.parametrize("device", DEVICES)
def test_embedding_matches_reference(device):
    codes, c = _codebook(100, 32, 8, 256, device)
    idx = torch.randint(0, 100, (4, 7), device=device)
    out = ops.pq_embedding(idx, codes, c)
    assert out.shape == (4, 7, 32)
    torch.testing.assert_close(out, reference.pq_embedding(idx, codes, c), rtol=0, atol=0)
    c.requires_grad_()
    g = torch.randn(4, 7, 32, device=device)
    ops.pq_embedding(idx, codes, c).backward(g)
    c2 = c.detach().clone().requires_grad_()
    reference.pq_embedding(idx, codes, c2).backward(g)
    _close(c.grad, c2.grad)
    assert ops.pq_embedding(idx[:0], codes, c).shape == (0, 7, 32)


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    codes, c = _codebook(24, 32, 8, 16, device)
    x = torch.randn(3, 32, device=device)
    for rg in (False, True):
        cc, xx = c.clone().requires_grad_(rg), x.clone().requires_grad_(rg)
        torch.library.opcheck(
            torch.ops.quantnoise.pq_linear.default, (xx, codes, cc, None, None, None, False, 0, "tensor", "auto")
        )
        torch.library.opcheck(
            torch.ops.quantnoise.pq_linear.default,
            (xx, ops.pq_pack_codes(codes), cc, torch.randn(24, device=device), None, None, True, 8, "token", "lut"),
        )
        torch.library.opcheck(torch.ops.quantnoise.pq_decode.default, (codes, cc, [24, 32], None, None, False, None))
        idx = torch.randint(0, 24, (5,), device=device)
        torch.library.opcheck(torch.ops.quantnoise.pq_embedding.default, (idx, codes, cc, None, None, None))


def test_torch_compile_fullgraph():
    lin = PQLinear(torch.randn(16, 8).half(), _codebook(32, 64, 8, 16)[0], torch.randn(32), 64, 32)
    x = torch.randn(4, 64)

    @torch.compile(fullgraph=True)
    def f(x):
        return lin(x).relu().sum()

    out = f(x)
    _close(out, F.linear(x, lin.to_dense().weight, lin.bias).relu().sum())
    out.backward()
    # the gradient values of autograd through the reference, rounded to the float16 centroids
    c32, b32 = lin.centroids.detach().float().requires_grad_(), lin.bias.detach().clone().requires_grad_()
    reference.pq_linear(x, lin.interchange_codes(), c32, b32).relu().sum().backward()
    assert_rounded_close(lin.centroids.grad, c32.grad)
    _close(lin.bias.grad, b32.grad)


@pytest.mark.parametrize(
    "make,match,exc",
    [
        (lambda: ops.pq_linear(torch.randn(2, 16), torch.full((4, 2), 9, dtype=torch.uint8), torch.randn(8, 8)),
         r"codes must be in \[0, n_centroids=8\), got values in \[9, 9\]", ValueError),
        (lambda: ops.pq_linear(torch.randn(2, 15), torch.zeros(4, 2, dtype=torch.uint8), torch.randn(8, 8)),
         r"x must have in_features = n_blocks \* block_size = 2 \* 8 = 16", ValueError),
        (lambda: ops.pq_linear(torch.randn(2, 16), torch.zeros(4, 2, dtype=torch.int64), torch.randn(8, 8)),
         r"codes must be uint8 or int32, got dtype Long", TypeError),
        (lambda: ops.pq_linear(torch.randn(2, 16), torch.zeros(4, 2, dtype=torch.uint8), torch.randn(8, 8).int()),
         r"centroids must be float32, float16, bfloat16, float64 or int8, got dtype Int", TypeError),
        (lambda: ops.pq_linear(torch.randn(2, 16), torch.zeros(4, 2, dtype=torch.uint8), torch.randn(8, 8),
                               torch.randn(3)), r"bias must have shape \[out_features=4\]", ValueError),
        (lambda: ops.pq_linear(torch.randn(2, 16), torch.zeros(4, 2, dtype=torch.uint8), torch.randn(8, 8),
                               path="fast"), r"path must be one of \{'auto', 'lut', 'tile'\}, got 'fast'", ValueError),
        (lambda: ops.pq_linear(torch.randn(2, 16), torch.zeros(4, 2, dtype=torch.uint8),
                               torch.zeros(8, 8, dtype=torch.int8)), r"centroid_scale must be given", ValueError),
        (lambda: ops.pq_decode(torch.zeros(4, 2, dtype=torch.uint8), torch.randn(8, 8), (4, 15)),
         r"n_blocks \* block_size = 16 entries per row, got \[4, 15\]", ValueError),
        (lambda: ops.pq_embedding(torch.tensor([4]), torch.zeros(4, 2, dtype=torch.uint8), torch.randn(8, 8)),
         r"indices must be in \[0, num_embeddings=4\), got values in \[4, 4\]", ValueError),
        (lambda: PQLinear(torch.randn(8, 5), torch.zeros(4, 3, dtype=torch.uint8), None, 16, 4),
         r"row length of weight \(16 for shape \[4, 16\]\), got block_size=5", ValueError),
        (lambda: PQLinear(torch.randn(8, 8), torch.zeros(4, 3, dtype=torch.uint8), None, 16, 4),
         r"codes must have shape \(4, 2\)", ValueError),
    ],
)  # fmt: skip
def test_bad_input_errors(make, match, exc):
    with pytest.raises(exc, match=match):
        make()


# ----------------------------------------------------------------------------------------------- layers


def _local_pq(weight, bs, K):
    """A tiny k-means for layer tests, independent of pq/quantizer.py."""
    blocks = weight.detach().reshape(-1, bs).float()
    c = blocks[torch.randperm(blocks.shape[0])[:K]].clone()
    for _ in range(5):
        codes = torch.cdist(blocks, c).argmin(1)
        for k in range(K):
            sel = blocks[codes == k]
            if len(sel):
                c[k] = sel.mean(0)
    codes = torch.cdist(blocks, c).argmin(1)
    return codes.reshape(weight.shape[0], -1).to(torch.uint8), c


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_pqlinear_forward_backward_and_to_dense(reduction):
    lin = torch.nn.Linear(64, 48)
    codes, c = _local_pq(lin.weight, 8, 32)
    pq = PQLinear(c.half(), codes, lin.bias, 64, 48, grad_reduction=reduction)
    assert pq.centroids.dtype == torch.float16 and pq.block_size == 8 and pq.n_centroids == 32
    assert torch.equal(pq.interchange_codes(), codes)
    x = torch.randn(5, 64)
    dense = pq.to_dense()
    _close(pq(x), dense(x))
    g = torch.randn(5, 48)
    pq(x).backward(g)
    c32 = pq.centroids.detach().float().requires_grad_()
    reference.pq_linear(x, codes, c32, pq.bias.detach()).backward(g)
    expected = c32.grad
    if reduction == "mean":
        expected = expected / torch.bincount(codes.reshape(-1).long(), minlength=32).clamp(min=1).unsqueeze(1)
    assert_rounded_close(pq.centroids.grad, expected)  # float16 centroids: the gradient rounded to float16
    assert torch.isfinite(pq.centroids.grad).all()
    assert "in_features=64, out_features=48, block_size=8, n_centroids=32" in repr(pq)


def test_pqlinear_mean_reduction_empty_cluster_is_zero():
    codes = torch.zeros(4, 2, dtype=torch.uint8)  # only centroid 0 used
    pq = PQLinear(torch.randn(4, 8), codes, None, 16, 4, grad_reduction="mean")
    pq(torch.randn(3, 16)).sum().backward()
    assert torch.isfinite(pq.centroids.grad).all() and torch.equal(pq.centroids.grad[1:], torch.zeros(3, 8))


@pytest.mark.parametrize(
    "kw",
    [
        dict(kernel_size=3, padding=1),
        dict(kernel_size=(3, 2), stride=2, padding=(1, 0), dilation=(1, 2)),
        dict(kernel_size=1),
        dict(kernel_size=3, groups=2, padding=1, padding_mode="reflect"),
        dict(kernel_size=2, padding=1, padding_mode="circular", bias=False),
    ],
    ids=str,
)
def test_pqconv2d_matches_decoded_conv(kw):
    conv = torch.nn.Conv2d(4, 6, **kw)
    row = conv.weight[0].numel()
    bs = 2 if row % 4 else 4
    codes, c = _local_pq(conv.weight, bs, 16)
    args = {k: v for k, v in kw.items() if k != "bias"}
    pq = PQConv2d(c, codes, conv.bias, 4, 6, **args)
    x = torch.randn(2, 4, 9, 8)
    dense = pq.to_dense()
    _close(pq(x), dense(x))
    _close(pq(x[0]), dense(x[0]))


def test_pqembedding_matches_decoded_embedding():
    emb = torch.nn.Embedding(50, 16, padding_idx=3, max_norm=2.0)
    codes, c = _local_pq(emb.weight, 4, 16)
    pq = PQEmbedding(c, codes, 50, 16, padding_idx=3, max_norm=2.0, scale_grad_by_freq=True)
    dense = pq.to_dense()
    dense.scale_grad_by_freq = False
    idx = torch.tensor([[1, 3, 7, 7], [3, 2, 1, 1]])
    out = pq(idx)
    _close(out, dense(idx))
    out.sum().backward()
    # Gradient values: autograd through the reference decode, F.embedding's padding_idx and
    # scale_grad_by_freq, and max_norm applied to the looked-up rows (torch's renorm factor).
    c_ref = c.clone().requires_grad_()
    rows = F.embedding(idx, reference.pq_decode(codes, c_ref, (50, 16)), padding_idx=3, scale_grad_by_freq=True)
    norms = rows.detach().norm(dim=-1, keepdim=True)
    (rows * torch.where(norms > 2.0, 2.0 / (norms + 1e-7), torch.ones_like(norms))).sum().backward()
    _close(pq.centroids.grad, c_ref.grad)
    # The padding row contributes nothing: same gradient as without it in the batch (same counts otherwise).
    pq2 = PQEmbedding(c, codes, 50, 16, padding_idx=3, max_norm=2.0, scale_grad_by_freq=True)
    pq2(torch.tensor([[1, 7, 7], [2, 1, 1]])).sum().backward()
    _close(pq.centroids.grad, pq2.centroids.grad)
    assert "padding_idx=3" in repr(pq)


def test_from_float_uses_quantizer():
    lin = torch.nn.Linear(32, 16)
    pq = PQLinear.from_float(lin, 8, 16, n_iter=3, seed=0)
    assert pq.centroids.dtype == torch.float16 and pq.packed_codes.dtype == torch.uint8
    x = torch.randn(2, 32)
    _close(pq(x), pq.to_dense()(x))


def test_inference_never_allocates_the_dense_weight():
    """Profile CPU allocations during no-grad forwards: none is as large as the dense weight."""
    out_f, in_f = 1024, 1024
    codes, c = _codebook(out_f, in_f, 8, 256)
    lin = PQLinear(c.half(), codes, torch.randn(out_f), in_f, out_f)
    emb = PQEmbedding(c.half(), codes, out_f, in_f)
    dense_bytes = out_f * in_f * 4
    x, idx = torch.randn(4, in_f), torch.randint(0, out_f, (8,))
    for path in ("auto", "lut"):
        lin.path = path
        with torch.no_grad(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                                     profile_memory=True) as prof:  # fmt: skip
            lin(x)
            emb(idx)
        sizes = [e.cpu_memory_usage for e in prof.events() if e.cpu_memory_usage > 0]
        assert sizes, "the profiler recorded no allocation"
        assert max(sizes) < dense_bytes // 8, f"an allocation of {max(sizes)} B (dense weight: {dense_bytes} B)"
