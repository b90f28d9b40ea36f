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


def _fake_quant_grid(w: torch.Tensor, per_channel: bool) -> dict:
    """A min/max int8 grid of ``w`` (narrowed by 0.7, so some entries are clamped) as op keyword arguments."""
    flat = w.float().reshape(w.shape[0], -1)
    lo = (flat.amin(1) if per_channel else flat.amin().reshape(1)).clamp(max=0)
    hi = (flat.amax(1) if per_channel else flat.amax().reshape(1)).clamp(min=0)
    scale = ((hi - lo) / 255 * 0.7).clamp(min=1e-8)
    zp = torch.clamp(-torch.round(lo / scale), 0, 255).to(torch.int32)
    return {"noise": "fake_quant", "scale": scale, "zero_point": zp, "quant_min": 0, "quant_max": 255}


def _fake_quant_cases() -> list[tuple[str, Callable[[str], object]]]:
    cases = []
    for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        for per_channel, bs in ((False, 1), (True, 4)):
            w = torch.randn(67, 24, dtype=dtype)
            kw = _fake_quant_grid(w, per_channel)
            name = f"fake_quant {dtype} per_channel={per_channel}"
            cases.append((name, lambda d, w=w, kw=kw, bs=bs: ops.block_noise(w.to(d), 0.3, bs, 5, **_on(d, kw))))
    return cases


def _block_noise_backward_cases() -> list[tuple[str, Callable[[str], object]]]:
    """The weight gradient of every kind, straight-through or not, host and device seeds, rows."""

    def run(g, w, seed, bs, st, noise="drop", grid=None, rows=None, device_seed=False):
        def call(d):
            grid_args = [t.to(d) for t in (grid["scale"], grid["zero_point"])] + [0, 255] if grid else []
            s = seed.to(d) if device_seed else seed
            r = rows.to(d) if rows is not None else None
            return torch.ops.quantnoise.block_noise_backward.default(
                g.to(d), w.to(d), s, 0.3, bs, 3, True, st, noise, None, *grid_args, rows=r
            )

        return call

    cases = []
    for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        w, g = torch.randn(67, 24, dtype=dtype), torch.randn(67, 24, dtype=dtype)
        seed = torch.tensor(int(torch.randint(0, 2**62, ())))
        grid = _fake_quant_grid(w, per_channel=True)
        for st in (True, False):
            cases.append((f"drop {dtype} st={st}", run(g, w, seed, 8, st)))
            cases.append((f"drop {dtype} device seed st={st}", run(g, w, seed, 8, st, device_seed=True)))
            cases.append((f"fake_quant {dtype} st={st}", run(g, w, seed, 1, st, "fake_quant", grid)))
    w, g, rows = torch.randn(5, 16), torch.randn(5, 16), torch.tensor([3, 49, 0, 3, 17])
    cases.append(("rows", run(g, w, torch.tensor(11), 4, False, rows=rows)))
    return cases


def _noisy_linear_cases() -> list[tuple[str, Callable[[str], object]]]:
    x, w, b = torch.randn(5, 7, 64), torch.randn(48, 64), torch.randn(48)
    kw = _fake_quant_grid(w, True)
    return [
        ("forward", lambda d: ops.noisy_linear(x.to(d), w.to(d), b.to(d), 0.25, 8, 41, offset=1)),
        ("fake_quant", lambda d: ops.noisy_linear(x.to(d), w.to(d), b.to(d), 0.25, 1, 41, **_on(d, kw))),
    ]


def _noisy_linear_backward_input_cases() -> list[tuple[str, Callable[[str], object]]]:
    g, w = torch.randn(5, 7, 48), torch.randn(48, 64)
    op = torch.ops.quantnoise.noisy_linear_backward_input
    kw = _fake_quant_grid(w, per_channel=True)
    kind = lambda d: (kw["noise"], None, kw["scale"].to(d), kw["zero_point"].to(d), 0, 255)  # noqa: E731
    return [
        ("grad input", lambda d: op(g.to(d), w.to(d), torch.tensor(41), 0.25, 8, 1, True)),
        ("fake_quant", lambda d: op(g.to(d), w.to(d), torch.tensor(41), 0.25, 1, 1, True, *kind(d))),
    ]


def _kmeans_assign_cases() -> list[tuple[str, Callable[[str], object]]]:
    cases = []
    for b, n, k, d in ((1, 300, 16, 8), (3, 257, 100, 5), (2, 40, 700, 33)):
        x, c = torch.randn(b, n, d), torch.randn(b, k, d)
        cases.append((f"B={b} N={n} K={k} D={d}", lambda dev, x=x, c=c: ops.kmeans_assign(x.to(dev), c.to(dev))))
    return cases


def _kmeans_update_cases() -> list[tuple[str, Callable[[str], object]]]:
    x, codes = torch.randn(2, 500, 8), torch.randint(0, 20, (2, 500))
    return [("B=2 N=500 K=20 D=8", lambda dev: ops.kmeans_update(x.to(dev), codes.to(dev), 20))]


def _weighted_h(b: int, g: int, d: int, diag: bool) -> torch.Tensor:
    if diag:
        return torch.rand(b, g, d) + 0.1
    a = torch.randn(b, g, d, d)
    return a @ a.transpose(-1, -2) + 0.1 * torch.eye(d)


def _kmeans_assign_weighted_cases() -> list[tuple[str, Callable[[str], object]]]:
    cases = []
    for b, g, m, k, d, diag in ((1, 3, 50, 16, 8, False), (2, 2, 37, 40, 5, True)):
        x, c, h = torch.randn(b, g * m, d), torch.randn(b, k, d), _weighted_h(b, g, d, diag)
        run = lambda dev, x=x, c=c, h=h: ops.kmeans_assign_weighted(x.to(dev), c.to(dev), h.to(dev))  # noqa: E731
        cases.append((f"B={b} G={g} N={g * m} K={k} D={d} diag={diag}", run))
    return cases


def _kmeans_update_weighted_cases() -> list[tuple[str, Callable[[str], object]]]:
    x, codes, h = torch.randn(2, 120, 6), torch.randint(0, 9, (2, 120)), _weighted_h(2, 4, 6, False)
    return [("B=2 N=120 G=4 K=9 D=6", lambda dev: ops.kmeans_update_weighted(x.to(dev), codes.to(dev), h.to(dev), 9))]


def _kmeanspp_cases(op: str):
    def cases() -> list[tuple[str, Callable[[str], object]]]:
        x = torch.randn(2, 2100, 6)
        first, u = torch.tensor([3, 2099]), torch.rand(2, 20, dtype=torch.float64)
        if op == "kmeanspp_init":
            return [
                (f"{dtype}", lambda d, dt=dtype: ops.kmeanspp_init(x.to(dt).to(d), first.to(d), u.to(d)))
                for dtype in (torch.float32, torch.bfloat16)
            ]
        dmin = torch.rand(2, 2100) * 10
        d_new, cw = ops.kmeanspp_step(x, dmin, x[:, 5])
        if op == "kmeanspp_step":
            return [("B=2 N=2100 D=6", lambda d: ops.kmeanspp_step(x.to(d), dmin.to(d), x[:, 5].to(d)))]
        target = cw.sum(1) * torch.tensor([0.3, 0.8], dtype=torch.float64)
        return [("B=2 N=2100", lambda d: ops.kmeanspp_sample(d_new.to(d), cw.to(d), target.to(d)))]

    return cases


def _int8_codebook(k: int, bs: int, per_centroid: bool) -> dict:
    """int8 centroids with their scale and zero point (1 or K of each)."""
    n = k if per_centroid else 1
    return {
        "centroids": torch.randint(-128, 128, (k, bs), dtype=torch.int8),
        "centroid_scale": torch.rand(n) * 0.1 + 0.01,
        "centroid_zero_point": torch.randint(-5, 5, (n,)).float(),
    }


def _on(d: str, kw: dict) -> dict:
    return {key: v.to(d) if isinstance(v, torch.Tensor) else v for key, v in kw.items()}


def _pq_codebooks(out_f: int, in_f: int, bs: int) -> list[tuple[str, torch.Tensor, dict]]:
    """(name, codes, centroid kwargs): codes of both dtypes, float and int8 centroids."""
    k = 256
    codes = torch.randint(0, k, (out_f, in_f // bs), dtype=torch.uint8)
    wide = torch.randint(0, 300, (out_f, in_f // bs), dtype=torch.int32)  # int32 codes, K > 256
    return [
        ("uint8 codes", codes, {"centroids": torch.randn(k, bs)}),
        ("int32 codes, K < 256", codes.int(), {"centroids": torch.randn(k, bs)}),
        ("int32 codes, K = 300", wide, {"centroids": torch.randn(300, bs)}),
        ("int8 centroids, per-tensor scale", codes, _int8_codebook(k, bs, False)),
        ("int8 centroids, per-centroid scale", codes, _int8_codebook(k, bs, True)),
    ]


def _pq_run(op: str, codes: torch.Tensor, codebook: dict, **kw) -> Callable[[str], object]:
    """The op on fixed CPU inputs moved to a device."""
    out_f, in_f = 48, 64
    x, bias, idx = torch.randn(3, 5, in_f), torch.randn(out_f), torch.randint(0, out_f, (4, 7))

    def run(d: str):
        if op == "pq_decode":
            return ops.pq_decode(codes.to(d), shape=(out_f, in_f), **_on(d, codebook))
        if op == "pq_embedding":
            return ops.pq_embedding(idx.to(d), codes.to(d), **_on(d, codebook))
        return ops.pq_linear(x.to(d), codes.to(d), bias=bias.to(d), **_on(d, codebook), **kw)

    return run


def _pq_backward_cases(op: str) -> list[tuple[str, Callable[[str], object]]]:
    """The backward ops from codes (float centroids, uint8 codes)."""
    out_f, in_f, bs, k = 48, 64, 8, 256
    codes, c = torch.randint(0, k, (out_f, in_f // bs), dtype=torch.uint8), torch.randn(k, bs)
    x, idx = torch.randn(3, 5, in_f), torch.randint(0, out_f, (4, 7))
    if op == "pq_embedding_backward":
        g = torch.randn(4, 7, in_f)
        return [("uint8 codes", lambda d: ops.pq_embedding_backward(g.to(d), idx.to(d), codes.to(d), k))]
    g, packed = torch.randn(3, 5, out_f), ops.pq_pack_codes(codes)
    return [
        ("both grads", lambda d: ops.pq_linear_backward(g.to(d), x.to(d), codes.to(d), c.to(d))),
        ("packed, grad_x", lambda d: ops.pq_linear_backward(g.to(d), None, packed.to(d), c.to(d),
                                                             codes_transposed=True, centroids_grad=False)),
    ]  # fmt: skip


def _pq_cases(op: str):
    def cases() -> list[tuple[str, Callable[[str], object]]]:
        if op.endswith("_backward"):
            return _pq_backward_cases(op)
        books = _pq_codebooks(48, 64, 8)
        if op != "pq_linear":
            return [(name, _pq_run(op, codes, cb)) for name, codes, cb in books]
        found = [
            (f"{name}, path={p}", _pq_run(op, codes, cb, path=p))
            for name, codes, cb in books
            for p in ("auto", "lut", "tile")
        ]
        _, codes, cb = books[0]  # activation fake-quant: both granularities, both kernels
        for bits, gran, p in [(8, "tensor", "lut"), (4, "token", "lut"), (8, "token", "tile"), (4, "tensor", "tile")]:
            run = _pq_run(op, codes, cb, act_bits=bits, act_granularity=gran, path=p)
            found.append((f"act_bits={bits} {gran}, path={p}", run))
        return found

    return cases


# op name -> cases; each case maps a device to the op's output(s) on inputs built once on the CPU.
CASES: dict[str, Callable[[], list[tuple[str, Callable[[str], object]]]]] = {
    "block_noise": lambda: _block_noise_cases() + _fake_quant_cases(),
    "block_noise_backward": _block_noise_backward_cases,
    "noisy_linear": _noisy_linear_cases,
    "noisy_linear_backward_input": _noisy_linear_backward_input_cases,
    "kmeans_assign": _kmeans_assign_cases,
    "kmeans_update": _kmeans_update_cases,
    "kmeans_assign_weighted": _kmeans_assign_weighted_cases,
    "kmeans_update_weighted": _kmeans_update_weighted_cases,
    "kmeanspp_init": _kmeanspp_cases("kmeanspp_init"),
    "kmeanspp_step": _kmeanspp_cases("kmeanspp_step"),
    "kmeanspp_sample": _kmeanspp_cases("kmeanspp_sample"),
    "pq_decode": _pq_cases("pq_decode"),
    "pq_embedding": _pq_cases("pq_embedding"),
    "pq_linear": _pq_cases("pq_linear"),
    "pq_linear_backward": _pq_cases("pq_linear_backward"),
    "pq_embedding_backward": _pq_cases("pq_embedding_backward"),
}
# How close each op must be: block noise is bit-identical; reductions may differ in summation order.
TOLERANCE: dict[str, dict] = {
    "block_noise": {"rtol": 0, "atol": 0},
    "block_noise_backward": {"rtol": 0, "atol": 0},  # element-wise, the same mask and clamp
    "kmeans_assign": {"rtol": 1e-5, "atol": 1e-5},  # codes exact (ints); distances up to rounding
    "kmeans_update": {"rtol": 1e-5, "atol": 1e-5},  # float atomics sum in arrival order
    "kmeans_assign_weighted": {"rtol": 0, "atol": 0},  # the same fmaf chains on both devices
    "kmeans_update_weighted": {"rtol": 1e-5, "atol": 1e-4},  # CPU fp64, CUDA float atomics
    "kmeanspp_init": {"rtol": 0, "atol": 0},  # one rule (kmeanspp.h) on every device
    "kmeanspp_step": {"rtol": 0, "atol": 0},
    "kmeanspp_sample": {"rtol": 0, "atol": 0},
    "pq_decode": {"rtol": 0, "atol": 0},
    "pq_embedding": {"rtol": 0, "atol": 0},
    "pq_linear": {"rtol": 1e-4, "atol": 1e-4},  # summation order differs between kernels
    "pq_linear_backward": {"rtol": 1e-4, "atol": 1e-4},  # float atomics sum in arrival order
    "pq_embedding_backward": {"rtol": 1e-5, "atol": 1e-5},
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


@pytest.mark.skipif("cuda-emu" not in selected_devices(), reason="cuda-emu not in QUANTNOISE_TEST_DEVICE")
@pytest.mark.parametrize("noise", ["drop", "centroid", "fake_quant"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_emulated_device_resident_seed_matches_cpu(noise, dtype):
    """block_noise's device-seed branch (the kernel reads the seed's two 32-bit words itself).
    Emulated tensors are CPU tensors, so the op always takes the host-seed branch: a test op
    launches the kernels as block_noise.cu does for a seed on the weight's device."""
    from emu import load

    load()
    w = torch.randn(129, 72, dtype=dtype)
    c = torch.randn(40, 8, dtype=dtype) if noise == "centroid" else None
    grid = _fake_quant_grid(w, per_channel=True) if noise == "fake_quant" else {"noise": noise}
    grid_args = [grid.get(k) for k in ("scale", "zero_point")] + ([0, 255] if noise == "fake_quant" else [])
    for seed in (int(torch.randint(2**32, 2**62, ())), 5, -3):  # both words, low word only, negative
        seed_t = torch.tensor(seed)
        got = torch.ops.quantnoise_emu_test.block_noise_device_seed(w, seed_t, 0.3, 8, 3, True, noise, c, *grid_args)
        expected = ops.block_noise(w, 0.3, 8, seed, offset=3, centroids=c, **grid)
        assert torch.equal(got, expected), f"seed {seed}"
