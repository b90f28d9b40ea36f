// Vector types of the k-means CPU kernels (kmeans.cpp, kmeanspp.cpp): one per CPU path, with the
// same operations, so one generic kernel body serves every path (quantnoise/cpu_features.h). Lanes
// are points; every operation is lane-wise and rounds as its scalar form (fmaf, IEEE min), so all
// paths compute identical values.
//
// The bodies are templates over the vector type V, marked always_inline and called from a wrapper
// compiled for the path (QN_TARGET_AVX2 / QN_TARGET_AVX512). V's operations are plain `inline`
// functions with the path's target attribute: GCC inlines them once the body sits in the wrapper
// (always_inline would try, and fail, to inline them into the untargeted template first).
//
//   F        W floats            I   W int32           M  a lane mask (lt's result)
//   D        W/2 doubles (the float64 half-vectors of a chunk weight; W = 8 types only)
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

#include "quantnoise/cpu_features.h"

#if defined(QN_X86)
#include <immintrin.h>
// A vector-typed helper inlined into its targeted caller has no ABI to change; GCC 12's AVX-512
// intrinsics (_mm512_min_ps, ...) start from _mm512_undefined_*, which -Wuninitialized flags.
#pragma GCC diagnostic ignored "-Wpsabi"
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace quantnoise {

// Plain C++ over 8 lanes: what compilers vectorise for any CPU (NEON, SSE2), fmaf per lane.
struct PortableVec {
  static constexpr int W = 8;
  struct F {
    float v[W];
  };
  struct I {
    int32_t v[W];
  };
  struct M {
    bool v[W];
  };
  struct D {
    double v[W / 2];
  };
  static F load(const float* p) {
    F r;
    for (int l = 0; l < W; ++l) r.v[l] = p[l];
    return r;
  }
  static void store(float* p, F a) {
    for (int l = 0; l < W; ++l) p[l] = a.v[l];
  }
  static F set1(float a) {
    F r;
    for (int l = 0; l < W; ++l) r.v[l] = a;
    return r;
  }
  static F bcast(const float* p) { return set1(*p); }
  static F zero() { return set1(0.0f); }
  static F inf() { return set1(std::numeric_limits<float>::infinity()); }
  static F sub(F a, F b) {
    for (int l = 0; l < W; ++l) a.v[l] -= b.v[l];
    return a;
  }
  static F fmadd(F a, F b, F c) {  // a * b + c, rounded once
    for (int l = 0; l < W; ++l) c.v[l] = fmaf(a.v[l], b.v[l], c.v[l]);
    return c;
  }
  static F fnmadd(F a, F b, F c) {  // c - a * b, rounded once
    for (int l = 0; l < W; ++l) c.v[l] = fmaf(-a.v[l], b.v[l], c.v[l]);
    return c;
  }
  static F min(F a, F b) {  // b where b < a, else a
    for (int l = 0; l < W; ++l) a.v[l] = b.v[l] < a.v[l] ? b.v[l] : a.v[l];
    return a;
  }
  static M lt(F a, F b) {
    M m;
    for (int l = 0; l < W; ++l) m.v[l] = a.v[l] < b.v[l];
    return m;
  }
  static I set_i(int32_t a) {
    I r;
    for (int l = 0; l < W; ++l) r.v[l] = a;
    return r;
  }
  static I inc(I a) {
    for (int l = 0; l < W; ++l) ++a.v[l];
    return a;
  }
  static I select(M m, I a, I b) {  // a where m, else b
    for (int l = 0; l < W; ++l) b.v[l] = m.v[l] ? a.v[l] : b.v[l];
    return b;
  }
  static void store_i(int32_t* p, I a) {
    for (int l = 0; l < W; ++l) p[l] = a.v[l];
  }
  static D zero_d() { return D{}; }
  static D add_half(D acc, F a, int half) {  // acc + float64(lanes [4*half, 4*half + 4) of a)
    for (int l = 0; l < W / 2; ++l) acc.v[l] += static_cast<double>(a.v[half * W / 2 + l]);
    return acc;
  }
  static void store_d(double* p, D a) {
    for (int l = 0; l < W / 2; ++l) p[l] = a.v[l];
  }
};

#if defined(QN_X86)
struct Avx2Vec {
  static constexpr int W = 8;
  using F = __m256;
  using I = __m256i;
  using M = __m256;
  using D = __m256d;
  QN_TARGET_AVX2 static inline F load(const float* p) { return _mm256_loadu_ps(p); }
  QN_TARGET_AVX2 static inline void store(float* p, F a) { _mm256_storeu_ps(p, a); }
  QN_TARGET_AVX2 static inline F set1(float a) { return _mm256_set1_ps(a); }
  QN_TARGET_AVX2 static inline F bcast(const float* p) { return _mm256_broadcast_ss(p); }
  QN_TARGET_AVX2 static inline F zero() { return _mm256_setzero_ps(); }
  QN_TARGET_AVX2 static inline F inf() { return _mm256_set1_ps(std::numeric_limits<float>::infinity()); }
  QN_TARGET_AVX2 static inline F sub(F a, F b) { return _mm256_sub_ps(a, b); }
  QN_TARGET_AVX2 static inline F fmadd(F a, F b, F c) { return _mm256_fmadd_ps(a, b, c); }
  QN_TARGET_AVX2 static inline F fnmadd(F a, F b, F c) { return _mm256_fnmadd_ps(a, b, c); }
  QN_TARGET_AVX2 static inline F min(F a, F b) { return _mm256_min_ps(b, a); }  // vminps: b < a ? b : a
  QN_TARGET_AVX2 static inline M lt(F a, F b) { return _mm256_cmp_ps(a, b, _CMP_LT_OQ); }
  QN_TARGET_AVX2 static inline I set_i(int32_t a) { return _mm256_set1_epi32(a); }
  QN_TARGET_AVX2 static inline I inc(I a) { return _mm256_add_epi32(a, _mm256_set1_epi32(1)); }
  QN_TARGET_AVX2 static inline I select(M m, I a, I b) {
    return _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(b), _mm256_castsi256_ps(a), m));
  }
  QN_TARGET_AVX2 static inline void store_i(int32_t* p, I a) { _mm256_storeu_si256(reinterpret_cast<I*>(p), a); }
  QN_TARGET_AVX2 static inline D zero_d() { return _mm256_setzero_pd(); }
  QN_TARGET_AVX2 static inline D add_half(D acc, F a, int half) {
    return _mm256_add_pd(acc, _mm256_cvtps_pd(half ? _mm256_extractf128_ps(a, 1) : _mm256_castps256_ps128(a)));
  }
  QN_TARGET_AVX2 static inline void store_d(double* p, D a) { _mm256_storeu_pd(p, a); }
};

// The operations the assignment uses, 16 lanes.
struct Avx512Vec {
  static constexpr int W = 16;
  using F = __m512;
  using I = __m512i;
  using M = __mmask16;
  QN_TARGET_AVX512 static inline F load(const float* p) { return _mm512_loadu_ps(p); }
  QN_TARGET_AVX512 static inline F bcast(const float* p) { return _mm512_set1_ps(*p); }
  QN_TARGET_AVX512 static inline F inf() { return _mm512_set1_ps(std::numeric_limits<float>::infinity()); }
  QN_TARGET_AVX512 static inline F fnmadd(F a, F b, F c) { return _mm512_fnmadd_ps(a, b, c); }
  QN_TARGET_AVX512 static inline F min(F a, F b) { return _mm512_min_ps(b, a); }
  QN_TARGET_AVX512 static inline M lt(F a, F b) { return _mm512_cmp_ps_mask(a, b, _CMP_LT_OQ); }
  QN_TARGET_AVX512 static inline I set_i(int32_t a) { return _mm512_set1_epi32(a); }
  QN_TARGET_AVX512 static inline I inc(I a) { return _mm512_add_epi32(a, _mm512_set1_epi32(1)); }
  QN_TARGET_AVX512 static inline I select(M m, I a, I b) { return _mm512_mask_mov_epi32(b, m, a); }
  QN_TARGET_AVX512 static inline void store_i(int32_t* p, I a) { _mm512_storeu_si512(p, a); }
};
#endif

}  // namespace quantnoise
