"""Summary of ``make gpu-check``: the test results on this GPU and a short GPU benchmark.

    python tools/gpu_check.py [junit.xml]

Times each CUDA op with CUDA events against a yardstick on the same GPU (a copy of the weight
for block noise, dense ``F.linear`` for noisy_linear and pq_linear) and prints one line per workload.
"""

from __future__ import annotations

import re
import sys
import xml.etree.ElementTree as ET

import torch
import torch.nn.functional as F

from quantnoise_kernels import ops


def _time_ms(fn, iters: int = 50) -> float:
    for _ in range(5):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters


def _tests(junit: str) -> tuple[str, bool]:
    root = ET.parse(junit).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    total, failures, errors, skipped = (int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped"))
    on_gpu = re.compile(r"\[(?:.*-)?cuda(?!-emu)(?:-.*)?\]$")  # the `cuda` device id, not `cuda-emu`
    cuda_run = sum(
        1 for case in suite.iter("testcase") if on_gpu.search(case.get("name", "")) and case.find("skipped") is None
    )
    line = (
        f"tests: {total - failures - errors - skipped} passed, {failures + errors} failed, {skipped} skipped "
        f"({cuda_run} ran on the GPU)"
    )
    return line, failures + errors == 0


def _pq_linear_rows(dev: torch.device) -> list[tuple]:
    """pq_linear (codes packed and fp16 centroids, as PQLinear holds them) against F.linear on the decoded
    weight in x's dtype: the GEMV kernel up to 16 rows, the decode-tile GEMM above (tensor cores for fp16 x,
    and for fp32 x once TF32 is allowed, as cuBLAS then does too). README "PQ kernels" gives the expectation."""
    g = torch.Generator(device=dev).manual_seed(0)
    codes = torch.randint(0, 256, (4096, 512), dtype=torch.uint8, device=dev, generator=g)
    c16 = (torch.randn(256, 8, device=dev, generator=g) / 3).half()
    packed = ops.pq_pack_codes(codes)
    rows = []
    for dtype, tf32 in ((torch.float16, False), (torch.float32, False), (torch.float32, True)):
        w = ops.pq_decode(codes, c16, (4096, 4096), out_dtype=dtype)
        c = c16.to(dtype)
        old = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = tf32
        try:
            for batch in (1, 16, 256, 4096) if not tf32 else (4096,):
                x = torch.randn(batch, 4096, device=dev, dtype=dtype, generator=g)
                ours = _time_ms(lambda x=x, c=c: ops.pq_linear(x, packed, c, codes_transposed=True))
                dense = _time_ms(lambda x=x, w=w: F.linear(x, w))
                err = (ops.pq_linear(x, packed, c, codes_transposed=True) - F.linear(x, w)).abs().max().item()
                name = f"pq_linear 4096x4096 {str(dtype)[6:]}{' tf32' if tf32 else ''} batch {batch}"
                rows.append((name, ours, "F.linear", dense, f"max |diff| {err:.2g}"))
        finally:
            torch.backends.cuda.matmul.allow_tf32 = old
    return rows


def main() -> int:
    if not torch.cuda.is_available():
        print("gpu-check: no CUDA device visible to torch")
        return 1
    dev = torch.device("cuda")
    props = torch.cuda.get_device_properties(dev)
    print(
        f"\n=== gpu-check: {props.name} (sm_{props.major}{props.minor}), torch {torch.__version__}, "
        f"CUDA {torch.version.cuda} ==="
    )
    ok = True
    if len(sys.argv) > 1:
        line, ok = _tests(sys.argv[1])
        print(line)
    rows = []
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        w = torch.randn(4096, 4096, device=dev, dtype=dtype)
        seed = torch.tensor(1, device=dev)
        ours = _time_ms(lambda w=w, s=seed: ops.block_noise(w, 0.1, 8, s))
        clone = _time_ms(w.clone)
        gbs = 2 * w.numel() * w.element_size() / ours / 1e6
        rows.append((f"block_noise 4096x4096 {dtype}", ours, "weight.clone()", clone, f"{gbs:.0f} GB/s"))
    x = torch.randn(64, 4096, device=dev, dtype=torch.float16)
    w = torch.randn(4096, 4096, device=dev, dtype=torch.float16)
    seed = torch.tensor(1, device=dev)
    ours = _time_ms(lambda: ops.noisy_linear(x, w, None, 0.1, 8, seed))
    dense = _time_ms(lambda: F.linear(x, w))
    rows.append(("noisy_linear 64x4096 @ 4096x4096 fp16", ours, "F.linear", dense, ""))
    rows += _pq_linear_rows(dev)
    print(f"{'workload':<42} {'ours ms':>9} {'yardstick':>16} {'ms':>9} {'ratio':>7}")
    for name, t, yname, y, extra in rows:
        print(f"{name:<42} {t:>9.4f} {yname:>16} {y:>9.4f} {y / t:>6.2f}x {extra}")
    print("gpu-check:", "OK" if ok else "FAILED (see the test output above)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
