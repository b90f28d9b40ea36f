// parallel_for_dynamic: at::parallel_for with dynamic scheduling, for CPU kernels whose tasks are
// independent and whose results do not depend on which thread runs them.
//
// at::parallel_for splits a range into one contiguous part per thread up front, so on a shared
// machine a thread the OS preempts holds up half of the work. Here each thread takes `grain`
// items at a time from a shared counter until none are left: a preempted thread delays only the
// grain it holds. Runs inline when one thread suffices or when already inside a parallel region.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdint>

namespace quantnoise {

template <class F>
void parallel_for_dynamic(int64_t begin, int64_t end, int64_t grain, const F& f) {
  if (end <= begin) return;
  grain = std::max<int64_t>(grain, 1);
  const int64_t n_grains = (end - begin + grain - 1) / grain;
  const int64_t threads = std::min<int64_t>(at::get_num_threads(), n_grains);
  if (threads <= 1 || at::in_parallel_region()) {
    f(begin, end);
    return;
  }
  std::atomic<int64_t> next{0};
  at::parallel_for(0, threads, 1, [&](int64_t, int64_t) {
    for (int64_t g = next.fetch_add(1, std::memory_order_relaxed); g < n_grains;
         g = next.fetch_add(1, std::memory_order_relaxed)) {
      const int64_t b = begin + g * grain;
      f(b, std::min(end, b + grain));
    }
  });
}

}  // namespace quantnoise
