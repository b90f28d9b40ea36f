// Philox-4x32-10 counter-based RNG (Salmon et al., SC'11), one implementation for CPU and CUDA.
//
// Counter-based means: the random numbers for position c are a pure function of (key, c), so
// any thread can draw the number of any block without shared state, and backward can
// regenerate forward's mask instead of storing it.
#pragma once

#include <cstdint>

#include "quantnoise/macros.h"

namespace quantnoise {

struct U32x4 {
  uint32_t v[4];
};

QN_INLINE void mulhilo32(uint32_t a, uint32_t b, uint32_t& hi, uint32_t& lo) {
  const uint64_t product = static_cast<uint64_t>(a) * static_cast<uint64_t>(b);
  hi = static_cast<uint32_t>(product >> 32);
  lo = static_cast<uint32_t>(product);
}

// Ten rounds with the Random123 constants; the key is bumped between rounds.
QN_INLINE U32x4 philox4x32_10(U32x4 ctr, uint32_t key0, uint32_t key1) {
  constexpr uint32_t kMul0 = 0xD2511F53u, kMul1 = 0xCD9E8D57u;
  constexpr uint32_t kWeyl0 = 0x9E3779B9u, kWeyl1 = 0xBB67AE85u;
  for (int round = 0; round < 10; ++round) {
    if (round > 0) {
      key0 += kWeyl0;
      key1 += kWeyl1;
    }
    uint32_t hi0, lo0, hi1, lo1;
    mulhilo32(kMul0, ctr.v[0], hi0, lo0);
    mulhilo32(kMul1, ctr.v[2], hi1, lo1);
    ctr = U32x4{{hi1 ^ ctr.v[1] ^ key0, lo1, hi0 ^ ctr.v[3] ^ key1, lo0}};
  }
  return ctr;
}

}  // namespace quantnoise
