// CUDA emulation harness (test-only, DESIGN §5): lets g++ compile the unmodified
// csrc/cuda/*_kernels.cuh bodies and run them on CPU threads, so every CUDA kernel is compared
// with the CPU kernel and the reference in CI, also under AddressSanitizer.
//
// Model. A launch runs the grid block after block. The CUDA threads of a block run ONE AT A
// TIME: a thread runs until it reaches a synchronisation point (__syncthreads, a warp
// collective, or the end of the kernel), then a scheduler picks the next thread. Each CUDA
// thread runs on a std::thread of a per-launch pool and keeps it while blocked, so a block uses
// up to one std::thread per CUDA thread; a thread that has not started yet runs on whichever
// std::thread is free, so barrier-free kernels run without context switches. The order is a
// policy: forward (thread 0 first), reverse, or seeded random (the default), so kernels that
// miss a __syncthreads give wrong results under some order, reproducibly. Because only the
// scheduler moves threads, a barrier that part of a block can never complete is detected exactly
// (no timeouts): the launch fails with an error naming the barrier, block and threads.
// Races and missing barriers are reported by the race check (racecheck.h), which sees every
// memory access of the kernel bodies through the compiler's -fsanitize=thread instrumentation.
//
// Include this header AFTER the ATen/torch headers and BEFORE the .cuh. Kernels use two macros
// from quantnoise/cuda_compat.h that this header defines for the emulation:
//   QN_LAUNCH_KERNEL(grid, block, smem_bytes, stream, kernel<T...>)(args...);
//   QN_DYNAMIC_SHARED(T, name);   // CUDA's `extern __shared__ T name[]` (dynamic shared memory)
// Static `__shared__` arrays become function-local statics (shared by the block's threads;
// launches are serialised, so one block at a time owns them).
#pragma once

#include <pthread.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <random>
#include <semaphore>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "racecheck.h"

#define QN_CUDA_EMU 1
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __align__(n) alignas(n)
#define __shared__ static
#define __constant__ static

struct uint3 {
  unsigned int x, y, z;
};
struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
  constexpr unsigned long long size() const { return 1ull * x * y * z; }
};
struct CUstream_st;
using cudaStream_t = CUstream_st*;

// Thread-local like CUDA's built-ins: each emulated CUDA thread sees its own values.
inline thread_local uint3 threadIdx{0, 0, 0};
inline thread_local uint3 blockIdx{0, 0, 0};
inline thread_local dim3 blockDim{1, 1, 1};
inline thread_local dim3 gridDim{1, 1, 1};
constexpr int warpSize = 32;

namespace qn_emu {

enum class Schedule { kForward, kReverse, kRandom };

struct Settings {
  Schedule schedule = Schedule::kRandom;
  uint64_t seed = 0;
  bool race_check = true;  // where the build has the instrumentation (racecheck.h)
};

// QN_EMU_SCHEDULE=forward|reverse|random, QN_EMU_SEED=N and QN_EMU_RACECHECK=0|1 set the
// initial policy.
inline Schedule parse_schedule(const std::string& name) {
  if (name == "forward") return Schedule::kForward;
  if (name == "reverse") return Schedule::kReverse;
  if (name == "random") return Schedule::kRandom;
  throw std::invalid_argument("cuda_emu: schedule must be forward, reverse or random, got '" + name + "'");
}

inline Settings& settings() {
  static Settings s = [] {
    Settings init;
    if (const char* env = std::getenv("QN_EMU_SCHEDULE")) init.schedule = parse_schedule(env);
    if (const char* env = std::getenv("QN_EMU_SEED")) init.seed = std::strtoull(env, nullptr, 10);
    if (const char* env = std::getenv("QN_EMU_RACECHECK")) init.race_check = std::string(env) != "0";
    return init;
  }();
  return s;
}

// One launch at a time: static __shared__ arrays are process-wide in the emulation.
inline std::mutex& launch_mutex() {
  static std::mutex m;
  return m;
}

// Launches run so far (tests use it to prove a call went through the emulator).
inline std::atomic<int64_t>& launch_count() {
  static std::atomic<int64_t> count{0};
  return count;
}

// Thrown inside CUDA threads to unwind them after the launch failed (not a std::exception, so
// a kernel's own catch clauses do not swallow it).
struct Abort {};

enum class State : uint8_t { kNotStarted, kReady, kRunning, kBlockBarrier, kWarpOp, kExited };
enum class WarpOp : uint8_t { kSync, kShflIdx, kShflUp, kShflDown, kShflXor, kBallot };

constexpr size_t kSlotBytes = 16;

// One CUDA thread of the current block.
struct Thread {
  State state = State::kNotStarted;
  int worker = -1;  // the OS thread it is bound to once started (it keeps its stack until it exits)
  int pred = 0;     // __syncthreads_count/and/or and votes
  // Per-warp exchange slot: what this lane brought to a warp collective, and what it takes away.
  WarpOp op = WarpOp::kSync;
  unsigned mask = 0;
  int arg = 0, width = warpSize;
  alignas(16) unsigned char value[kSlotBytes] = {};
  alignas(16) unsigned char result[kSlotBytes] = {};
  unsigned ballot = 0;
  int block_count = 0;  // result of __syncthreads_count
};

// An OS thread (std::thread) that runs CUDA threads. A CUDA thread that has not started yet can
// run on any free worker, so a kernel without barriers runs its whole grid on one worker with no
// context switch; a CUDA thread that blocks (barrier, warp collective) keeps its worker, and the
// next one starts on another. So a block needs at most one worker per CUDA thread.
struct Worker {
  std::binary_semaphore token{0};
  int assigned = -1;                     // CUDA thread to start when woken while idle
  uintptr_t stack_lo = 0, stack_hi = 0;  // its stack: the race check ignores the kernel's locals
};

class GridRun;
inline thread_local GridRun* tl_run = nullptr;
inline thread_local int tl_thread = -1;

class GridRun {
 public:
  GridRun(dim3 grid, dim3 block, size_t smem, std::function<void()> body, LaunchInfo info = {})
      : grid_(grid), block_(block), smem_bytes_(smem), body_(std::move(body)) {
    n_ = static_cast<int>(block.size());
    n_blocks_ = grid.size();
    if (n_ <= 0 || n_ > 1024 || block.z > 64)
      throw std::invalid_argument("cuda_emu: block must hold 1..1024 threads (z <= 64), got " + dims(block));
    if (grid.y > 65535 || grid.z > 65535) throw std::invalid_argument("cuda_emu: grid.y/z must be <= 65535");
    rng_.seed(settings().seed);
    policy_ = settings().schedule;
    if (settings().race_check && race_check_available() && n_blocks_ > 0) {
      const unsigned g[3] = {grid.x, grid.y, grid.z}, b[3] = {block.x, block.y, block.z};
      race_ = std::make_unique<RaceCheck>(std::move(info), g, b);
    }
  }

  void run() {
    if (n_blocks_ == 0) return;
    for (int t = 0; t < n_; ++t) threads_.push_back(std::make_unique<Thread>());
    start_block();
    const int first = pick();
    threads_[first]->state = State::kRunning;
    hand_to_idle_worker(first);
    finished_.acquire();
    shutdown_ = true;
    for (auto& w : workers_) w->token.release();
    for (auto& th : os_threads_) th.join();
    if (!error_.empty()) throw std::runtime_error(error_);
  }

  unsigned char* dynamic_smem() { return smem_.get(); }

  // --- called by the running CUDA thread (tracking pauses: the harness's memory is its own) ---
  int syncthreads(int pred) {
    const HarnessScope scope;
    Thread& me = *threads_[tl_thread];
    me.pred = pred;
    wait(me, State::kBlockBarrier);
    return me.block_count;
  }

  void warp_op(WarpOp op, unsigned mask, const void* value, size_t size, int arg, int width, void* result) {
    const HarnessScope scope;
    Thread& me = *threads_[tl_thread];
    if (width <= 0 || width > warpSize || (width & (width - 1)) != 0) {
      fail("warp collective: width must be a power of two in [1, 32], got " + std::to_string(width));
      throw Abort{};
    }
    me.op = op;
    me.mask = mask;
    me.arg = arg;
    me.width = width;
    if (size) std::memcpy(me.value, value, size);
    wait(me, State::kWarpOp);
    if (size) std::memcpy(result, me.result, size);
  }

  unsigned ballot_result() const {
    const HarnessScope scope;
    return threads_[tl_thread]->ballot;
  }
  void set_pred(int p) {
    const HarnessScope scope;
    threads_[tl_thread]->pred = p;
  }

 private:
  static std::string dims(dim3 d) {
    return "(" + std::to_string(d.x) + "," + std::to_string(d.y) + "," + std::to_string(d.z) + ")";
  }
  uint3 thread_index(int t) const { return uint3{t % block_.x, (t / block_.x) % block_.y, t / (block_.x * block_.y)}; }
  std::string thread_name(int t) const {
    const uint3 i = thread_index(t);
    return "thread (" + std::to_string(i.x) + "," + std::to_string(i.y) + "," + std::to_string(i.z) + ")";
  }
  std::string block_name() const {
    return "block (" + std::to_string(cur_block_.x) + "," + std::to_string(cur_block_.y) + "," +
           std::to_string(cur_block_.z) + ")";
  }
  // Lanes of warp w that exist (a block's last warp may be partial).
  unsigned valid_lanes(int w) const {
    const int lanes = std::min(warpSize, n_ - w * warpSize);
    return lanes >= 32 ? 0xffffffffu : ((1u << lanes) - 1u);
  }

  void fail(const std::string& what) {
    if (error_.empty()) error_ = "cuda_emu: " + what;
    aborted_ = true;
  }

  // Everything below runs on the one OS thread that holds the token (the semaphores order it).

  void hand_to_idle_worker(int t) {
    int w = 0;
    while (w < static_cast<int>(workers_.size()) && !idle_[w]) ++w;
    if (w == static_cast<int>(workers_.size())) {
      workers_.push_back(std::make_unique<Worker>());
      idle_.push_back(true);
      os_threads_.emplace_back([this, w] { worker_loop(w); });
    }
    idle_[w] = false;
    workers_[w]->assigned = t;
    threads_[t]->worker = w;
    workers_[w]->token.release();
  }

  void worker_loop(int w) {
    tl_run = this;
    Worker& me = *workers_[w];
    pthread_attr_t attr;
    if (pthread_getattr_np(pthread_self(), &attr) == 0) {
      void* lo = nullptr;
      size_t size = 0;
      pthread_attr_getstack(&attr, &lo, &size);
      me.stack_lo = reinterpret_cast<uintptr_t>(lo);
      me.stack_hi = me.stack_lo + size;
      pthread_attr_destroy(&attr);
    }
    for (;;) {
      me.token.acquire();
      if (shutdown_) return;
      int t = me.assigned;
      while (t >= 0) {  // run CUDA threads back to back while the scheduler hands us fresh ones
        run_cuda_thread(t);
        t = dispatch(w, /*caller_free=*/true);
      }
    }
  }

  void run_cuda_thread(int t) {
    tl_thread = t;
    threadIdx = thread_index(t);
    blockIdx = cur_block_;
    blockDim = block_;
    gridDim = grid_;
    if (!aborted_) {
      try {
        resume_tracking(t);
        body_();
        set_tracking(false);
      } catch (const Abort&) {
      } catch (const std::exception& e) {
        fail(std::string("exception in ") + thread_name(t) + " of " + block_name() + ": " + e.what());
      } catch (...) {
        fail("unknown exception in " + thread_name(t) + " of " + block_name());
      }
      set_tracking(false);
      check_races();
    }
    threads_[t]->state = State::kExited;
    ++exited_;
  }

  // The running CUDA thread t (re)enters kernel code: the race check records its accesses.
  void resume_tracking(int t) {
    if (!race_) return;
    const Worker& w = *workers_[threads_[t]->worker];
    race_->resume(t, w.stack_lo, w.stack_hi);
    set_tracking(!race_->failed());
  }
  void check_races() {
    if (race_ && race_->failed()) fail(race_->error());
  }

  void wait(Thread& me, State s) {
    check_races();
    if (aborted_) throw Abort{};
    me.state = s;
    if (s == State::kBlockBarrier) ++at_barrier_;
    complete_warp_op(tl_thread / warpSize);
    const int w = me.worker;
    const int t = tl_thread;
    dispatch(w, /*caller_free=*/false);
    workers_[w]->token.acquire();  // until the scheduler resumes this CUDA thread
    tl_thread = t;
    if (aborted_) throw Abort{};
    if (race_) race_->resume(t, workers_[w]->stack_lo, workers_[w]->stack_hi);  // the caller's scope re-enables
  }

  void start_block() {
    const uint64_t b = block_linear_;
    cur_block_ = uint3{static_cast<unsigned>(b % grid_.x), static_cast<unsigned>((b / grid_.x) % grid_.y),
                       static_cast<unsigned>(b / (1ull * grid_.x * grid_.y))};
    // Fresh dynamic shared memory per block, exactly smem bytes (ASan sees overruns), filled
    // with 0xff (NaN for floats, -1 for ints) so reading it before writing shows.
    smem_.reset(new unsigned char[smem_bytes_]);
    std::memset(smem_.get(), 0xff, smem_bytes_);
    if (race_) race_->begin_block(block_linear_, smem_.get(), smem_bytes_);
    for (auto& th : threads_) {
      th->state = State::kNotStarted;
      th->worker = -1;
    }
    exited_ = 0;
    at_barrier_ = 0;
  }

  // If every lane of warp w that its mask names is waiting at a warp collective, run it.
  void complete_warp_op(int w) {
    if (aborted_) return;
    const int base = w * warpSize;
    const unsigned valid = valid_lanes(w);
    unsigned waiting = 0;
    int first = -1;
    for (int l = 0; l < warpSize && base + l < n_; ++l)
      if (threads_[base + l]->state == State::kWarpOp) {
        waiting |= 1u << l;
        if (first < 0) first = l;
      }
    if (first < 0) return;
    const Thread& f = *threads_[base + first];
    const unsigned need = f.mask & valid;
    for (int l = 0; l < warpSize; ++l) {
      if (!(waiting >> l & 1u)) continue;
      const Thread& t = *threads_[base + l];
      if (t.mask != f.mask || t.op != f.op) {
        fail("lanes of warp " + std::to_string(w) + " of " + block_name() +
             " wait at different warp collectives or with different masks (" + thread_name(base + l) + ")");
        return;
      }
      if (!(need >> l & 1u)) {
        fail(thread_name(base + l) + " of " + block_name() + " calls a warp collective whose mask excludes it");
        return;
      }
    }
    if (waiting != need) return;                      // others still to come (or a deadlock, found by dispatch)
    if (race_ && need == valid) race_->warp_sync(w);  // a full-warp collective orders the warp's lanes
    unsigned ballot = 0;
    for (int l = 0; l < warpSize; ++l)
      if ((need >> l & 1u) && threads_[base + l]->pred) ballot |= 1u << l;
    for (int l = 0; l < warpSize; ++l) {
      if (!(need >> l & 1u)) continue;
      Thread& t = *threads_[base + l];
      int src = l;
      const int seg = l & ~(t.width - 1);
      switch (t.op) {
        case WarpOp::kShflIdx:
          src = seg + (t.arg & (t.width - 1));
          break;
        case WarpOp::kShflUp:
          src = (l - seg) >= t.arg ? l - t.arg : l;
          break;
        case WarpOp::kShflDown:
          src = (l - seg) + t.arg < t.width ? l + t.arg : l;
          break;
        case WarpOp::kShflXor:
          src = l ^ t.arg;
          if (src >= seg + t.width) src = l;  // later groups are out of reach: own value
          break;
        default:
          break;
      }
      if (src < 0 || src >= warpSize || !(need >> src & 1u)) src = l;  // inactive source: own value
      std::memcpy(t.result, threads_[base + src]->value, kSlotBytes);
      t.ballot = ballot;
    }
    for (int l = 0; l < warpSize; ++l)
      if (need >> l & 1u) threads_[base + l]->state = State::kReady;
  }

  // Called by worker w once its CUDA thread stopped running (exited: caller_free, or blocked).
  // Passes the token on. Returns a not-yet-started CUDA thread for the caller to run itself
  // (caller_free only), or -1: the caller then waits on its semaphore.
  int dispatch(int w, bool caller_free) {
    for (;;) {
      if (!aborted_ && at_barrier_ > 0 && at_barrier_ + exited_ == n_) {
        if (exited_ > 0) {
          int gone = 0;
          while (threads_[gone]->state != State::kExited) ++gone;
          fail("__syncthreads reached by only " + std::to_string(at_barrier_) + " of " + std::to_string(n_) +
               " threads of " + block_name() + " (" + thread_name(gone) + " exited without reaching it)");
        } else {
          int count = 0;
          for (auto& th : threads_) count += th->pred != 0;
          for (auto& th : threads_) {
            th->block_count = count;
            th->state = State::kReady;
          }
          at_barrier_ = 0;
          if (race_) race_->barrier();
        }
      }
      const int next = pick();
      if (next >= 0) {
        Thread& th = *threads_[next];
        const bool fresh = th.state == State::kNotStarted;
        th.state = State::kRunning;
        if (fresh && caller_free) {
          th.worker = w;
          return next;
        }
        if (caller_free) idle_[w] = true;
        if (fresh) {
          hand_to_idle_worker(next);
        } else {
          workers_[th.worker]->token.release();
        }
        return -1;
      }
      if (exited_ == n_) {  // block done
        if (aborted_ || ++block_linear_ == n_blocks_) {
          if (race_) race_->end_launch();
          if (caller_free) idle_[w] = true;
          finished_.release();
          return -1;
        }
        start_block();
        continue;
      }
      if (!aborted_) report_deadlock();
      // Wake every waiting thread: each throws Abort and exits.
      for (auto& th : threads_)
        if (th->state == State::kBlockBarrier || th->state == State::kWarpOp) th->state = State::kReady;
      at_barrier_ = 0;
    }
  }

  int pick() {
    int count = 0;
    for (auto& th : threads_) count += th->state == State::kReady || th->state == State::kNotStarted;
    if (count == 0) return -1;
    int k = 0;  // the k-th runnable thread
    if (policy_ == Schedule::kReverse) k = count - 1;
    if (policy_ == Schedule::kRandom) k = static_cast<int>(rng_() % static_cast<uint64_t>(count));
    for (int t = 0; t < n_; ++t) {
      const State s = threads_[t]->state;
      if ((s == State::kReady || s == State::kNotStarted) && k-- == 0) return t;
    }
    return -1;
  }

  void report_deadlock() {
    std::ostringstream msg;
    msg << "deadlock in " << block_name() << ": no thread can run;";
    for (int t = 0; t < n_; ++t) {
      const State s = threads_[t]->state;
      if (s == State::kWarpOp)
        msg << " " << thread_name(t) << " waits at a warp collective (mask 0x" << std::hex << threads_[t]->mask
            << std::dec << ");";
      else if (s == State::kBlockBarrier)
        msg << " " << thread_name(t) << " waits at __syncthreads;";
    }
    msg << " " << exited_ << " threads exited (a warp collective's mask names a lane that never reaches it, or "
        << "__syncthreads is reached by part of the block)";
    fail(msg.str());
  }

  dim3 grid_, block_;
  size_t smem_bytes_;
  std::function<void()> body_;
  int n_ = 0;
  uint64_t n_blocks_ = 0, block_linear_ = 0;
  uint3 cur_block_{0, 0, 0};
  std::vector<std::unique_ptr<Thread>> threads_;
  std::vector<std::unique_ptr<Worker>> workers_;
  std::vector<bool> idle_;
  std::vector<std::thread> os_threads_;
  std::unique_ptr<unsigned char[]> smem_;
  int exited_ = 0, at_barrier_ = 0;
  bool aborted_ = false;
  std::atomic<bool> shutdown_{false};
  std::string error_;
  std::mt19937_64 rng_;
  Schedule policy_;
  std::binary_semaphore finished_{0};
  std::unique_ptr<RaceCheck> race_;  // null unless race checking
};

inline GridRun& current(const char* what) {
  if (tl_run == nullptr)
    throw std::logic_error(std::string("cuda_emu: ") + what + " called outside an emulated kernel launch");
  return *tl_run;
}

inline unsigned char* dynamic_shared_memory() {
  const HarnessScope scope;
  return current("dynamic shared memory").dynamic_smem();
}

// The emulated `kernel<<<grid, block, smem, stream>>>(args...)`: synchronous, throws
// std::runtime_error when the launch fails (bad configuration, broken barrier, exception).
template <typename Kernel>
struct Launch {
  dim3 grid, block;
  size_t smem;
  const char* name;  // the launch expression, e.g. "pq_linear_gemv_kernel<code_t>"
  Kernel kernel;
  template <typename... Args>
  void operator()(Args&&... args) const {
    const std::lock_guard<std::mutex> lock(launch_mutex());
    ++launch_count();
    LaunchInfo info{name, {}};
    int index = 0;
    auto note_arg = [&](const auto& a) {
      if constexpr (std::is_pointer_v<std::decay_t<decltype(a)>>)
        info.pointer_args.emplace_back(index, static_cast<const void*>(a));
      ++index;
    };
    (note_arg(args), ...);
    // Each CUDA thread receives its own copies of the arguments, as on the device.
    GridRun run(grid, block, smem, [&] { kernel(args...); }, std::move(info));
    run.run();
  }
};

// The emulated build's own cap on grid-stride grids (quantnoise::grid_stride_blocks,
// cuda_compat.h): QN_EMU_GRID_STRIDE_CAP=<blocks>, read at every launch (tests set it with
// monkeypatch.setenv), makes a grid-stride loop take several steps on small work. Unset or empty:
// no cap. Grids that must cover their work exactly (grid_blocks) are never shrunk.
inline int64_t grid_stride_cap() {
  const char* env = std::getenv("QN_EMU_GRID_STRIDE_CAP");
  if (env == nullptr || *env == '\0') return INT64_MAX;
  char* end = nullptr;
  const long long cap = std::strtoll(env, &end, 10);
  if (*end != '\0' || cap < 1)
    throw std::runtime_error(std::string("cuda_emu: QN_EMU_GRID_STRIDE_CAP must be a positive integer, got '") + env +
                             "'");
  return cap;
}

template <typename Kernel>
Launch<Kernel> make_launch(dim3 grid, dim3 block, size_t smem, cudaStream_t /*stream*/, const char* name,
                           Kernel kernel) {
  return Launch<Kernel>{grid, block, smem, name, kernel};
}

template <typename T>
T warp_exchange(WarpOp op, unsigned mask, T var, int arg, int width) {
  static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= kSlotBytes, "cuda_emu: unsupported shuffle type");
  T out;
  current("warp shuffle").warp_op(op, mask, &var, sizeof(T), arg, width, &out);
  return out;
}

inline unsigned warp_vote(unsigned mask, int pred) {
  GridRun& run = current("warp vote");
  run.set_pred(pred);
  run.warp_op(WarpOp::kBallot, mask, nullptr, 0, 0, warpSize, nullptr);
  return run.ballot_result() & mask;
}

}  // namespace qn_emu

#define QN_LAUNCH_KERNEL(grid, block, smem, stream, ...) \
  ::qn_emu::make_launch(grid, block, smem, stream, #__VA_ARGS__, __VA_ARGS__)
#define QN_DYNAMIC_SHARED(T, name) T* name = reinterpret_cast<T*>(::qn_emu::dynamic_shared_memory())

// ---- Synchronisation and warp collectives ----
inline void __syncthreads() { ::qn_emu::current("__syncthreads").syncthreads(0); }
inline int __syncthreads_count(int pred) { return ::qn_emu::current("__syncthreads_count").syncthreads(pred != 0); }
inline int __syncthreads_and(int pred) {
  return __syncthreads_count(pred) == static_cast<int>(blockDim.x * blockDim.y * blockDim.z);
}
inline int __syncthreads_or(int pred) { return __syncthreads_count(pred) != 0; }
inline void __syncwarp(unsigned mask = 0xffffffffu) {
  ::qn_emu::current("__syncwarp").warp_op(::qn_emu::WarpOp::kSync, mask, nullptr, 0, 0, warpSize, nullptr);
}
template <typename T>
T __shfl_sync(unsigned mask, T var, int src_lane, int width = warpSize) {
  return ::qn_emu::warp_exchange(::qn_emu::WarpOp::kShflIdx, mask, var, src_lane, width);
}
template <typename T>
T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = warpSize) {
  return ::qn_emu::warp_exchange(::qn_emu::WarpOp::kShflUp, mask, var, static_cast<int>(delta), width);
}
template <typename T>
T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = warpSize) {
  return ::qn_emu::warp_exchange(::qn_emu::WarpOp::kShflDown, mask, var, static_cast<int>(delta), width);
}
template <typename T>
T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = warpSize) {
  return ::qn_emu::warp_exchange(::qn_emu::WarpOp::kShflXor, mask, var, lane_mask, width);
}
inline unsigned __ballot_sync(unsigned mask, int pred) { return ::qn_emu::warp_vote(mask, pred != 0); }
inline int __any_sync(unsigned mask, int pred) { return ::qn_emu::warp_vote(mask, pred != 0) != 0; }
inline int __all_sync(unsigned mask, int pred) {
  return ::qn_emu::warp_vote(mask, pred != 0) == (mask & ::qn_emu::warp_vote(mask, 1));
}
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __threadfence_block() { std::atomic_thread_fence(std::memory_order_seq_cst); }

// ---- Atomics (std::atomic_ref: correct even if threads ever run concurrently) ----
#define QN_EMU_ATOMIC_RMW(name, method)              \
  template <typename T>                              \
  T name(T* address, T val) {                        \
    return std::atomic_ref<T>(*address).method(val); \
  }
QN_EMU_ATOMIC_RMW(atomicAdd, fetch_add)
QN_EMU_ATOMIC_RMW(atomicSub, fetch_sub)
QN_EMU_ATOMIC_RMW(atomicExch, exchange)
QN_EMU_ATOMIC_RMW(atomicAnd, fetch_and)
QN_EMU_ATOMIC_RMW(atomicOr, fetch_or)
QN_EMU_ATOMIC_RMW(atomicXor, fetch_xor)
#undef QN_EMU_ATOMIC_RMW

template <typename T>
T atomicCAS(T* address, T compare, T val) {
  std::atomic_ref<T>(*address).compare_exchange_strong(compare, val);
  return compare;  // the old value, whether or not the swap happened
}
// atomicMax / atomicMin: store val while it beats what is there; returns the old value.
template <typename T, typename Beats>
T atomic_store_if_beats(T* address, T val, Beats beats) {
  std::atomic_ref<T> ref(*address);
  T old = ref.load();
  while (beats(val, old) && !ref.compare_exchange_weak(old, val)) {
  }
  return old;
}
template <typename T>
T atomicMax(T* address, T val) {
  return atomic_store_if_beats(address, val, [](T v, T old) { return old < v; });
}
template <typename T>
T atomicMin(T* address, T val) {
  return atomic_store_if_beats(address, val, [](T v, T old) { return v < old; });
}

// ---- A few device intrinsics kernels commonly use ----
template <typename T>
T __ldg(const T* p) {
  return *p;
}
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(static_cast<unsigned>(x)); }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __fdividef(float a, float b) { return a / b; }
