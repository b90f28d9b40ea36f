// The race and barrier checker of the CUDA emulation harness (racecheck.h) and the
// instrumentation entry points GCC's -fsanitize=thread emits (__tsan_read4, ...). There is no
// TSan runtime: these functions are the whole of it, and they only record what kernel code does
// during a race-checked launch.
//
// Happens-before model (what a GPU guarantees within one launch):
//  * accesses of one CUDA thread are ordered;
//  * __syncthreads orders everything its block did before it with everything after (a new
//    barrier PHASE);
//  * a warp collective that every lane of the warp took part in (__syncwarp, shuffles, votes)
//    orders the accesses of that warp's lanes before it with those after;
//  * nothing orders different blocks, and atomics do not order other accesses.
// Two accesses to the same byte race when they are not ordered, come from different threads, at
// least one writes, and not both are atomic. Each byte keeps one write record and one read
// record (thread and epoch: block, phase, warp-sync count); several unordered readers collapse
// into one "multi" record, which a later write must be ordered after as a whole.
#include "racecheck.h"

#include <cxxabi.h>
#include <dlfcn.h>
#include <link.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>

#define QN_NO_TSAN QN_EMU_NO_TSAN

namespace qn_emu {

bool race_check_available() {
#if defined(__SANITIZE_THREAD__)
  return true;
#else
  return false;
#endif
}

namespace {

enum class Access : uint8_t { kRead, kWrite, kAtomicRead, kAtomicWrite };

// A record: the thread (global linear index: block * threads per block + thread) with flags in
// the top bits, and the epoch of the access (0: none).
struct Rec {
  uint32_t tid = 0;
  uint32_t epoch = 0;
};
constexpr uint32_t kAtomicBit = 1u << 29;  // atomic access(es)
constexpr uint32_t kMultiBit = 1u << 30;   // several threads, not ordered among themselves
constexpr uint32_t kMixedBit = 1u << 31;   // ... of more than one warp (or another block)
constexpr uint32_t kThreadMask = kAtomicBit - 1;
struct Cell {
  Rec w, r;
};

struct Range {
  uintptr_t lo, hi;
};

// The writable segments of this shared object: static __shared__ arrays (function-local
// statics in the emulation) live there, and nowhere else does kernel code write.
const std::vector<Range>& static_ranges() {
  static const std::vector<Range> ranges = [] {
    struct Ctx {
      uintptr_t probe;
      std::vector<Range> out;
    } ctx{reinterpret_cast<uintptr_t>(&g_tracking), {}};
    dl_iterate_phdr(
        [](dl_phdr_info* info, size_t, void* data) -> int {
          auto* c = static_cast<Ctx*>(data);
          std::vector<Range> writable;
          bool mine = false;
          for (int i = 0; i < info->dlpi_phnum; ++i) {
            const auto& ph = info->dlpi_phdr[i];
            if (ph.p_type != PT_LOAD) continue;
            const uintptr_t lo = info->dlpi_addr + ph.p_vaddr, hi = lo + ph.p_memsz;
            mine |= c->probe >= lo && c->probe < hi;
            if (ph.p_flags & PF_W) writable.push_back({lo, hi});
          }
          if (!mine) return 0;
          c->out = writable;
          return 1;
        },
        &ctx);
    return ctx.out;
  }();
  return ranges;
}

// Shadow cells of global and static shared memory: page number -> 4096 cells, open addressing.
class PageTable {
 public:
  static constexpr int kBits = 12;
  static constexpr uintptr_t kSize = uintptr_t{1} << kBits;
  static constexpr size_t kMaxPages = (size_t{2} << 30) / (kSize * sizeof(Cell));  // 2 GiB of shadow

  PageTable() = default;
  PageTable(const PageTable&) = delete;
  PageTable& operator=(const PageTable&) = delete;
  ~PageTable() {
    for (size_t i = 0; i < cap_; ++i) std::free(slots_[i].cells);
    std::free(slots_);
  }

  // nullptr when the shadow would exceed kMaxPages.
  QN_NO_TSAN Cell* cell(uintptr_t addr) {
    const uintptr_t key = (addr >> kBits) + 1;  // 0 marks an empty slot
    if (key != last_key_) {
      Cell* page = find_or_add(key);
      if (page == nullptr) return nullptr;
      last_key_ = key;
      last_ = page;
    }
    return last_ + (addr & (kSize - 1));
  }

 private:
  struct Slot {
    uintptr_t key;
    Cell* cells;
  };
  QN_NO_TSAN static size_t hash(uintptr_t key, size_t cap) { return (key * 0x9E3779B97F4A7C15ull >> 17) & (cap - 1); }

  QN_NO_TSAN Cell* find_or_add(uintptr_t key) {
    if (2 * (used_ + 1) > cap_ && !grow()) return nullptr;
    size_t i = hash(key, cap_);
    while (slots_[i].key != 0 && slots_[i].key != key) i = (i + 1) & (cap_ - 1);
    if (slots_[i].key == key) return slots_[i].cells;
    if (used_ >= kMaxPages) return nullptr;
    Cell* cells = static_cast<Cell*>(std::calloc(kSize, sizeof(Cell)));
    if (cells == nullptr) return nullptr;
    slots_[i] = {key, cells};
    ++used_;
    return cells;
  }

  QN_NO_TSAN bool grow() {
    const size_t cap = cap_ ? 2 * cap_ : 1024;
    auto* slots = static_cast<Slot*>(std::calloc(cap, sizeof(Slot)));
    if (slots == nullptr) return false;
    for (size_t i = 0; i < cap_; ++i) {
      if (slots_[i].key == 0) continue;
      size_t j = hash(slots_[i].key, cap);
      while (slots[j].key != 0) j = (j + 1) & (cap - 1);
      slots[j] = slots_[i];
    }
    std::free(slots_);
    slots_ = slots;
    cap_ = cap;
    return true;
  }

  Slot* slots_ = nullptr;
  size_t cap_ = 0, used_ = 0;
  uintptr_t last_key_ = 0;
  Cell* last_ = nullptr;
};

enum class Space : uint8_t { kGlobal, kDynamicShared, kStaticShared };

RaceCheck::Impl* g_active = nullptr;  // the race-checked launch in progress (launches are serialised)

}  // namespace

struct RaceCheck::Impl {
  struct Epoch {
    uint32_t phase, wsync;
  };

  LaunchInfo info;
  unsigned grid[3], block[3];
  uint32_t n = 0;  // threads per block
  // The current block: its first epoch, its epochs (index: epoch - first_epoch), each warp's.
  uint64_t block_linear = 0;
  uint32_t tid_base = 0, next_epoch = 1, first_epoch = 1, phase = 0;
  std::vector<Epoch> epochs;
  const Epoch* ep = nullptr;  // epochs.data(): the hot path uses raw pointers (GCC does not inline
                              // instrumented library code into the uninstrumented functions)
  std::vector<uint32_t> warp_epoch, warp_syncs;
  // The running CUDA thread.
  uint32_t me = 0, my_epoch = 0;
  int my_warp = 0;
  uintptr_t stack_lo = 0, stack_hi = 0;
  // Shadow memory.
  uintptr_t smem_lo = 0, smem_hi = 0;
  std::vector<Cell> smem_cells;
  Cell* smem = nullptr;  // smem_cells.data()
  Range statics[8] = {};
  int n_statics = 0;
  PageTable pages;
  std::vector<Range> static_written;  // static __shared__ bytes this block wrote (poisoned after it)
  bool failed = false;
  std::string error;

  void fail(const std::string& what) {
    if (failed) return;
    failed = true;
    error = what;
  }

  void new_epoch(int w) {
    if (next_epoch == 0) fail("race check: more than 2^32 barrier phases in one launch");
    epochs.push_back({phase, warp_syncs[w]});
    ep = epochs.data();
    warp_epoch[w] = next_epoch++;
  }

  void poison_static() {
    for (const Range& r : static_written) std::memset(reinterpret_cast<void*>(r.lo), 0xff, r.hi - r.lo);
    static_written.clear();
  }

  // ---- the hot path: no instrumentation inside ----
  QN_NO_TSAN int warp_of(const Rec& r) const { return static_cast<int>(((r.tid & kThreadMask) - tid_base) / 32); }
  QN_NO_TSAN bool live(const Rec& r, bool shared) const {
    return r.epoch != 0 && (!shared || r.epoch >= first_epoch);  // shared memory belongs to one block
  }
  // Does the access recorded in r happen before the running thread's current access?
  QN_NO_TSAN bool ordered(const Rec& r) const {
    if (r.epoch < first_epoch) return false;  // another block
    if (!(r.tid & kMultiBit) && (r.tid & kThreadMask) == me) return true;
    const Epoch& e = ep[r.epoch - first_epoch];
    const Epoch& m = ep[my_epoch - first_epoch];
    if (e.phase < m.phase) return true;
    return !(r.tid & kMixedBit) && warp_of(r) == my_warp && e.wsync < m.wsync;
  }
  QN_NO_TSAN bool conflicts(const Rec& r, bool r_writes, Access kind) const {
    const bool writes = kind == Access::kWrite || kind == Access::kAtomicWrite;
    const bool atomic = kind == Access::kAtomicRead || kind == Access::kAtomicWrite;
    if (!r_writes && !writes) return false;
    if ((r.tid & kAtomicBit) && atomic) return false;
    return !ordered(r);
  }
  // r extended by the running thread's access: replaced if r is ordered before it, else merged.
  QN_NO_TSAN Rec merged(const Rec& r, bool shared, bool atomic) const {
    if (!live(r, shared) || ordered(r)) return {me | (atomic ? kAtomicBit : 0u), my_epoch};
    const bool other_block = r.epoch < first_epoch;  // stays unordered with everything after
    uint32_t flags = kMultiBit | (atomic && (r.tid & kAtomicBit) ? kAtomicBit : 0u);
    if (other_block || (r.tid & kMixedBit) || warp_of(r) != my_warp) flags |= kMixedBit;
    return {(r.tid & kThreadMask) | flags, other_block ? r.epoch : my_epoch};
  }

  QN_NO_TSAN void access(uintptr_t a, size_t size, Access kind) {
    if (failed || (a >= stack_lo && a < stack_hi)) return;  // the thread's own locals
    Space space = Space::kGlobal;
    if (a >= smem_lo && a < smem_hi) {
      space = Space::kDynamicShared;
    } else {
      for (int i = 0; i < n_statics; ++i)
        if (a >= statics[i].lo && a < statics[i].hi) space = Space::kStaticShared;
    }
    const bool shared = space != Space::kGlobal;
    for (size_t i = 0; i < size; ++i) {
      Cell* c = space == Space::kDynamicShared ? smem + (a + i - smem_lo) : pages.cell(a + i);
      if (c == nullptr) {
        report_shadow_full();
        return;
      }
      if (kind == Access::kRead || kind == Access::kAtomicRead) {
        if (live(c->w, shared) && conflicts(c->w, true, kind)) return report(c->w, true, kind, space, a + i);
        if (space == Space::kDynamicShared && !live(c->w, true)) return report_uninitialised(a + i);
        c->r = merged(c->r, shared, kind == Access::kAtomicRead);
      } else {
        const bool written = live(c->w, shared);
        if (written && conflicts(c->w, true, kind)) return report(c->w, true, kind, space, a + i);
        if (live(c->r, shared) && conflicts(c->r, false, kind)) return report(c->r, false, kind, space, a + i);
        c->w = kind == Access::kWrite ? Rec{me, my_epoch} : merged(c->w, shared, true);
        c->r = Rec{};
        if (space == Space::kStaticShared && !written) note_static_write(a + i);
      }
    }
  }

  QN_NO_TSAN void note_static_write(uintptr_t a) {
    if (!static_written.empty() && static_written.back().hi == a) {
      static_written.back().hi = a + 1;
    } else {
      static_written.push_back({a, a + 1});
    }
  }

  // ---- reports (cold) ----
  std::string block_name(uint64_t linear) const {
    const uint64_t x = linear % grid[0], y = linear / grid[0] % grid[1], z = linear / (uint64_t{grid[0]} * grid[1]);
    return "block (" + std::to_string(x) + "," + std::to_string(y) + "," + std::to_string(z) + ")";
  }
  std::string thread_name(uint32_t tid) const {
    const uint32_t t = tid % n;
    return "thread (" + std::to_string(t % block[0]) + "," + std::to_string(t / block[0] % block[1]) + "," +
           std::to_string(t / (block[0] * block[1])) + ")";
  }
  std::string location(Space space, uintptr_t a) const {
    char buf[64];
    std::snprintf(buf, sizeof buf, "0x%llx", static_cast<unsigned long long>(a));
    if (space == Space::kDynamicShared) return "dynamic shared memory at byte " + std::to_string(a - smem_lo);
    if (space == Space::kStaticShared) return std::string("static __shared__ memory at ") + buf + symbol(a);
    std::string where = std::string("global memory at ") + buf;
    const std::pair<int, const void*>* best = nullptr;  // the pointer argument just below a
    for (const auto& arg : info.pointer_args) {
      const auto p = reinterpret_cast<uintptr_t>(arg.second);
      if (p <= a && (best == nullptr || p > reinterpret_cast<uintptr_t>(best->second))) best = &arg;
    }
    if (best != nullptr)
      where += " (kernel argument " + std::to_string(best->first) + " + " +
               std::to_string(a - reinterpret_cast<uintptr_t>(best->second)) + " bytes)";
    return where;
  }
  // " (name + offset)" of the static variable holding a, when the dynamic symbol table has it
  // (function-local statics of templates, like the kernels' __shared__ arrays).
  static std::string symbol(uintptr_t a) {
    Dl_info dl{};
    ElfW(Sym)* sym = nullptr;
    if (dladdr1(reinterpret_cast<void*>(a), &dl, reinterpret_cast<void**>(&sym), RTLD_DL_SYMENT) == 0 ||
        dl.dli_sname == nullptr || sym == nullptr || a >= reinterpret_cast<uintptr_t>(dl.dli_saddr) + sym->st_size)
      return "";
    int status = 0;
    char* demangled = abi::__cxa_demangle(dl.dli_sname, nullptr, nullptr, &status);
    std::string name = status == 0 ? demangled : dl.dli_sname;
    std::free(demangled);
    return " (" + name + " + " + std::to_string(a - reinterpret_cast<uintptr_t>(dl.dli_saddr)) + " bytes)";
  }
  static const char* verb(Access kind) {
    switch (kind) {
      case Access::kRead:
        return "reads";
      case Access::kWrite:
        return "writes";
      case Access::kAtomicRead:
        return "atomically reads";
      default:
        return "atomically updates";
    }
  }

  void report(const Rec& r, bool r_writes, Access kind, Space space, uintptr_t a) {
    const uint32_t other = r.tid & kThreadMask;
    const bool other_block = r.epoch < first_epoch;
    const char* r_verb = r_writes ? ((r.tid & kAtomicBit) ? "atomically updated" : "wrote")
                                  : ((r.tid & kAtomicBit) ? "atomically read" : "read");
    std::string msg = "data race in " + info.kernel + ": " + thread_name(me) + " of " + block_name(block_linear) + " " +
                      verb(kind) + " " + location(space, a) + ", which " + thread_name(other) +
                      ((r.tid & kMultiBit) ? " (and other threads)" : "") + " of " +
                      (other_block ? block_name(other / n) : std::string("the same block")) + " " + r_verb;
    const bool same_warp = !other_block && !(r.tid & kMixedBit) && warp_of(r) == my_warp;
    msg += other_block ? " (blocks of one launch are not ordered)"
           : same_warp ? " in the same barrier phase (no __syncthreads() or full-warp __syncwarp() between them)"
                       : " in the same barrier phase (no __syncthreads() between them)";
    fail(msg);
  }
  void report_uninitialised(uintptr_t a) {
    fail("uninitialised shared memory in " + info.kernel + ": " + thread_name(me) + " of " + block_name(block_linear) +
         " reads " + location(Space::kDynamicShared, a) +
         ", which no thread of its block wrote (a missing __syncthreads() or staging step?)");
  }
  void report_shadow_full() {
    fail("race check: " + info.kernel +
         " touches too much memory to shadow (2 GiB of shadow); run it with QN_EMU_RACECHECK=0");
  }
};

RaceCheck::RaceCheck(LaunchInfo info, const unsigned grid[3], const unsigned block[3])
    : impl_(std::make_unique<Impl>()) {
  Impl& s = *impl_;
  s.info = std::move(info);
  std::copy(grid, grid + 3, s.grid);
  std::copy(block, block + 3, s.block);
  s.n = block[0] * block[1] * block[2];
  const int warps = static_cast<int>((s.n + 31) / 32);
  s.warp_epoch.assign(warps, 0);
  s.warp_syncs.assign(warps, 0);
  for (const Range& r : static_ranges())
    if (s.n_statics < 8) s.statics[s.n_statics++] = r;
  const uint64_t threads = uint64_t{grid[0]} * grid[1] * grid[2] * s.n;
  if (threads > kThreadMask)
    s.fail("race check: " + s.info.kernel + " launches " + std::to_string(threads) +
           " threads, more than it can track (2^29); run it with QN_EMU_RACECHECK=0");
  g_active = impl_.get();
}

RaceCheck::~RaceCheck() {
  set_tracking(false);
  g_active = nullptr;
}

void RaceCheck::begin_block(uint64_t linear, const unsigned char* smem, size_t smem_bytes) {
  Impl& s = *impl_;
  s.poison_static();
  s.block_linear = linear;
  s.tid_base = static_cast<uint32_t>(linear * s.n);
  s.first_epoch = s.next_epoch;
  s.epochs.clear();
  s.phase = 0;
  std::fill(s.warp_syncs.begin(), s.warp_syncs.end(), 0u);
  for (size_t w = 0; w < s.warp_epoch.size(); ++w) s.new_epoch(static_cast<int>(w));
  s.smem_lo = reinterpret_cast<uintptr_t>(smem);
  s.smem_hi = s.smem_lo + smem_bytes;
  if (s.smem_cells.size() < smem_bytes) s.smem_cells.resize(smem_bytes);
  s.smem = s.smem_cells.data();
}

void RaceCheck::end_launch() { impl_->poison_static(); }

void RaceCheck::barrier() {
  Impl& s = *impl_;
  ++s.phase;
  std::fill(s.warp_syncs.begin(), s.warp_syncs.end(), 0u);
  for (size_t w = 0; w < s.warp_epoch.size(); ++w) s.new_epoch(static_cast<int>(w));
}

void RaceCheck::warp_sync(int warp) {
  ++impl_->warp_syncs[warp];
  impl_->new_epoch(warp);
}

void RaceCheck::resume(int thread, uintptr_t stack_lo, uintptr_t stack_hi) {
  Impl& s = *impl_;
  s.me = s.tid_base + static_cast<uint32_t>(thread);
  s.my_warp = thread / 32;
  s.my_epoch = s.warp_epoch[s.my_warp];
  s.stack_lo = stack_lo;
  s.stack_hi = stack_hi;
}

bool RaceCheck::failed() const { return impl_->failed; }
const std::string& RaceCheck::error() const { return impl_->error; }

namespace {

// One access of kernel code (the hooks below). Tracking pauses while the checker runs, so the
// (instrumented) library code it calls on a report is not recorded. While the scheduler hands
// the token over, the OS thread that gave it up still runs a few harness instructions: accesses
// from outside the running CUDA thread's stack (its OS thread) are not the kernel's.
QN_NO_TSAN inline void note(const volatile void* p, size_t size, Access kind) {
  if (!g_tracking) return;
  const auto frame = reinterpret_cast<uintptr_t>(__builtin_frame_address(0));
  if (frame < g_active->stack_lo || frame >= g_active->stack_hi) return;
  g_tracking = false;
  g_active->access(reinterpret_cast<uintptr_t>(p), size, kind);
  g_tracking = !g_active->failed;
}

}  // namespace
}  // namespace qn_emu

// ---- the entry points -fsanitize=thread calls (names and signatures of the TSan interface) ----
using qn_emu::Access;
using qn_emu::note;
#define QN_HOOK extern "C" QN_NO_TSAN __attribute__((visibility("hidden")))

QN_HOOK void __tsan_init() {}
QN_HOOK void __tsan_func_entry(void*) {}
QN_HOOK void __tsan_func_exit() {}
QN_HOOK void __tsan_vptr_update(void**, void*) {}
QN_HOOK void __tsan_vptr_read(void**) {}
QN_HOOK void __tsan_read_range(void* p, unsigned long size) { note(p, size, Access::kRead); }
QN_HOOK void __tsan_write_range(void* p, unsigned long size) { note(p, size, Access::kWrite); }
// Newer compilers may route memcpy/memset/memmove through these (GCC 12 calls libc directly).
QN_HOOK void* __tsan_memcpy(void* dst, const void* src, size_t n) {
  note(src, n, Access::kRead);
  note(dst, n, Access::kWrite);
  return std::memcpy(dst, src, n);
}
QN_HOOK void* __tsan_memmove(void* dst, const void* src, size_t n) {
  note(src, n, Access::kRead);
  note(dst, n, Access::kWrite);
  return std::memmove(dst, src, n);
}
QN_HOOK void* __tsan_memset(void* dst, int value, size_t n) {
  note(dst, n, Access::kWrite);
  return std::memset(dst, value, n);
}

#define QN_PLAIN_HOOKS(n)                                                                \
  QN_HOOK void __tsan_read##n(void* p) { note(p, n, Access::kRead); }                    \
  QN_HOOK void __tsan_write##n(void* p) { note(p, n, Access::kWrite); }                  \
  QN_HOOK void __tsan_unaligned_read##n(void* p) { note(p, n, Access::kRead); }          \
  QN_HOOK void __tsan_unaligned_write##n(void* p) { note(p, n, Access::kWrite); }        \
  QN_HOOK void __tsan_volatile_read##n(void* p) { note(p, n, Access::kRead); }           \
  QN_HOOK void __tsan_volatile_write##n(void* p) { note(p, n, Access::kWrite); }         \
  QN_HOOK void __tsan_unaligned_volatile_read##n(void* p) { note(p, n, Access::kRead); } \
  QN_HOOK void __tsan_unaligned_volatile_write##n(void* p) { note(p, n, Access::kWrite); }
QN_PLAIN_HOOKS(1)
QN_PLAIN_HOOKS(2)
QN_PLAIN_HOOKS(4)
QN_PLAIN_HOOKS(8)
QN_PLAIN_HOOKS(16)

// Atomics: the operation itself (sequentially consistent whatever order was asked: stronger is
// correct), recorded as an atomic access.
#define QN_RMW_HOOK(bits, T, name, builtin)                         \
  QN_HOOK T __tsan_atomic##bits##_##name(volatile T* a, T v, int) { \
    note(a, sizeof(T), Access::kAtomicWrite);                       \
    return builtin(a, v, __ATOMIC_SEQ_CST);                         \
  }
#define QN_ATOMIC_HOOKS(bits, T)                                                                         \
  QN_HOOK T __tsan_atomic##bits##_load(const volatile T* a, int) {                                       \
    note(a, sizeof(T), Access::kAtomicRead);                                                             \
    return __atomic_load_n(a, __ATOMIC_SEQ_CST);                                                         \
  }                                                                                                      \
  QN_HOOK void __tsan_atomic##bits##_store(volatile T* a, T v, int) {                                    \
    note(a, sizeof(T), Access::kAtomicWrite);                                                            \
    __atomic_store_n(a, v, __ATOMIC_SEQ_CST);                                                            \
  }                                                                                                      \
  QN_RMW_HOOK(bits, T, exchange, __atomic_exchange_n)                                                    \
  QN_RMW_HOOK(bits, T, fetch_add, __atomic_fetch_add)                                                    \
  QN_RMW_HOOK(bits, T, fetch_sub, __atomic_fetch_sub)                                                    \
  QN_RMW_HOOK(bits, T, fetch_and, __atomic_fetch_and)                                                    \
  QN_RMW_HOOK(bits, T, fetch_or, __atomic_fetch_or)                                                      \
  QN_RMW_HOOK(bits, T, fetch_xor, __atomic_fetch_xor)                                                    \
  QN_RMW_HOOK(bits, T, fetch_nand, __atomic_fetch_nand)                                                  \
  QN_HOOK int __tsan_atomic##bits##_compare_exchange_strong(volatile T* a, T* expected, T v, int, int) { \
    note(a, sizeof(T), Access::kAtomicWrite);                                                            \
    return __atomic_compare_exchange_n(a, expected, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);       \
  }                                                                                                      \
  QN_HOOK int __tsan_atomic##bits##_compare_exchange_weak(volatile T* a, T* expected, T v, int, int) {   \
    note(a, sizeof(T), Access::kAtomicWrite);                                                            \
    return __atomic_compare_exchange_n(a, expected, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);       \
  }                                                                                                      \
  QN_HOOK T __tsan_atomic##bits##_compare_exchange_val(volatile T* a, T expected, T v, int, int) {       \
    note(a, sizeof(T), Access::kAtomicWrite);                                                            \
    __atomic_compare_exchange_n(a, &expected, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);             \
    return expected;                                                                                     \
  }
QN_ATOMIC_HOOKS(8, uint8_t)
QN_ATOMIC_HOOKS(16, uint16_t)
QN_ATOMIC_HOOKS(32, uint32_t)
QN_ATOMIC_HOOKS(64, uint64_t)
QN_HOOK void __tsan_atomic_thread_fence(int) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
QN_HOOK void __tsan_atomic_signal_fence(int) { __atomic_signal_fence(__ATOMIC_SEQ_CST); }
