// CPU kernels of quantnoise::pq_decode and quantnoise::pq_linear (DESIGN §3.3; pq_embedding is
// cpu/pq_embedding.cpp). Codes come in the interchange or the packed layout (quantnoise/pq.h).
//
// pq_linear has two paths:
//  * LUT (small and medium batches): for a chunk of 16 rows, a table lut[j][k][r] = x_r[block j] .
//    centroid k, then y[r][o] = sum_j lut[j][codes[j][o]][r]: one 16-wide vector add per weight
//    block serves 16 rows. Threads split the input blocks and sum their partial outputs at the end.
//    A single row on AVX-512 takes a register path instead: the 256-entry table of one input block
//    lives in 16 zmm registers and 16 outputs are looked up at once by 8 two-table permutes and a
//    3-level blend on the code's high bits (no gathers; codes of 16 outputs are 16 contiguous bytes
//    in the packed layout).
//  * tile (large batches, float64): decode a few hundred rows of W into a ~1 MiB buffer, at::mm.
// CPU paths (quantnoise/cpu_features.h): avx512 and portable; avx2 runs the portable code.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "quantnoise/checks.h"
#include "quantnoise/cpu_alloc.h"
#include "quantnoise/cpu_features.h"
#include "quantnoise/dispatch.h"
#include "quantnoise/pq.h"
#include "quantnoise/pq_host.h"

#if defined(QN_X86)
#include <immintrin.h>
#endif

namespace quantnoise {

namespace {

constexpr int64_t kRows = 16;  // rows served by one vector add in the LUT path

// W[o - o0][j*bs + d] = C[code(o, j)][d] for o in [o0, o1); code(o, j) = codes[o*so + j*sj].
template <typename scalar_t, typename code_t, int64_t kBs>
void decode_rows_impl(const code_t* codes, int64_t so, int64_t sj, const scalar_t* C, int64_t runtime_bs,
                      int64_t n_blocks, int64_t o0, int64_t o1, scalar_t* W) {
  const int64_t bs = kBs > 0 ? kBs : runtime_bs;
  const int64_t row = n_blocks * bs;
  at::parallel_for(o0, o1, std::max<int64_t>(1, 16384 / std::max<int64_t>(row, 1)), [&](int64_t b, int64_t e) {
    for (int64_t o = b; o < e; ++o) {
      scalar_t* dst = W + (o - o0) * row;
      for (int64_t j = 0; j < n_blocks; ++j) {
        const scalar_t* src = C + static_cast<int64_t>(codes[o * so + j * sj]) * bs;
        for (int64_t d = 0; d < bs; ++d) dst[j * bs + d] = src[d];
      }
    }
  });
}

template <typename scalar_t, typename code_t>
void decode_rows(const code_t* codes, int64_t so, int64_t sj, const scalar_t* C, int64_t bs, int64_t n_blocks,
                 int64_t o0, int64_t o1, scalar_t* W) {
  QN_DISPATCH_BLOCK_SIZE(bs, kBs,
                         [&] { decode_rows_impl<scalar_t, code_t, kBs>(codes, so, sj, C, bs, n_blocks, o0, o1, W); });
}

// ---------------------------------------------------------------------------------------------
// LUT path, chunks of 16 rows. xT [in][16] (rows padded with zeros), packed codes [n_blocks][out],
// C [K][bs]. Blocks [j0, j1) accumulate into acc [out][16]; lut is a [kJc][K][16] scratch.
constexpr int64_t kJc = 4;  // input blocks per table chunk: kJc * K * 64 B stays in L1/L2

template <typename code_t>
void lut_rows_portable(const float* xT, const code_t* packed, const float* C, int64_t K, int64_t bs, int64_t out,
                       int64_t j0, int64_t j1, float* lut, float* acc) {
  for (int64_t jc = j0; jc < j1; jc += kJc) {
    const int64_t jn = std::min(kJc, j1 - jc);
    for (int64_t jj = 0; jj < jn; ++jj) {
      for (int64_t k = 0; k < K; ++k) {
        float v[kRows] = {};
        for (int64_t d = 0; d < bs; ++d) {
          const float c = C[k * bs + d];
          const float* xr = xT + ((jc + jj) * bs + d) * kRows;
          for (int64_t r = 0; r < kRows; ++r) v[r] += c * xr[r];
        }
        std::memcpy(lut + (jj * K + k) * kRows, v, sizeof(v));
      }
    }
    for (int64_t o = 0; o < out; ++o) {
      float a[kRows];
      std::memcpy(a, acc + o * kRows, sizeof(a));
      for (int64_t jj = 0; jj < jn; ++jj) {
        const float* l = lut + (jj * K + static_cast<int64_t>(packed[(jc + jj) * out + o])) * kRows;
        for (int64_t r = 0; r < kRows; ++r) a[r] += l[r];
      }
      std::memcpy(acc + o * kRows, a, sizeof(a));
    }
  }
}

#if defined(QN_X86)
template <typename code_t>
QN_TARGET_AVX512 void lut_rows_avx512(const float* xT, const code_t* packed, const float* C, int64_t K, int64_t bs,
                                      int64_t out, int64_t j0, int64_t j1, float* lut, float* acc) {
  for (int64_t jc = j0; jc < j1; jc += kJc) {
    const int64_t jn = std::min(kJc, j1 - jc);
    for (int64_t jj = 0; jj < jn; ++jj) {
      const float* xj = xT + (jc + jj) * bs * kRows;
      float* lj = lut + jj * K * kRows;
      for (int64_t k = 0; k < K; ++k) {
        __m512 v = _mm512_setzero_ps();
        for (int64_t d = 0; d < bs; ++d)
          v = _mm512_fmadd_ps(_mm512_set1_ps(C[k * bs + d]), _mm512_loadu_ps(xj + d * kRows), v);
        _mm512_storeu_ps(lj + k * kRows, v);
      }
    }
    const code_t* c0 = packed + jc * out;
    if (jn == kJc) {  // the common case, unrolled: 4 independent table loads per output
      const code_t *c1 = c0 + out, *c2 = c1 + out, *c3 = c2 + out;
      const float *l0 = lut, *l1 = lut + K * kRows, *l2 = lut + 2 * K * kRows, *l3 = lut + 3 * K * kRows;
      for (int64_t o = 0; o < out; ++o) {
        __m512 a = _mm512_loadu_ps(acc + o * kRows);
        a = _mm512_add_ps(a, _mm512_loadu_ps(l0 + static_cast<int64_t>(c0[o]) * kRows));
        a = _mm512_add_ps(a, _mm512_loadu_ps(l1 + static_cast<int64_t>(c1[o]) * kRows));
        a = _mm512_add_ps(a, _mm512_loadu_ps(l2 + static_cast<int64_t>(c2[o]) * kRows));
        a = _mm512_add_ps(a, _mm512_loadu_ps(l3 + static_cast<int64_t>(c3[o]) * kRows));
        _mm512_storeu_ps(acc + o * kRows, a);
      }
    } else {
      for (int64_t o = 0; o < out; ++o) {
        __m512 a = _mm512_loadu_ps(acc + o * kRows);
        for (int64_t jj = 0; jj < jn; ++jj) {
          a = _mm512_add_ps(a, _mm512_loadu_ps(lut + (jj * K + static_cast<int64_t>(c0[jj * out + o])) * kRows));
        }
        _mm512_storeu_ps(acc + o * kRows, a);
      }
    }
  }
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

// y[M][out] (fp32, zeroed) = xf[M][in] . W^T through the LUT path, packed codes.
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
#endif
  const int64_t n_threads = at::get_num_threads();
  std::vector<float> xT(in * kRows);
  std::vector<float> acc(n_threads * out * kRows);
  for (int64_t r0 = 0; r0 < M; r0 += kRows) {
    const int64_t rn = std::min(kRows, M - r0);
    std::fill(xT.begin(), xT.end(), 0.f);
    for (int64_t r = 0; r < rn; ++r)
      for (int64_t i = 0; i < in; ++i) xT[i * kRows + r] = xf[(r0 + r) * in + i];
    std::fill(acc.begin(), acc.end(), 0.f);
    std::vector<char> used(n_threads, 0);
    at::parallel_for(0, nb, kJc, [&](int64_t j0, int64_t j1) {
      const int64_t t = at::get_thread_num();
      used[t] = 1;
      std::vector<float> lut(kJc * K * kRows);
      float* a = acc.data() + t * out * kRows;
#if defined(QN_X86)
      if (isa == CpuIsa::kAvx512)
        return lut_rows_avx512<code_t>(xT.data(), packed, C, K, bs, out, j0, j1, lut.data(), a);
#endif
      lut_rows_portable<code_t>(xT.data(), packed, C, K, bs, out, j0, j1, lut.data(), a);
    });
    for (int64_t t = 0; t < n_threads; ++t) {
      if (!used[t]) continue;
      const float* a = acc.data() + t * out * kRows;
      for (int64_t r = 0; r < rn; ++r) {
        float* yr = y + (r0 + r) * out;
        for (int64_t o = 0; o < out; ++o) yr[o] += a[o * kRows + r];
      }
    }
  }
}

// Tile path: y[M][out] = xf . W^T with W decoded ~1 MiB at a time.
template <typename scalar_t, typename code_t>
void tile_linear(const at::Tensor& xf, const code_t* codes, int64_t so, int64_t sj, const scalar_t* C, const PQShape& s,
                 at::Tensor& y) {
  const int64_t in = s.n_blocks * s.block_size;
  const int64_t tile = std::max<int64_t>(16, std::min<int64_t>(s.out, (int64_t{1} << 18) / std::max<int64_t>(in, 1)));
  at::Tensor w = at::empty({tile, in}, xf.options());
  for (int64_t o0 = 0; o0 < s.out; o0 += tile) {
    const int64_t n = std::min(tile, s.out - o0);
    decode_rows<scalar_t, code_t>(codes, so, sj, C, s.block_size, s.n_blocks, o0, o0 + n,
                                  w.mutable_data_ptr<scalar_t>());
    y.narrow(1, o0, n).copy_(at::mm(xf, w.narrow(0, 0, n).t()));
  }
}

// Fake-quantize the rows of x [M][in] (in place, fp32 or fp64 storage, float math).
template <typename scalar_t>
void fake_quant_rows(scalar_t* x, int64_t M, int64_t in, int64_t bits, bool per_token) {
  auto range = [&](int64_t r0, int64_t r1) {
    float lo = 0.f, hi = 0.f;
    for (int64_t i = r0 * in; i < r1 * in; ++i) {
      const float v = static_cast<float>(x[i]);
      lo = std::min(lo, v);
      hi = std::max(hi, v);
    }
    return make_affine_grid(lo, hi, static_cast<int>(bits));
  };
  const AffineGrid whole = per_token ? AffineGrid{} : range(0, M);
  at::parallel_for(0, M, 1, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      const AffineGrid g = per_token ? range(r, r + 1) : whole;
      for (int64_t i = r * in; i < (r + 1) * in; ++i)
        x[i] = static_cast<scalar_t>(fake_quant_affine(static_cast<float>(x[i]), g));
    }
  });
}

// 'auto': the LUT path unless the per-row table costs more than the decoded GEMM would
// (nb*K*bs FMAs to build + ~3 ops per looked-up block, against out*in FMAs).
bool use_lut(const PQShape& s, c10::string_view path) {
  if (path == "lut") return true;
  if (path == "tile") return false;
  const int64_t in = s.n_blocks * s.block_size;
  return s.n_blocks * s.n_centroids * s.block_size + 3 * s.n_blocks * s.out < s.out * in;
}

at::Tensor pq_linear_cpu(const at::Tensor& x, const at::Tensor& codes, const at::Tensor& centroids,
                         const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& centroid_scale,
                         const std::optional<at::Tensor>& centroid_zero_point, bool codes_transposed, int64_t act_bits,
                         c10::string_view act_granularity, c10::string_view path) {
  const PQArgs a = check_pq_linear_args(x, codes, centroids, bias, centroid_scale, centroid_zero_point,
                                        codes_transposed, act_bits, act_granularity, path);
  const PQShape& s = a.s;
  const int64_t in = s.n_blocks * s.block_size;
  const int64_t M = in > 0 ? x.numel() / in : x.numel() / std::max<int64_t>(x.size(-1), 1);
  const bool fp64 = x.scalar_type() == at::kDouble;
  const at::ScalarType compute = fp64 ? at::kDouble : at::kFloat;
  at::Tensor xf = x.reshape({-1, in}).to(compute).contiguous();
  if (act_bits > 0) {
    if (xf.is_same(x) || xf.data_ptr() == x.data_ptr()) xf = xf.clone();  // never write the input
    AT_DISPATCH_FLOATING_TYPES(compute, "pq_linear_act_quant", [&] {
      fake_quant_rows<scalar_t>(xf.mutable_data_ptr<scalar_t>(), xf.size(0), in, act_bits, act_granularity == "token");
    });
  }
  at::Tensor y = at::zeros({xf.size(0), s.out}, xf.options());
  if (M > 0 && s.out > 0 && in > 0) {
    const at::Tensor C = pq_dequantized_centroids(centroids, centroid_scale, centroid_zero_point, compute);
    if (!fp64 && use_lut(s, path)) {
      const CpuIsa isa = cpu_isa();
      const at::Tensor packed = codes_transposed ? codes.contiguous() : codes.t().contiguous();
      QN_DISPATCH_CODE_TYPES(codes.scalar_type(), "pq_linear", [&] {
        lut_linear<code_t>(isa, xf.const_data_ptr<float>(), M, packed.const_data_ptr<code_t>(),
                           C.const_data_ptr<float>(), s, y.mutable_data_ptr<float>());
      });
    } else {
      const at::Tensor cc = codes.contiguous();
      const CodeStrides st = pq_code_strides(codes_transposed, s.out, s.n_blocks);
      AT_DISPATCH_FLOATING_TYPES(compute, "pq_linear_tile", [&] {
        QN_DISPATCH_CODE_TYPES(codes.scalar_type(), "pq_linear", [&] {
          tile_linear<scalar_t, code_t>(xf, cc.const_data_ptr<code_t>(), st.so, st.sj, C.const_data_ptr<scalar_t>(), s,
                                        y);
        });
      });
    }
  }
  if (bias.has_value()) y.add_(bias->to(compute));
  return y.to(a.out_dtype).reshape(a.out_shape);
}

at::Tensor pq_decode_cpu(const at::Tensor& codes, const at::Tensor& centroids, at::IntArrayRef shape,
                         const std::optional<at::Tensor>& centroid_scale,
                         const std::optional<at::Tensor>& centroid_zero_point, bool codes_transposed,
                         std::optional<at::ScalarType> out_dtype) {
  const PQArgs a =
      check_pq_decode_args(codes, centroids, shape, centroid_scale, centroid_zero_point, codes_transposed, out_dtype);
  const PQShape& s = a.s;
  const at::ScalarType dtype = a.out_dtype;
  at::Tensor w = empty_cpu_output(shape, centroids.options().dtype(dtype));
  if (w.numel() == 0) return w;
  const at::Tensor C = pq_dequantized_centroids(centroids, centroid_scale, centroid_zero_point, dtype);
  const at::Tensor cc = codes.contiguous();
  const CodeStrides st = pq_code_strides(codes_transposed, s.out, s.n_blocks);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "pq_decode_cpu", [&] {
    QN_DISPATCH_CODE_TYPES(codes.scalar_type(), "pq_decode", [&] {
      decode_rows<scalar_t, code_t>(cc.const_data_ptr<code_t>(), st.so, st.sj, C.const_data_ptr<scalar_t>(),
                                    s.block_size, s.n_blocks, 0, s.out, w.mutable_data_ptr<scalar_t>());
    });
  });
  return w;
}

}  // namespace

TORCH_LIBRARY_IMPL(quantnoise, CPU, m) {
  m.impl("pq_decode", &pq_decode_cpu);
  m.impl("pq_linear", &pq_linear_cpu);
}

}  // namespace quantnoise
