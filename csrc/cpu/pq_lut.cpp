// The LUT path of the CPU pq_linear (pq_lut.h): the kernel bodies, written once for every ISA
// path, their entry functions under each path's target attribute, and the threading.
//
// y = x . W^T with W's block (o, j) = C[code(o, j)] (DESIGN §3.3). For an input block j and a row
// x_r, the table T[k] = x_r[block j] . C[k] (K entries) turns the bs multiply-adds of every
// output into one table read: y[r][o] = sum_j T_j[code(o, j)].
//  * one row (lut_gemv_body): per 8 input blocks, 8 tables of K floats (8 KiB at K = 256: L1),
//    then for 8 outputs at a time 8 table reads each into 8 scalar sums; the uint8 codes of 8
//    outputs for a block are one 8-byte load. About one cycle per (output, block) on Zen 3: no
//    gathers (slow on AMD), no vector inserts. Threads split the outputs.
//  * kLanes rows (lut_rows_body): the table holds kLanes rows per entry, T[j][k][r], so one vector
//    add serves kLanes rows (8 on AVX2 and portable, 16 on AVX-512); the tables of kRowsBlocks
//    blocks (32 KiB on AVX2 at K = 256) are built, then each output adds its kRowsBlocks entries
//    into an accumulator acc[o][kLanes] held in a register. Threads take whole chunks of rows
//    when there are enough, else split the input blocks and sum their partial outputs.
//  * one row on AVX-512 (K <= 256, uint8 codes): the 256-entry table of an input block lives in
//    16 zmm registers and 16 outputs are looked up at once by 8 two-table permutes and a 3-level
//    blend on the code's high bits.
// Building the tables costs K*bs FMAs per block and row, 1/bs of the dense product; the table
// reads are the rest. Codes are read in the packed layout [n_blocks][out] (ops.pq_pack_codes).
#include "pq_lut.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#include "quantnoise/dispatch.h"
#include "vec.h"

#if defined(QN_X86)
#include <immintrin.h>
#endif

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"  // vectors stay inside force-inlined code (vec.h)
// GCC 12's avx512fintrin.h reads an intentionally undefined register in _mm512_cvtepu8_epi32.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace quantnoise {
namespace {

using vec::broadcast;
using vec::kLanes;
using vec::load;
using vec::store;

// Codebook transposed for the one-row table build: Ct[d][k] = C[k][d], k padded with zeros to
// a multiple of 16 (Kp). Ct has bs * Kp floats.
inline int64_t padded_k(int64_t K) { return (K + 15) / 16 * 16; }

inline void transpose_codebook(const float* C, int64_t K, int64_t bs, float* Ct) {
  const int64_t Kp = padded_k(K);
  std::fill(Ct, Ct + bs * Kp, 0.f);
  for (int64_t k = 0; k < K; ++k)
    for (int64_t d = 0; d < bs; ++d) Ct[d * Kp + k] = C[k * bs + d];
}

// ---------------------------------------------------------------------------------------------
// One row: y[o] = sum_j x[block j] . C[code(o, j)] for o in [o0, o1) (y written, not added to).
// codes: packed [nb][out]; Ct: transpose_codebook; T: scratch of kGemvBlocks * padded_k(K) floats.
constexpr int64_t kGemvBlocks = 8;

template <typename V, int64_t kBs>
QN_ALWAYS_INLINE void gemv_tables(const float* x, const float* Ct, int64_t Kp, int64_t bs, int64_t j0, int64_t jn,
                                  float* T) {
  constexpr int L = kLanes<V>;
  for (int64_t jj = 0; jj < jn; ++jj) {
    const float* xj = x + (j0 + jj) * bs;
    float* t = T + jj * Kp;
    if constexpr (kBs > 0) {
      V xd[kBs];  // hoisted: the stores to T cannot alias these
      for (int64_t d = 0; d < kBs; ++d) xd[d] = broadcast<V>(xj[d]);
      for (int64_t k = 0; k < Kp; k += L) {
        V acc = xd[0] * load<V>(Ct + k);
        for (int64_t d = 1; d < kBs; ++d) acc += xd[d] * load<V>(Ct + d * Kp + k);
        store<V>(t + k, acc);
      }
    } else {
      for (int64_t k = 0; k < Kp; k += L) store<V>(t + k, V{});
      for (int64_t d = 0; d < bs; ++d) {
        const V xv = broadcast<V>(xj[d]);
        for (int64_t k = 0; k < Kp; k += L) store<V>(t + k, load<V>(t + k) + xv * load<V>(Ct + d * Kp + k));
      }
    }
  }
}

template <typename V, typename code_t, int64_t kBs>
QN_ALWAYS_INLINE void lut_gemv_body(const float* x, const code_t* codes, const float* Ct, int64_t K, int64_t bs,
                                    int64_t nb, int64_t out, int64_t o0, int64_t o1, float* T, float* y) {
  const int64_t Kp = padded_k(K);
  std::fill(y + o0, y + o1, 0.f);
  for (int64_t j0 = 0; j0 < nb; j0 += kGemvBlocks) {
    const int64_t jn = std::min(kGemvBlocks, nb - j0);
    gemv_tables<V, kBs>(x, Ct, Kp, bs, j0, jn, T);
    const code_t* cj = codes + j0 * out;
    int64_t o = o0;
    if constexpr (std::is_same_v<code_t, uint8_t>) {
      if (jn == kGemvBlocks) {
        // 8 outputs in flight: 8 independent sums hide the add latency; one 8-byte load brings
        // the codes of all 8 for one block.
        for (; o + 8 <= o1; o += 8) {
          float s[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
#pragma GCC unroll 8
          for (int64_t jj = 0; jj < kGemvBlocks; ++jj) {  // unrolled: table offsets are displacements
            uint64_t c;
            std::memcpy(&c, cj + jj * out + o, 8);
            const float* t = T + jj * Kp;
            for (int q = 0; q < 8; q += 2, c >>= 16) {  // two bytes per shift (movzx of al and ah)
              s[q] += t[c & 0xff];
              s[q + 1] += t[(c >> 8) & 0xff];
            }
          }
          for (int q = 0; q < 8; ++q) y[o + q] += s[q];
        }
      }
    }
    for (; o < o1; ++o) {
      float s = 0.f;
      for (int64_t jj = 0; jj < jn; ++jj) s += T[jj * Kp + static_cast<int64_t>(cj[jj * out + o])];
      y[o] += s;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// kLanes rows: acc[o][r] += sum_{j in [j0, j1)} T_j[code(o, j)][r]. xT [in][kLanes] holds the rows
// transposed (zero-padded past the last row); C [K][bs]; T: scratch of kRowsBlocks * K * kLanes.
constexpr int64_t kRowsBlocks = 4;

template <typename V, int64_t kBs>
QN_ALWAYS_INLINE void rows_tables(const float* xT, const float* C, int64_t K, int64_t bs, int64_t j0, int64_t jn,
                                  float* T) {
  constexpr int L = kLanes<V>;
  for (int64_t jj = 0; jj < jn; ++jj) {
    const float* xj = xT + (j0 + jj) * bs * L;
    float* t = T + jj * K * L;
    if constexpr (kBs > 0) {
      V xd[kBs];
      for (int64_t d = 0; d < kBs; ++d) xd[d] = load<V>(xj + d * L);
      for (int64_t k = 0; k < K; ++k) {
        const float* ck = C + k * kBs;
        // two chains halve the FMA latency the table entry waits for
        V a0 = broadcast<V>(ck[0]) * xd[0];
        V a1 = kBs > 1 ? broadcast<V>(ck[1]) * xd[1 % kBs] : V{};
        for (int64_t d = 2; d + 1 < kBs; d += 2) {
          a0 += broadcast<V>(ck[d]) * xd[d];
          a1 += broadcast<V>(ck[d + 1]) * xd[d + 1];
        }
        if constexpr (kBs % 2 == 1 && kBs > 1) a0 += broadcast<V>(ck[kBs - 1]) * xd[kBs - 1];
        store<V>(t + k * L, a0 + a1);
      }
    } else {
      for (int64_t k = 0; k < K; ++k) {
        const float* ck = C + k * bs;
        V a = V{};
        for (int64_t d = 0; d < bs; ++d) a += broadcast<V>(ck[d]) * load<V>(xj + d * L);
        store<V>(t + k * L, a);
      }
    }
  }
}

template <typename V, typename code_t, int64_t kBs>
QN_ALWAYS_INLINE void lut_rows_body(const float* xT, const code_t* codes, const float* C, int64_t K, int64_t bs,
                                    int64_t out, int64_t j0, int64_t j1, float* T, float* acc) {
  constexpr int L = kLanes<V>;
  for (int64_t jc = j0; jc < j1; jc += kRowsBlocks) {
    const int64_t jn = std::min(kRowsBlocks, j1 - jc);
    rows_tables<V, kBs>(xT, C, K, bs, jc, jn, T);
    const code_t* c0 = codes + jc * out;
    if (jn == kRowsBlocks) {  // the common case, unrolled: kRowsBlocks independent table reads
      for (int64_t o = 0; o < out; ++o) {
        V a = load<V>(acc + o * L);
        for (int64_t jj = 0; jj < kRowsBlocks; ++jj)
          a += load<V>(T + (jj * K + static_cast<int64_t>(c0[jj * out + o])) * L);
        store<V>(acc + o * L, a);
      }
    } else {
      for (int64_t o = 0; o < out; ++o) {
        V a = load<V>(acc + o * L);
        for (int64_t jj = 0; jj < jn; ++jj) a += load<V>(T + (jj * K + static_cast<int64_t>(c0[jj * out + o])) * L);
        store<V>(acc + o * L, a);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Entry functions: the bodies above under each path's target attribute.
#define QN_GEMV_ARGS                                                                                                 \
  const float *x, const code_t *packed, const float *Ct, int64_t K, int64_t bs, int64_t nb, int64_t out, int64_t o0, \
      int64_t o1, float *T, float *y
#define QN_GEMV_CALL(V) lut_gemv_body<V, code_t, kBs>(x, packed, Ct, K, bs, nb, out, o0, o1, T, y)
#define QN_ROWS_ARGS                                                                                                 \
  const float *xT, const code_t *packed, const float *C, int64_t K, int64_t bs, int64_t out, int64_t j0, int64_t j1, \
      float *T, float *acc
#define QN_ROWS_CALL(V) lut_rows_body<V, code_t, kBs>(xT, packed, C, K, bs, out, j0, j1, T, acc)

template <typename code_t, int64_t kBs>
void gemv_portable(QN_GEMV_ARGS) {
  QN_GEMV_CALL(vec::f32x8);
}
template <typename code_t, int64_t kBs>
void rows_portable(QN_ROWS_ARGS) {
  QN_ROWS_CALL(vec::f32x8);
}
#if defined(QN_X86)
template <typename code_t, int64_t kBs>
QN_TARGET_AVX2 void gemv_avx2(QN_GEMV_ARGS) {
  QN_GEMV_CALL(vec::f32x8);
}
template <typename code_t, int64_t kBs>
QN_TARGET_AVX2 void rows_avx2(QN_ROWS_ARGS) {
  QN_ROWS_CALL(vec::f32x8);
}
template <typename code_t, int64_t kBs>
QN_TARGET_AVX512 void rows_avx512(QN_ROWS_ARGS) {
  QN_ROWS_CALL(vec::f32x16);
}

// One row, K <= 256, uint8 codes packed. Ct [bs][256] (zero-padded past K). y[o0:o1] += x.W^T.
QN_TARGET_AVX512 inline __m512 lookup256(const __m512* T, __m512i idx) {
  // vpermt2ps uses the low 5 bits: each permute reads one 32-entry slice of the table.
  const __m512 p0 = _mm512_permutex2var_ps(T[0], idx, T[1]);
  const __m512 p1 = _mm512_permutex2var_ps(T[2], idx, T[3]);
  const __m512 p2 = _mm512_permutex2var_ps(T[4], idx, T[5]);
  const __m512 p3 = _mm512_permutex2var_ps(T[6], idx, T[7]);
  const __m512 p4 = _mm512_permutex2var_ps(T[8], idx, T[9]);
  const __m512 p5 = _mm512_permutex2var_ps(T[10], idx, T[11]);
  const __m512 p6 = _mm512_permutex2var_ps(T[12], idx, T[13]);
  const __m512 p7 = _mm512_permutex2var_ps(T[14], idx, T[15]);
  // bits 5, 6, 7 pick the slice.
  const __mmask16 m5 = _mm512_test_epi32_mask(idx, _mm512_set1_epi32(32));
  const __mmask16 m6 = _mm512_test_epi32_mask(idx, _mm512_set1_epi32(64));
  const __mmask16 m7 = _mm512_test_epi32_mask(idx, _mm512_set1_epi32(128));
  const __m512 q0 = _mm512_mask_blend_ps(m5, p0, p1), q1 = _mm512_mask_blend_ps(m5, p2, p3);
  const __m512 q2 = _mm512_mask_blend_ps(m5, p4, p5), q3 = _mm512_mask_blend_ps(m5, p6, p7);
  const __m512 r0 = _mm512_mask_blend_ps(m6, q0, q1), r1 = _mm512_mask_blend_ps(m6, q2, q3);
  return _mm512_mask_blend_ps(m7, r0, r1);
}

QN_TARGET_AVX512 void lut_row1_avx512(const float* x, const uint8_t* packed, const float* Ct, int64_t bs,
                                      int64_t n_blocks, int64_t out, int64_t o0, int64_t o1, float* y) {
  for (int64_t j = 0; j < n_blocks; ++j) {
    __m512 T[16];
    for (int v = 0; v < 16; ++v) T[v] = _mm512_setzero_ps();
    for (int64_t d = 0; d < bs; ++d) {
      const __m512 xd = _mm512_set1_ps(x[j * bs + d]);
      const float* cd = Ct + d * 256;
      for (int v = 0; v < 16; ++v) T[v] = _mm512_fmadd_ps(xd, _mm512_loadu_ps(cd + 16 * v), T[v]);
    }
    const uint8_t* cj = packed + j * out;
    int64_t o = o0;
    for (; o + 32 <= o1; o += 32) {  // two groups in flight
      const __m512i i0 = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(cj + o)));
      const __m512i i1 = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(cj + o + 16)));
      _mm512_storeu_ps(y + o, _mm512_add_ps(_mm512_loadu_ps(y + o), lookup256(T, i0)));
      _mm512_storeu_ps(y + o + 16, _mm512_add_ps(_mm512_loadu_ps(y + o + 16), lookup256(T, i1)));
    }
    for (; o < o1; o += 16) {
      const __mmask16 m = o + 16 <= o1 ? __mmask16(0xFFFF) : __mmask16((1u << (o1 - o)) - 1);
      const __m512i idx = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(m, cj + o));
      _mm512_mask_storeu_ps(y + o, m, _mm512_add_ps(_mm512_maskz_loadu_ps(m, y + o), lookup256(T, idx)));
    }
  }
}
#endif  // QN_X86
#undef QN_GEMV_ARGS
#undef QN_GEMV_CALL
#undef QN_ROWS_ARGS
#undef QN_ROWS_CALL

// ---------------------------------------------------------------------------------------------
// One row: threads split the outputs; each builds the tables it reads (cheap: K*bs per block).
template <typename code_t>
void lut_gemv(CpuIsa isa, const float* x, const code_t* packed, const float* C, const PQShape& s, float* y) {
  const int64_t K = s.n_centroids, bs = s.block_size, Kp = padded_k(K);
  std::vector<float> Ct(bs * Kp);
  transpose_codebook(C, K, bs, Ct.data());
  const int64_t groups = (s.out + 7) / 8;  // 8 outputs share one code load
  at::parallel_for(0, groups, 64, [&](int64_t g0, int64_t g1) {
    std::vector<float> T(kGemvBlocks * Kp);
    const int64_t o0 = g0 * 8, o1 = std::min(s.out, g1 * 8);
    QN_DISPATCH_BLOCK_SIZE(bs, kBs, [&] {
#if defined(QN_X86)
      if (isa >= CpuIsa::kAvx2)
        return gemv_avx2<code_t, kBs>(x, packed, Ct.data(), K, bs, s.n_blocks, s.out, o0, o1, T.data(), y);
#endif
      gemv_portable<code_t, kBs>(x, packed, Ct.data(), K, bs, s.n_blocks, s.out, o0, o1, T.data(), y);
    });
  });
}

// kL rows at a time (kL = 16: the avx512 path; 8: avx2 and portable). y zeroed; partial sums added.
template <int kL, typename code_t>
void lut_rows(CpuIsa isa, const float* xf, int64_t M, const code_t* packed, const float* C, const PQShape& s,
              float* y) {
  const int64_t K = s.n_centroids, bs = s.block_size, nb = s.n_blocks, out = s.out, in = nb * bs;
  const int64_t n_chunks = (M + kL - 1) / kL, n_threads = at::get_num_threads();
  auto run = [&](const float* xT, int64_t j0, int64_t j1, float* T, float* acc) {
    QN_DISPATCH_BLOCK_SIZE(bs, kBs, [&] {
#if defined(QN_X86)
      if constexpr (kL == 16) {
        return rows_avx512<code_t, kBs>(xT, packed, C, K, bs, out, j0, j1, T, acc);
      } else if (isa >= CpuIsa::kAvx2) {
        return rows_avx2<code_t, kBs>(xT, packed, C, K, bs, out, j0, j1, T, acc);
      }
#endif
      rows_portable<code_t, kBs>(xT, packed, C, K, bs, out, j0, j1, T, acc);
    });
  };
  auto rows_in = [&](int64_t c, float* xT) {  // rows c*kL .. of x, transposed to [in][kL]
    std::fill(xT, xT + in * kL, 0.f);
    for (int64_t r = c * kL; r < std::min(M, (c + 1) * kL); ++r)
      for (int64_t i = 0; i < in; ++i) xT[i * kL + (r - c * kL)] = xf[r * in + i];
  };
  auto rows_out = [&](int64_t c, const float* acc) {
    for (int64_t r = c * kL; r < std::min(M, (c + 1) * kL); ++r)
      for (int64_t o = 0; o < out; ++o) y[r * out + o] += acc[o * kL + (r - c * kL)];
  };
  if (n_chunks % n_threads == 0 || n_chunks >= 4 * n_threads) {  // whole chunks per thread
    at::parallel_for(0, n_chunks, 1, [&](int64_t c0, int64_t c1) {
      std::vector<float> xT(in * kL), T(kRowsBlocks * K * kL), acc(out * kL);
      for (int64_t c = c0; c < c1; ++c) {
        rows_in(c, xT.data());
        std::fill(acc.begin(), acc.end(), 0.f);
        run(xT.data(), 0, nb, T.data(), acc.data());
        rows_out(c, acc.data());
      }
    });
    return;
  }
  std::vector<float> xT(in * kL), acc(n_threads * out * kL);
  for (int64_t c = 0; c < n_chunks; ++c) {  // few chunks: threads split the input blocks
    rows_in(c, xT.data());
    std::fill(acc.begin(), acc.end(), 0.f);
    std::vector<char> used(n_threads, 0);
    at::parallel_for(0, nb, kRowsBlocks, [&](int64_t j0, int64_t j1) {
      const int64_t t = at::get_thread_num();
      used[t] = 1;
      std::vector<float> T(kRowsBlocks * K * kL);
      run(xT.data(), j0, j1, T.data(), acc.data() + t * out * kL);
    });
    for (int64_t t = 0; t < n_threads; ++t)
      if (used[t]) rows_out(c, acc.data() + t * out * kL);
  }
}

}  // namespace

template <typename code_t>
void lut_linear(CpuIsa isa, const float* xf, int64_t M, const code_t* packed, const float* C, const PQShape& s,
                float* y) {
  const int64_t K = s.n_centroids, bs = s.block_size, nb = s.n_blocks, out = s.out, in = nb * bs;
#if defined(QN_X86)
  if constexpr (std::is_same_v<code_t, uint8_t>) {
    if (M <= 2 && K <= 256 && isa == CpuIsa::kAvx512) {
      std::vector<float> Ct(bs * 256, 0.f);  // [bs][256]: contiguous along the centroids
      for (int64_t k = 0; k < K; ++k)
        for (int64_t d = 0; d < bs; ++d) Ct[d * 256 + k] = C[k * bs + d];
      const int64_t groups = (out + 15) / 16;
      for (int64_t r = 0; r < M; ++r) {
        at::parallel_for(0, groups, 16, [&](int64_t g0, int64_t g1) {
          lut_row1_avx512(xf + r * in, packed, Ct.data(), bs, nb, out, g0 * 16, std::min(out, g1 * 16), y + r * out);
        });
      }
      return;
    }
  }
  if (isa == CpuIsa::kAvx512 && M > 1) return lut_rows<16, code_t>(isa, xf, M, packed, C, s, y);
#endif
  if (M == 1) return lut_gemv<code_t>(isa, xf, packed, C, s, y);
  lut_rows<8, code_t>(isa, xf, M, packed, C, s, y);
}

template void lut_linear<uint8_t>(CpuIsa, const float*, int64_t, const uint8_t*, const float*, const PQShape&, float*);
template void lut_linear<int32_t>(CpuIsa, const float*, int64_t, const int32_t*, const float*, const PQShape&, float*);

}  // namespace quantnoise

#pragma GCC diagnostic pop
