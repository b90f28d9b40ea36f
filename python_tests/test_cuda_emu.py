"""The CUDA emulation harness (csrc/emu/cuda_emu.h): coverage, its primitives, and planted bugs.

Op-level checks live in each op's test file (the ``cuda-emu`` device) and in test_cuda_vs_cpu.py;
this file checks the harness itself, so a broken harness cannot pass those vacuously.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from devices import selected_devices
from emu import ROOT, cuda_emulation, emulated_ops, load, ops_with_cuda_kernels, sanitized, set_schedule

from quantnoise_kernels import ops, reference

SCHEDULES = ["forward", "reverse", "random"]
pytestmark = pytest.mark.skipif("cuda-emu" not in selected_devices(), reason="cuda-emu not in QUANTNOISE_TEST_DEVICE")


@pytest.fixture(autouse=True)
def _default_schedule():
    load()
    yield
    set_schedule("random", 0)


def test_every_cuda_kernel_is_emulated():
    """Each op registered in csrc/cuda/*.cu needs its csrc/emu/<op>_emu.cpp (see csrc/README.md)."""
    cuda_ops = ops_with_cuda_kernels()
    assert "block_noise" in cuda_ops
    missing = sorted(set(cuda_ops) - set(emulated_ops()))
    assert not missing, f"CUDA kernels without an emulated launcher in csrc/emu/: {missing}"


def test_cuda_emu_device_goes_through_the_emulator():
    count = torch.ops.quantnoise_emu_test.launch_count
    w = torch.randn(16, 32)
    before = count()
    ops.block_noise(w, 0.5, 8, 1)
    assert count() == before, "outside cuda_emulation() the CPU kernel runs"
    with cuda_emulation() as names:
        assert "block_noise" in names
        ops.block_noise(w, 0.5, 8, 1)
    assert count() == before + 1


def test_op_without_emulated_kernel_fails_loudly(monkeypatch):
    """cuda-emu tests of an op lacking csrc/emu/<op>_emu.cpp must not silently rerun the CPU kernel."""
    import emu

    monkeypatch.setattr(emu, "emulated_ops", lambda: [])
    with emu.cuda_emulation():
        with pytest.raises(NotImplementedError, match=r"add csrc/emu/block_noise_emu\.cpp"):
            ops.block_noise(torch.randn(4, 8), 0.5, 4, 1)
    assert ops.block_noise(torch.randn(4, 8), 0.5, 4, 1).shape == (4, 8), "the CPU kernel is back"


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("shape,block_size", [((70, 48), 8), ((9, 7, 3, 3), 9), ((3, 1000), 4)])
def test_block_noise_emulated_is_bit_identical_to_cpu(schedule, dtype, shape, block_size):
    set_schedule(schedule, seed=3)
    w = torch.randn(shape, dtype=dtype)
    seed = int(torch.randint(0, 2**62, ()))
    cpu = ops.block_noise(w, 0.3, block_size, seed, offset=2)
    with cuda_emulation():
        emulated = ops.block_noise(w, 0.3, block_size, seed, offset=2)
    assert torch.equal(emulated, cpu)
    torch.testing.assert_close(emulated, reference.block_noise(w, 0.3, block_size, seed, offset=2), rtol=0, atol=0)


def _warp_reference(x: np.ndarray, threads: int) -> tuple[np.ndarray, np.ndarray, int, np.ndarray]:
    """What warp_ops_kernel computes, written with numpy (inactive lanes read as own value)."""
    n = len(x)
    blocks = -(-n // threads)
    xp = np.zeros(blocks * threads, dtype=np.int64)
    xp[:n] = x
    out = np.zeros((blocks * threads, 9), dtype=np.int64)
    for b in range(blocks):
        block = xp[b * threads : (b + 1) * threads]
        warp_sums = []
        for w0 in range(0, threads, 32):
            lanes = min(32, threads - w0)
            v = block[w0 : w0 + lanes]
            tree = v.copy()  # __shfl_down_sync tree; a lane past the warp's end reads its own value
            for offset in (16, 8, 4, 2, 1):
                tree = np.array([tree[k] + (tree[k + offset] if k + offset < lanes else tree[k]) for k in range(lanes)])
            warp_sums.append(tree[0])
            for lane in range(lanes):
                t = w0 + lane
                row = out[b * threads + t]
                row[0] = v[0]
                row[1] = v[lane - 1] if lane >= 1 else v[lane]
                row[2] = v[lane + 2] if lane + 2 < lanes else v[lane]
                row[3] = v[lane ^ 1] if (lane ^ 1) < lanes else v[lane]
                row[4] = sum(1 << k for k in range(lanes) if v[k] > 0)
                row[5] = int((v > 5).any())
                row[6] = int((v > -100).all())
        for t in range(threads):
            out[b * threads + t, 7] = sum(warp_sums)
            out[b * threads + t, 8] = int((block > 0).sum())
    sums = xp.reshape(blocks, threads).sum(axis=1)
    return out[:n].astype(np.uint32).astype(np.int32), sums, int(xp.max()), np.array([1] * blocks + [blocks])


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("threads,n", [(64, 200), (48, 96), (32, 5)])
def test_warp_shuffles_votes_barriers_and_atomics(schedule, threads, n):
    set_schedule(schedule, seed=11)
    x = torch.randint(-10, 10, (n,), dtype=torch.int32)
    out, sums, max_value, cas = torch.ops.quantnoise_emu_test.warp_ops(x, threads)
    ref_out, ref_sums, ref_max, ref_cas = _warp_reference(x.numpy().astype(np.int64), threads)
    np.testing.assert_array_equal(out.numpy(), ref_out)
    np.testing.assert_array_equal(sums.numpy(), ref_sums)
    assert max_value.item() == ref_max
    # atomicCAS: exactly one winner per block.
    np.testing.assert_array_equal((cas.numpy() > 0).astype(int)[:-1], ref_cas[:-1])
    assert cas[-1].item() == ref_cas[-1]


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_kernel_with_syncthreads_is_right_under_every_schedule(schedule):
    set_schedule(schedule, seed=5)
    x = torch.randn(1000)
    out = torch.ops.quantnoise_emu_test.neighbour_sum(x, 128, True)
    blocks = torch.nn.functional.pad(x, (0, 1024 - 1000)).view(8, 128)
    expected = (blocks + blocks.roll(-1, dims=1)).reshape(-1)[:1000]
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_missing_syncthreads_gives_wrong_results_without_the_race_check():
    """Planted bug: the same kernel without its barrier. Threads run one at a time until they
    block, so a thread reads its neighbour's shared slot before the neighbour wrote it. (The race
    check reports it under every schedule: test_cuda_emu_races.py.)"""
    x = torch.randn(1000)
    right = torch.ops.quantnoise_emu_test.neighbour_sum(x, 128, True)
    wrong_under = []
    torch.ops.quantnoise_emu_test.set_race_check(False)
    try:
        for schedule in SCHEDULES:
            set_schedule(schedule, seed=5)
            out = torch.ops.quantnoise_emu_test.neighbour_sum(x, 128, False)
            if not torch.equal(out, right):
                wrong_under.append(schedule)
    finally:
        torch.ops.quantnoise_emu_test.set_race_check(True)
    assert "forward" in wrong_under and "random" in wrong_under, wrong_under


def test_partial_barrier_is_reported_not_hung():
    with pytest.raises(RuntimeError, match=r"__syncthreads reached by only 3 of 8 threads of block \(0,0,0\)"):
        torch.ops.quantnoise_emu_test.partial_barrier(8, 3)
    # All threads reaching it is fine, and the harness is usable after a failed launch.
    assert torch.ops.quantnoise_emu_test.partial_barrier(8, 8).tolist() == [0.0] * 8


def test_warp_collective_with_a_missing_lane_is_reported():
    with pytest.raises(RuntimeError, match=r"deadlock in block \(0,0,0\).*warp collective"):
        torch.ops.quantnoise_emu_test.partial_shuffle()


def test_bad_launch_configuration_is_reported():
    with pytest.raises(ValueError, match=r"block must hold 1\.\.1024 threads"):
        torch.ops.quantnoise_emu_test.neighbour_sum(torch.randn(10), 2048, True)


@pytest.mark.skipif(not sanitized(), reason="needs the sanitizer build (make test-asan)")
def test_out_of_bounds_write_is_reported_by_asan():
    """Planted bug: a kernel writing one element past its output; ASan must stop the process."""
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(ROOT / "python_tests")!r})
        import torch, emu
        emu.load()
        torch.ops.quantnoise_emu_test.planted_oob_write(100)
        print("no error reported")
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=os.environ, timeout=300)
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "AddressSanitizer: heap-buffer-overflow" in proc.stderr, proc.stderr[-3000:]
    assert "planted_oob_write_kernel" in proc.stderr, proc.stderr[-3000:]
