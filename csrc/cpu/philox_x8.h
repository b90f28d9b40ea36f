// Eight Philox-4x32-10 groups at once for the CPU noise kernels: the draws of 32 consecutive
// blocks, bit for bit those of BlockRng::draw_group (blocks.h), which the CUDA kernels use.
//
// Fake-quant noise with block size 1 draws one 32-bit lane per weight: one scalar Philox call per
// four weights costs more than reading and writing them. The AVX2 path runs eight counters side by
// side in ymm registers (vpmuludq gives the 32x32->64 products); the portable path loops.
#pragma once

#include <cstdint>

#include "quantnoise/blocks.h"
#include "quantnoise/cpu_features.h"

#if defined(QN_X86)
#include <immintrin.h>
#endif

namespace quantnoise {

constexpr int64_t kGroupsX8 = 8;
constexpr int64_t kLanesX8 = kGroupsX8 * kBlocksPerDraw;  // 32 blocks per batch

#if defined(QN_X86)
namespace philox_detail {

// hi and lo words of m * a in each of the eight 32-bit lanes.
QN_TARGET_AVX2 inline void mulhilo_x8(__m256i a, __m256i m, __m256i& hi, __m256i& lo) {
  const __m256i even = _mm256_mul_epu32(a, m);                        // lanes 0, 2, 4, 6 as 64-bit
  const __m256i odd = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), m);  // lanes 1, 3, 5, 7
  hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
  lo = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
}

}  // namespace philox_detail

// lanes[4k + j] = lane j of group g + k, k < 8 (philox.h's rounds, eight counters per register).
QN_TARGET_AVX2 __attribute__((noinline)) inline void draw_x8_avx2(const BlockRng& rng, int64_t g, uint32_t* lanes) {
  using philox_detail::mulhilo_x8;
  alignas(32) uint32_t c0[8], c1[8];
  for (int k = 0; k < 8; ++k) {
    const uint64_t c = static_cast<uint64_t>(g) + static_cast<uint64_t>(k);
    c0[k] = static_cast<uint32_t>(c);
    c1[k] = static_cast<uint32_t>(c >> 32);
  }
  __m256i x0 = _mm256_load_si256(reinterpret_cast<const __m256i*>(c0));
  __m256i x1 = _mm256_load_si256(reinterpret_cast<const __m256i*>(c1));
  __m256i x2 = _mm256_set1_epi32(static_cast<int>(rng.off_lo)), x3 = _mm256_set1_epi32(static_cast<int>(rng.off_hi));
  const __m256i m0 = _mm256_set1_epi32(static_cast<int>(0xD2511F53u)),
                m1 = _mm256_set1_epi32(static_cast<int>(0xCD9E8D57u));
  uint32_t key0 = rng.key0, key1 = rng.key1;
  for (int round = 0; round < 10; ++round) {
    if (round > 0) {
      key0 += 0x9E3779B9u;
      key1 += 0xBB67AE85u;
    }
    __m256i hi0, lo0, hi1, lo1;
    mulhilo_x8(x0, m0, hi0, lo0);
    mulhilo_x8(x2, m1, hi1, lo1);
    x0 = _mm256_xor_si256(_mm256_xor_si256(hi1, x1), _mm256_set1_epi32(static_cast<int>(key0)));
    x1 = lo1;
    x2 = _mm256_xor_si256(_mm256_xor_si256(hi0, x3), _mm256_set1_epi32(static_cast<int>(key1)));
    x3 = lo0;
  }
  // Transpose the four lane vectors (x_j[k] = lane j of group k) into group order.
  const __m256i t0 = _mm256_unpacklo_epi32(x0, x1), t1 = _mm256_unpackhi_epi32(x0, x1);
  const __m256i t2 = _mm256_unpacklo_epi32(x2, x3), t3 = _mm256_unpackhi_epi32(x2, x3);
  const __m256i u0 = _mm256_unpacklo_epi64(t0, t2), u1 = _mm256_unpackhi_epi64(t0, t2);  // groups 0|4, 1|5
  const __m256i u2 = _mm256_unpacklo_epi64(t1, t3), u3 = _mm256_unpackhi_epi64(t1, t3);  // groups 2|6, 3|7
  __m256i* out = reinterpret_cast<__m256i*>(lanes);
  _mm256_storeu_si256(out + 0, _mm256_permute2x128_si256(u0, u1, 0x20));
  _mm256_storeu_si256(out + 1, _mm256_permute2x128_si256(u2, u3, 0x20));
  _mm256_storeu_si256(out + 2, _mm256_permute2x128_si256(u0, u1, 0x31));
  _mm256_storeu_si256(out + 3, _mm256_permute2x128_si256(u2, u3, 0x31));
}
#endif

// The same draws on any CPU.
inline void draw_x8_portable(const BlockRng& rng, int64_t g, uint32_t* lanes) {
  for (int64_t k = 0; k < kGroupsX8; ++k) {
    const U32x4 v = rng.draw_group(g + k);
    for (int64_t j = 0; j < kBlocksPerDraw; ++j) lanes[k * kBlocksPerDraw + j] = v.v[j];
  }
}

template <bool kAvx2>
inline void draw_x8(const BlockRng& rng, int64_t g, uint32_t* lanes) {
#if defined(QN_X86)
  if constexpr (kAvx2) return draw_x8_avx2(rng, g, lanes);
#endif
  draw_x8_portable(rng, g, lanes);
}

}  // namespace quantnoise
