// C++ tests of the shared headers and of the CPU op reached through the dispatcher.
// Plain asserts-with-messages: no test framework needed; a non-zero exit fails ctest.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cstdio>
#include <cstdlib>

#include "quantnoise/blocks.h"
#include "quantnoise/philox.h"

namespace {

int failures = 0;

void expect(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "FAILED: %s\n", what);
    ++failures;
  }
}

// Known-answer vectors published with Random123 (kat_vectors, philox4x32_10).
void test_philox_known_answers() {
  using quantnoise::U32x4;
  struct Kat {
    U32x4 ctr;
    uint32_t k0, k1;
    U32x4 expected;
  };
  const Kat kats[] = {
      {{{0, 0, 0, 0}}, 0, 0, {{0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}}},
      {{{0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff}},
       0xffffffff,
       0xffffffff,
       {{0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}}},
      {{{0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344}},
       0xa4093822,
       0x299f31d0,
       {{0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}}},
  };
  for (const Kat& kat : kats) {
    const U32x4 got = quantnoise::philox4x32_10(kat.ctr, kat.k0, kat.k1);
    for (int i = 0; i < 4; ++i) expect(got.v[i] == kat.expected.v[i], "philox4x32_10 known-answer vector");
  }
}

void test_threshold_edges() {
  const auto never = quantnoise::make_block_rng(7, 0, 0.0);
  const auto always = quantnoise::make_block_rng(7, 0, 1.0);
  for (int64_t b = 0; b < 1000; ++b) {
    expect(!never.block_noised(b), "p = 0 never noises a block");
    expect(always.block_noised(b), "p = 1 always noises a block");
  }
}

// The CPU op drops exactly the blocks the header's rule selects, and scales the others.
void test_cpu_op_matches_header_rule() {
  const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("quantnoise::block_noise", "")
          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, double, int64_t, int64_t, bool, bool,
                            c10::string_view, const std::optional<at::Tensor>&, const std::optional<at::Tensor>&,
                            const std::optional<at::Tensor>&, int64_t, int64_t, const std::optional<at::Tensor>&)>();
  const at::Tensor w = at::rand({16, 24}) + 1.0;  // strictly positive: zero means dropped
  const int64_t seed = 42, block_size = 4;
  const double p = 0.25;
  const at::Tensor out = op.call(w, at::scalar_tensor(seed, at::kLong), p, block_size, 3, true, true, "drop",
                                 std::nullopt, std::nullopt, std::nullopt, 0, 255, std::nullopt);
  const auto rng = quantnoise::make_block_rng(seed, 3, p);
  const auto wa = w.accessor<float, 2>();
  const auto oa = out.accessor<float, 2>();
  for (int64_t r = 0; r < 16; ++r) {
    for (int64_t c = 0; c < 24; ++c) {
      const bool dropped = rng.block_noised((r * 24 + c) / block_size);
      const float want = dropped ? 0.0f : static_cast<float>(1.0 / (1.0 - p)) * wa[r][c];  // fp32 math, as the kernel
      expect(oa[r][c] == want, "CPU block_noise follows the header's block rule");
    }
  }
}

}  // namespace

int main() {
  test_philox_known_answers();
  test_threshold_edges();
  test_cpu_op_matches_header_rule();
  std::printf("%s (%d failures)\n", failures == 0 ? "PASSED" : "FAILED", failures);
  return failures == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
