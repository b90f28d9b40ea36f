"""PQ training without the dense weight: pq_linear_backward, pq_embedding_backward, and the layers'
gradients through them, against autograd through the plain-PyTorch reference (decode + F.linear)."""

from __future__ import annotations

import pytest
import tolerances
import torch
import torch.nn.functional as F
from devices import device_params, runs_cuda_kernel
from pq_reference import close_rel as _close
from pq_reference import linear_grads as _reference_grads

from quantnoise_kernels import ops, reference
from quantnoise_kernels.pq import PQConv2d, PQEmbedding, PQLinear

DEVICES = device_params()


# (M rows, out, in, bs, K): batch 1, the row-chunk edges, odd sizes, int32 codes with K > 256.
CASES = [(1, 64, 64, 8, 256), (5, 33, 40, 8, 100), (8, 48, 32, 4, 16), (17, 130, 72, 9, 64),
         (33, 64, 96, 16, 300), (3, 20, 24, 3, 7)]  # fmt: skip


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("transposed", [False, True])
def test_linear_backward_matches_autograd_of_reference(device, case, transposed):
    m, out, inf, bs, K = case
    codes = torch.randint(0, K, (out, inf // bs), device=device).to(torch.uint8 if K <= 256 else torch.int32)
    c = torch.randn(K, bs, device=device)
    x, g = torch.randn(m, inf, device=device), torch.randn(m, out, device=device)
    packed = ops.pq_pack_codes(codes) if transposed else codes
    gx, gc = ops.pq_linear_backward(g, x, packed, c, codes_transposed=transposed)
    rx, rc = _reference_grads(g, x, codes, c)
    assert gx.shape == x.shape and gx.dtype == torch.float32 and gc.shape == (K, bs) and gc.dtype == torch.float32
    _close(gx, rx)
    _close(gc, rc, rtol=1e-5 if not runs_cuda_kernel(device) else 2e-5)  # CUDA: float atomics reorder sums


@pytest.mark.parametrize("device", DEVICES)
def test_linear_backward_flags_batch_dims_and_empty(device):
    codes = torch.randint(0, 16, (24, 4), dtype=torch.uint8, device=device)
    c = torch.randn(16, 8, device=device)
    x, g = torch.randn(2, 3, 32, device=device), torch.randn(2, 3, 24, device=device)
    gx, gc = ops.pq_linear_backward(g, None, codes, c, centroids_grad=False)
    assert gx.shape == (2, 3, 32) and gc.shape == (0,)
    _close(gx, _reference_grads(g.reshape(6, 24), x.reshape(6, 32), codes, c)[0].reshape(2, 3, 32))
    gx, gc = ops.pq_linear_backward(g, x, codes, c, input_grad=False)
    assert gx.shape == (0,) and gc.shape == (16, 8)
    _close(gc, _reference_grads(g.reshape(6, 24), x.reshape(6, 32), codes, c)[1])
    gx, gc = ops.pq_linear_backward(g[:0], x[:0], codes, c)
    assert gx.shape == (0, 3, 32) and torch.equal(gc, torch.zeros(16, 8, device=device))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_linear_backward_dtypes(dtype):
    codes = torch.randint(0, 32, (40, 8), dtype=torch.uint8)
    c = torch.randn(32, 8, dtype=dtype)
    x, g = torch.randn(6, 64, dtype=dtype), torch.randn(6, 40, dtype=dtype)
    gx, gc = ops.pq_linear_backward(g, x, codes, c)
    assert gx.dtype == dtype and gc.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    rx, rc = _reference_grads(g, x, codes, c)
    tol = 1e-12 if dtype == torch.float64 else 1e-5  # computed in float32 from the low-precision inputs
    _close(gc, rc, tol)
    _close(gx, rx, tol if dtype == torch.float64 else tolerances.tol(dtype))  # rounded to the dtype at the end


def test_linear_backward_int8_centroids_and_non_contiguous():
    K = 64
    codes = torch.randint(0, K, (48, 8), dtype=torch.uint8)
    cq = torch.randint(-128, 128, (K, 8), dtype=torch.int8)
    scale, zp = torch.rand(K) * 0.1 + 0.01, torch.randint(-5, 5, (K,)).float()
    g = torch.randn(48, 5).t()  # non-contiguous
    gx, _ = ops.pq_linear_backward(g, None, codes, cq, centroid_scale=scale, centroid_zero_point=zp,
                                   centroids_grad=False)  # fmt: skip
    w = reference.pq_decode(codes, cq, (48, 64), scale, zp).double()
    _close(gx, g.double() @ w)


def test_pq_linear_autograd_uses_the_codes_and_matches_reference():
    """pq_linear's registered backward: x, float centroids and bias; empty clusters get exactly 0."""
    codes = torch.randint(0, 15, (40, 8), dtype=torch.uint8)  # centroid 15 unused
    x = torch.randn(6, 32, requires_grad=True)
    c = torch.randn(16, 4, requires_grad=True)
    b = torch.randn(40, requires_grad=True)
    g = torch.randn(6, 40)
    ops.pq_linear(x, ops.pq_pack_codes(codes), c, b, codes_transposed=True).backward(g)
    x2, c2, b2 = (t.detach().clone().requires_grad_() for t in (x, c, b))
    reference.pq_linear(x2, codes, c2, b2).backward(g)
    for a, r in ((x.grad, x2.grad), (c.grad, c2.grad), (b.grad, b2.grad)):
        _close(a, r)
    assert torch.equal(c.grad[15], torch.zeros(4))


@pytest.mark.parametrize("device", DEVICES)
def test_embedding_backward_matches_index_add(device):
    codes = torch.randint(0, 200, (100, 6), device=device).to(torch.uint8)
    idx = torch.randint(0, 100, (4, 7), device=device)
    g = torch.randn(4, 7, 48, device=device)
    gc = ops.pq_embedding_backward(g, idx, codes, 256)
    expected = torch.zeros(256, 8, dtype=torch.float64, device=device)
    expected.index_add_(0, codes[idx].reshape(-1).long(), g.double().reshape(-1, 8))
    assert gc.shape == (256, 8) and gc.dtype == torch.float32
    _close(gc, expected, rtol=1e-5 if not runs_cuda_kernel(device) else 2e-5)
    assert torch.equal(gc[200:], torch.zeros(56, 8, device=device))
    assert torch.equal(ops.pq_embedding_backward(g[:0], idx[:0], codes, 256), torch.zeros(256, 8, device=device))


def test_embedding_backward_int32_indices_and_codes():
    codes = torch.randint(0, 300, (50, 4), dtype=torch.int32)
    idx = torch.randint(0, 50, (9,), dtype=torch.int32)
    g = torch.randn(9, 16, dtype=torch.float64)
    gc = ops.pq_embedding_backward(g, idx, codes, 300)
    expected = torch.zeros(300, 4, dtype=torch.float64).index_add_(0, codes[idx.long()].reshape(-1).long(),
                                                                   g.reshape(-1, 4))  # fmt: skip
    assert gc.dtype == torch.float64
    _close(gc, expected, rtol=1e-12)


def test_opcheck_backward_ops():
    codes = torch.randint(0, 16, (24, 4), dtype=torch.uint8)
    c = torch.randn(16, 8)
    x, g = torch.randn(3, 32), torch.randn(3, 24)
    op = torch.ops.quantnoise.pq_linear_backward.default
    torch.library.opcheck(op, (g, x, codes, c, None, None, False, True, True))
    torch.library.opcheck(op, (g, None, ops.pq_pack_codes(codes), c, None, None, True, True, False))
    torch.library.opcheck(op, (g, x, codes, c, None, None, False, False, True))
    idx = torch.randint(0, 24, (5,))
    torch.library.opcheck(torch.ops.quantnoise.pq_embedding_backward.default, (torch.randn(5, 32), idx, codes, 16))


def test_gradcheck_float64_through_the_backward_op():
    codes = torch.randint(0, 5, (6, 2), dtype=torch.uint8)
    c = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    x = torch.randn(3, 8, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, dtype=torch.float64, requires_grad=True)
    packed = ops.pq_pack_codes(codes)
    assert torch.autograd.gradcheck(lambda x, c, b: ops.pq_linear(x, packed, c, b, codes_transposed=True), (x, c, b))
    idx = torch.tensor([[0, 5], [2, 2]])
    assert torch.autograd.gradcheck(lambda c: ops.pq_embedding(idx, codes, c), (c,))


@pytest.mark.parametrize(
    "make,match,exc",
    [
        (lambda: ops.pq_linear_backward(torch.randn(2, 5), torch.randn(2, 16), torch.zeros(4, 2, dtype=torch.uint8),
                                        torch.randn(8, 8)), r"grad_out must have shape \[\.\.\., 4\]", ValueError),
        (lambda: ops.pq_linear_backward(torch.randn(2, 4), torch.randn(3, 16), torch.zeros(4, 2, dtype=torch.uint8),
                                        torch.randn(8, 8)), r"x must have shape \[2, 16\]", ValueError),
        (lambda: ops.pq_linear_backward(torch.randn(2, 4), None, torch.zeros(4, 2, dtype=torch.uint8),
                                        torch.randn(8, 8)), r"x must be given when centroids_grad", ValueError),
        (lambda: ops.pq_linear_backward(torch.randn(2, 4), torch.randn(2, 16), torch.zeros(4, 2, dtype=torch.uint8),
                                        torch.zeros(8, 8, dtype=torch.int8), centroid_scale=torch.ones(1)),
         r"centroids_grad needs float centroids", ValueError),
        (lambda: ops.pq_linear_backward(torch.randn(2, 4).long(), None, torch.zeros(4, 2, dtype=torch.uint8),
                                        torch.randn(8, 8), centroids_grad=False), r"grad_out must be float", TypeError),
        (lambda: ops.pq_embedding_backward(torch.randn(3, 16), torch.tensor([0, 1, 4]),
                                           torch.zeros(4, 2, dtype=torch.uint8), 8),
         r"indices must be in \[0, num_embeddings=4\)", ValueError),
        (lambda: ops.pq_embedding_backward(torch.randn(3, 15), torch.tensor([0, 1, 2]),
                                           torch.zeros(4, 2, dtype=torch.uint8), 8),
         r"grad_out must have shape \[3\] \+ \[2 \* block_size\]", ValueError),
        (lambda: ops.pq_embedding_backward(torch.randn(3, 16), torch.tensor([0, 1, 2]),
                                           torch.full((4, 2), 9, dtype=torch.uint8), 8),
         r"codes must be in \[0, n_centroids=8\)", ValueError),
    ],
)  # fmt: skip
def test_backward_bad_input_errors(make, match, exc):
    with pytest.raises(exc, match=match):
        make()


# ----------------------------------------------------------------------------------------------- layers


def _peak_extra_bytes(fn) -> int:
    """Peak of (bytes allocated - bytes freed) by torch's CPU allocator during ``fn`` (profiler events)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
    assert events, "the profiler recorded no allocation"
    running = peak = 0
    for _, nbytes in events:
        running += nbytes
        peak = max(peak, running)
    return peak


def test_finetuning_step_never_builds_the_dense_weight():
    """A PQLinear(1024, 1024) training step (fwd + bwd to x, centroids, bias): peak extra memory far
    below the 4 MiB dense fp32 weight (the dense-decode step needs 2 of them: W and grad W)."""
    out_f = in_f = 1024
    codes = torch.randint(0, 256, (out_f, in_f // 8), dtype=torch.uint8)
    lin = PQLinear(torch.randn(256, 8).half(), codes, torch.randn(out_f), in_f, out_f)
    x, g = torch.randn(32, in_f, requires_grad=True), torch.randn(32, out_f)

    def step():
        lin(x).backward(g)

    step()  # warm-up: lazily created state is not the step's
    dense = out_f * in_f * 4
    peak = _peak_extra_bytes(step)
    assert peak < dense // 4, f"peak extra {peak} B (dense weight {dense} B)"
    assert torch.isfinite(lin.centroids.grad).all() and x.grad is not None
    dense_peak = _peak_extra_bytes(lambda: reference.pq_linear(x, codes, lin.centroids.float()).backward(g))
    assert dense_peak > dense, "the dense-decode step should hold the dense weight (the yardstick is wrong)"


def test_pqconv2d_gradients_match_decoded_conv():
    conv = torch.nn.Conv2d(4, 6, 3, padding=1, groups=2)
    codes = torch.randint(0, 16, (6, 2 * 9 // 3), dtype=torch.uint8)
    c = torch.randn(16, 3)
    pq = PQConv2d(c, codes, conv.bias, 4, 6, 3, padding=1, groups=2)
    x = torch.randn(2, 4, 7, 6, requires_grad=True)
    g = torch.randn(2, 6, 7, 6)
    pq(x).backward(g)
    x2 = x.detach().clone().requires_grad_()
    c2 = c.clone().requires_grad_()
    w = reference.pq_decode(codes, c2, (6, 2, 3, 3))
    F.conv2d(x2, w, conv.bias, padding=1, groups=2).backward(g)
    _close(x.grad, x2.grad)
    _close(pq.centroids.grad, c2.grad)


def test_pqembedding_gradient_matches_decoded_embedding():
    codes = torch.randint(0, 32, (60, 4), dtype=torch.uint8)
    c = torch.randn(32, 4)
    emb = PQEmbedding(c, codes, 60, 16)
    idx = torch.randint(0, 60, (3, 9))
    g = torch.randn(3, 9, 16)
    emb(idx).backward(g)
    c2 = c.clone().requires_grad_()
    reference.pq_embedding(idx, codes, c2).backward(g)
    _close(emb.centroids.grad, c2.grad)


def test_flow_quant_noise_train_quantize_finetune_save_load(tmp_path):
    """The user's flow: train with Quant-Noise, iPQ every layer, finetune the centroids (the backward from
    the codes, checked against the dense-decode gradient at every step), save, load, run."""
    from quantnoise_kernels import quant_noise
    from quantnoise_kernels.noise import remove_quant_noise
    from quantnoise_kernels.pq import SizeTracker, load_compressed, quantize_model_, save_compressed

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        quant_noise(torch.nn.Linear(32, 64), 0.1, 8), torch.nn.ReLU(), quant_noise(torch.nn.Linear(64, 16), 0.1, 8)
    )
    x, target = torch.randn(64, 32), torch.randn(64, 16)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(5):
        opt.zero_grad()
        F.mse_loss(model(x), target).backward()
        opt.step()
    model.eval()
    for i in (0, 2):
        remove_quant_noise(model[i])  # the plain layers again, with their trained weights
    quantize_model_(model, SizeTracker(model), [r"\d"], {"Linear": ("in_features", {"*": 8})},
                    {"Linear": ("in_features", {"*": 16})}, n_iter=5, verbose=False, seed=0)  # fmt: skip
    assert all(isinstance(model[i], PQLinear) for i in (0, 2))
    model.train()
    opt = torch.optim.SGD([p for n, p in model.named_parameters() if "centroids" in n], lr=0.05)
    losses = []
    for _ in range(4):
        opt.zero_grad()
        loss = F.mse_loss(model(x), target)
        loss.backward()
        dense = [(m, m.centroids.detach().float().requires_grad_()) for m in (model[0], model[2])]
        h = reference.pq_linear(x, dense[0][0].interchange_codes(), dense[0][1], model[0].bias.detach()).relu()
        out = reference.pq_linear(h, dense[1][0].interchange_codes(), dense[1][1], model[2].bias.detach())
        F.mse_loss(out, target).backward()
        for m, c in dense:  # float32 sums over every (row, block) of the layer, in another order
            tolerances.assert_rounded_close(m.centroids.grad, c.grad, n=x.shape[0] * m.interchange_codes().numel())
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    save_compressed(model, tmp_path / "model.pt")
    fresh = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 16))
    load_compressed(fresh, tmp_path / "model.pt")
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), model(x))
