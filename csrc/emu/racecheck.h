// Race and barrier checking for the CUDA emulation harness (cuda_emu.h; design in csrc/README.md).
//
// The emulation TUs are compiled with `-fsanitize=thread` but WITHOUT the TSan runtime: the
// compiler then calls __tsan_read4(addr), __tsan_write8(addr), __tsan_atomic32_fetch_add(...)
// around every load, store and atomic of the unmodified kernel bodies, and racecheck.cpp defines
// those functions itself. During a race-checked launch it keeps a shadow record per byte of
// global and shared memory (which CUDA thread last wrote it and read it, in which barrier phase)
// and fails the launch at the first pair of accesses that a GPU would not order: two threads,
// at least one non-atomic write, no __syncthreads (or warp collective of the same warp) between
// them, or threads of different blocks.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace qn_emu {

// Functions that must not be instrumented themselves (they switch the instrumentation).
#define QN_EMU_NO_TSAN __attribute__((no_sanitize("thread")))

// True while the running CUDA thread executes kernel code of a race-checked launch; the
// instrumentation hooks return at once otherwise. Only one CUDA thread runs at a time (the
// scheduler passes a token between OS threads), so a plain global is enough.
inline bool g_tracking = false;
QN_EMU_NO_TSAN inline void set_tracking(bool on) { g_tracking = on; }

// Kernel code calls into the harness (barriers, warp collectives): the harness's own memory is
// not the kernel's, so tracking pauses for the scope.
struct HarnessScope {
  bool saved;
  QN_EMU_NO_TSAN HarnessScope() : saved(g_tracking) { g_tracking = false; }
  QN_EMU_NO_TSAN ~HarnessScope() { g_tracking = saved; }
  HarnessScope(const HarnessScope&) = delete;
  HarnessScope& operator=(const HarnessScope&) = delete;
};

// Whether this build has the instrumentation (not under AddressSanitizer: GCC cannot combine
// -fsanitize=address with -fsanitize=thread).
bool race_check_available();

// What a report names: the kernel (its launch expression) and its pointer arguments.
struct LaunchInfo {
  std::string kernel;
  std::vector<std::pair<int, const void*>> pointer_args;  // (argument index, value)
};

// The shadow state of one launch. GridRun drives it: blocks, barriers, warp collectives, and
// which CUDA thread runs; the hooks feed it the accesses.
class RaceCheck {
 public:
  RaceCheck(LaunchInfo info, const unsigned grid[3], const unsigned block[3]);
  ~RaceCheck();
  RaceCheck(const RaceCheck&) = delete;
  RaceCheck& operator=(const RaceCheck&) = delete;

  // A new block: the previous one's static __shared__ bytes are poisoned (0xff), every shared
  // record becomes stale, every warp starts a new barrier phase.
  void begin_block(uint64_t linear, const unsigned char* smem, size_t smem_bytes);
  void end_launch();         // poisons the last block's static __shared__ bytes
  void barrier();            // a __syncthreads completed: a new phase for the block
  void warp_sync(int warp);  // a collective that every lane of `warp` took part in
  void resume(int thread, uintptr_t stack_lo, uintptr_t stack_hi);  // this CUDA thread runs next
  bool failed() const;
  const std::string& error() const;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace qn_emu
