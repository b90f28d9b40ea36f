"""The emulator's race and barrier check (csrc/emu/racecheck.h): planted bugs it must report,
their correct twins it must pass under every schedule, and proof that it is on for the suite."""

from __future__ import annotations

import pytest
import torch
from devices import selected_devices
from emu import load, sanitized, set_schedule

SCHEDULES = ["forward", "reverse", "random"]
pytestmark = [
    pytest.mark.skipif("cuda-emu" not in selected_devices(), reason="cuda-emu not in QUANTNOISE_TEST_DEVICE"),
    pytest.mark.skipif(sanitized(), reason="GCC cannot combine the race check with ASan; make test runs it"),
]


@pytest.fixture(autouse=True)
def _harness():
    load()
    yield
    set_schedule("random", 0)
    torch.ops.quantnoise_emu_test.set_race_check(True)


def ops():
    return torch.ops.quantnoise_emu_test


def test_race_check_is_on_for_the_emulated_suite():
    """Every cuda-emu test is race-checked: the build has the instrumentation and it is on."""
    assert ops().race_check_available()
    assert ops().race_check_active(), "QN_EMU_RACECHECK=0 turned it off"


def _points(n: int, k: int, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(n, dim), torch.randint(0, k, (n,))


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_atomic_accumulation_passes(schedule):
    set_schedule(schedule, seed=2)
    x, codes = _points(300, 3, 4)
    sums = ops().accumulate(x, codes, 3, 64, 2, True)
    expected = torch.zeros(3, 4).index_add_(0, codes, x)
    torch.testing.assert_close(sums, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_plain_accumulation_is_reported(schedule):
    """Planted bug: kmeans_update's atomicAdd replaced by a plain +=. The threads of a block run
    one at a time, so the sums come out right: only the race check can see it."""
    set_schedule(schedule, seed=2)
    x, codes = _points(300, 3, 4)
    with pytest.raises(RuntimeError, match=r"data race in accumulate_kernel: thread \(\d+,0,0\) of block \(\d,0,0\) "):
        ops().accumulate(x, codes, 3, 64, 2, False)
    ops().set_race_check(False)
    sums = ops().accumulate(x, codes, 3, 64, 2, False)
    torch.testing.assert_close(sums, torch.zeros(3, 4).index_add_(0, codes, x), rtol=1e-5, atol=1e-5)


def test_plain_accumulation_across_blocks_is_reported():
    """One thread per block: the conflicting writes come from different blocks."""
    x, codes = torch.randn(4, 2), torch.zeros(4, dtype=torch.long)
    with pytest.raises(RuntimeError, match=r"of block \(\d,0,0\) .* global memory at 0x[0-9a-f]+ \(kernel argument 2 "):
        ops().accumulate(x, codes, 1, 1, 4, False)
    with pytest.raises(RuntimeError, match=r"blocks of one launch are not ordered"):
        ops().cross_block_write(3)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_restaged_tile_with_barriers_passes(schedule):
    set_schedule(schedule, seed=4)
    x = torch.randn(5, 64)
    torch.testing.assert_close(ops().tile_sum(x, True), x.sum().expand(64), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_missing_barrier_before_restaging_is_reported(schedule):
    """Planted bug: no __syncthreads() before restaging the shared tile (pq_linear's loops)."""
    set_schedule(schedule, seed=4)
    with pytest.raises(
        RuntimeError,
        match=r"data race in tile_sum_kernel<kTileWidth>: .* static __shared__ memory at 0x[0-9a-f]+ "
        r"\(quantnoise_emu_test::tile_sum_kernel<64>\(.*\)::tile \+ \d+ bytes\)"
        r".* of the same block \w+ in the same barrier phase \(no __syncthreads\(\)",
    ):
        ops().tile_sum(torch.randn(3, 64), False)


def test_missing_syncthreads_before_reading_a_neighbour_is_reported():
    """Planted bug: neighbour_sum without its barrier, under every schedule (without the check it
    gives wrong results only under some)."""
    x = torch.randn(1000)
    for schedule in SCHEDULES:
        set_schedule(schedule, seed=5)
        with pytest.raises(
            RuntimeError, match=r"(data race|uninitialised shared memory) in neighbour_sum_kernel: .* dynamic shared"
        ):
            ops().neighbour_sum(x, 128, False)


@pytest.mark.parametrize("order", [1, 2])
def test_full_warp_collectives_order_shared_memory(order):
    """__syncwarp and shuffles order the lanes of a warp: no report, right values."""
    x = torch.randn(32)
    torch.testing.assert_close(ops().warp_neighbour(x, order), x + x.roll(-1), rtol=0, atol=0)


def test_warp_without_collective_is_reported():
    with pytest.raises(RuntimeError, match=r"data race in warp_neighbour_kernel: .* static __shared__"):
        ops().warp_neighbour(torch.randn(32), 0)


def test_shared_memory_is_poisoned_between_blocks_and_launches():
    """A block reading shared memory it never wrote sees 0xff bytes, not the previous block's.
    (Only bytes some block wrote are known to be shared: the first launch reads zeros.)"""
    ops().stale_shared(1)
    for _ in range(2):
        assert ops().stale_shared(3).tolist() == [-1, -1, -1]
