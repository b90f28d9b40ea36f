// CPU kernel of quantnoise::pq_linear_backward: pq_linear's gradients from the codes, without
// the dense weight or its gradient (DESIGN §3.3). For an input block j, the bins
//   S_j[k][r] = sum over outputs o with code(o, j) == k of grad_y[r][o]
// give grad_x[r][j*bs + d] = sum_k S_j[k][r] * C[k][d] and grad_C[k][d] += sum_r S_j[k][r] *
// x[r][j*bs + d]. The scatter-add costs one vector add per (output, block) for a vector of rows
// (8 on AVX2 and portable, 16 on AVX-512), the two small products K*bs FMAs per block: about
// 1/bs of the dense products, and the extra memory is a few activation-sized buffers.
// Threads split the input blocks; each sums its grad_C part, added up at the end. A bin no code
// filled is skipped, not multiplied: 0 * NaN (a NaN in x or an unused centroid) would give NaN
// where the dense product, which never sees that (block, centroid) pair, gives 0.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <tuple>
#include <vector>

#include "quantnoise/checks.h"
#include "quantnoise/cpu_features.h"
#include "quantnoise/dispatch.h"
#include "quantnoise/pq_host.h"
#include "vec.h"

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"  // vectors stay inside force-inlined code (vec.h)

namespace quantnoise {
namespace {

using vec::broadcast;
using vec::elem_t;
using vec::kLanes;
using vec::load;
using vec::store;

constexpr int64_t kBwdBlocks = 4;  // blocks whose bins fill in one pass over the outputs

struct BwdShape {
  int64_t out, n_blocks, K, bs, n_chunks;
};

// Blocks [j0, j1) of every chunk of L rows. gyT [n_chunks][out][L], xT [n_chunks][in][L]: rows
// transposed, zero-padded; codes packed [n_blocks][out]; C [K][bs]. Writes gxT [n_chunks][in][L]
// for these blocks (if non-null), adds to gc [K][bs][L] (if non-null). S: kBwdBlocks * K * L;
// hit: kBwdBlocks * K flags, set where a bin received a code.
template <typename V, typename code_t, int64_t kBs>
QN_ALWAYS_INLINE void linear_backward_body(const elem_t<V>* gyT, const elem_t<V>* xT, const code_t* codes,
                                           const elem_t<V>* C, const BwdShape& s, int64_t j0, int64_t j1, elem_t<V>* S,
                                           uint8_t* hit, elem_t<V>* gxT, elem_t<V>* gc) {
  using T = elem_t<V>;
  constexpr int L = kLanes<V>;
  const int64_t K = s.K, out = s.out, bs = kBs > 0 ? kBs : s.bs, in = s.n_blocks * bs;
  for (int64_t chunk = 0; chunk < s.n_chunks; ++chunk) {
    const T* gy = gyT + chunk * out * L;
    for (int64_t jc = j0; jc < j1; jc += kBwdBlocks) {
      const int64_t jn = std::min(kBwdBlocks, j1 - jc);
      std::fill(S, S + jn * K * L, T(0));
      std::fill(hit, hit + jn * K, uint8_t{0});
      const code_t* c0 = codes + jc * out;
      for (int64_t o = 0; o < out; ++o) {  // scatter-add grad_y into the bins of jn blocks
        const V g = load<V>(gy + o * L);
        for (int64_t jj = 0; jj < jn; ++jj) {
          const int64_t b = jj * K + static_cast<int64_t>(c0[jj * out + o]);
          store<V>(S + b * L, load<V>(S + b * L) + g);
          hit[b] = 1;
        }
      }
      for (int64_t jj = 0; jj < jn && gxT != nullptr; ++jj) {  // grad_x block = S_j . C
        const T* Sj = S + jj * K * L;
        const uint8_t* hj = hit + jj * K;
        T* dst = gxT + (chunk * in + (jc + jj) * bs) * L;
        if constexpr (kBs > 0) {
          V acc[kBs];
          for (int64_t d = 0; d < kBs; ++d) acc[d] = V{};
          for (int64_t k = 0; k < K; ++k) {
            if (!hj[k]) continue;
            const V sk = load<V>(Sj + k * L);
            for (int64_t d = 0; d < kBs; ++d) acc[d] += sk * broadcast<V>(C[k * kBs + d]);
          }
          for (int64_t d = 0; d < kBs; ++d) store<V>(dst + d * L, acc[d]);
        } else {
          for (int64_t d = 0; d < bs; ++d) {
            V acc = V{};
            for (int64_t k = 0; k < K; ++k)
              if (hj[k]) acc += load<V>(Sj + k * L) * broadcast<V>(C[k * bs + d]);
            store<V>(dst + d * L, acc);
          }
        }
      }
      if (gc != nullptr) {  // grad_C += S_j^T . x_j; the jn blocks are summed before gc is touched
        const T* xj = xT + (chunk * in + jc * bs) * L;
        for (int64_t k = 0; k < K; ++k) {
          T* g = gc + k * bs * L;
          if constexpr (kBs > 0) {
            V acc[kBs];
            for (int64_t d = 0; d < kBs; ++d) acc[d] = load<V>(g + d * L);
            for (int64_t jj = 0; jj < jn; ++jj) {
              if (!hit[jj * K + k]) continue;
              const V sk = load<V>(S + (jj * K + k) * L);
              for (int64_t d = 0; d < kBs; ++d) acc[d] += sk * load<V>(xj + (jj * kBs + d) * L);
            }
            for (int64_t d = 0; d < kBs; ++d) store<V>(g + d * L, acc[d]);
          } else {
            for (int64_t jj = 0; jj < jn; ++jj) {
              if (!hit[jj * K + k]) continue;
              const V sk = load<V>(S + (jj * K + k) * L);
              for (int64_t d = 0; d < bs; ++d)
                store<V>(g + d * L, load<V>(g + d * L) + sk * load<V>(xj + (jj * bs + d) * L));
            }
          }
        }
      }
    }
  }
}

// The entry functions of each path: the same body under the path's target attribute.
#define QN_BWD_ARGS                                                                                               \
  const elem_t<V>*gyT, const elem_t<V>*xT, const code_t *codes, const elem_t<V>*C, const BwdShape &s, int64_t j0, \
      int64_t j1, elem_t<V>*S, uint8_t *hit, elem_t<V>*gxT, elem_t<V>*gc
template <typename V, typename code_t, int64_t kBs>
void backward_portable(QN_BWD_ARGS) {
  linear_backward_body<V, code_t, kBs>(gyT, xT, codes, C, s, j0, j1, S, hit, gxT, gc);
}
#if defined(QN_X86)
template <typename V, typename code_t, int64_t kBs>
QN_TARGET_AVX2 void backward_avx2(QN_BWD_ARGS) {
  linear_backward_body<V, code_t, kBs>(gyT, xT, codes, C, s, j0, j1, S, hit, gxT, gc);
}
template <typename V, typename code_t, int64_t kBs>
QN_TARGET_AVX512 void backward_avx512(QN_BWD_ARGS) {
  linear_backward_body<V, code_t, kBs>(gyT, xT, codes, C, s, j0, j1, S, hit, gxT, gc);
}
#endif
#undef QN_BWD_ARGS

// rows [M][n] -> [n_chunks][n][L] (zero-padded past M), and back.
template <typename T>
void to_lanes(const T* src, int64_t M, int64_t n, int L, T* dst) {
  const int64_t n_chunks = (M + L - 1) / L;
  at::parallel_for(0, n_chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      T* d = dst + c * n * L;
      std::fill(d, d + n * L, T(0));
      for (int64_t r = c * L; r < std::min(M, (c + 1) * L); ++r)
        for (int64_t i = 0; i < n; ++i) d[i * L + (r - c * L)] = src[r * n + i];
    }
  });
}

template <typename T>
void from_lanes(const T* src, int64_t M, int64_t n, int L, T* dst) {
  at::parallel_for(0, M, 1, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const T* s = src + (r / L) * n * L + r % L;
      for (int64_t i = 0; i < n; ++i) dst[r * n + i] = s[i * L];
    }
  });
}

// Runs the body of vector type V (L lanes) on gy [M][out], x [M][in] (or null) into gx (or null)
// and gc [K][bs] (or null).
template <typename V, typename code_t>
void linear_backward(CpuIsa isa, const elem_t<V>* gy, const elem_t<V>* x, const code_t* codes, const elem_t<V>* C,
                     const PQShape& ps, int64_t M, elem_t<V>* gx, elem_t<V>* gc) {
  using T = elem_t<V>;
  constexpr int L = kLanes<V>;
  const int64_t in = ps.n_blocks * ps.block_size, n_chunks = (M + L - 1) / L;
  const BwdShape s{ps.out, ps.n_blocks, ps.n_centroids, ps.block_size, n_chunks};
  std::vector<T> gyT(n_chunks * ps.out * L), xT(x ? n_chunks * in * L : 0), gxT(gx ? n_chunks * in * L : 0);
  to_lanes(gy, M, ps.out, L, gyT.data());
  if (x) to_lanes(x, M, in, L, xT.data());
  const int64_t n_threads = at::get_num_threads();
  const int64_t part = ps.n_centroids * ps.block_size * L;
  std::vector<T> gc_parts(gc ? n_threads * part : 0, T(0));
  std::vector<char> used(n_threads, 0);
  at::parallel_for(0, ps.n_blocks, kBwdBlocks, [&](int64_t j0, int64_t j1) {
    const int64_t t = at::get_thread_num();
    used[t] = 1;
    std::vector<T> S(kBwdBlocks * ps.n_centroids * L);
    std::vector<uint8_t> hit(kBwdBlocks * ps.n_centroids);
    T* gcp = gc ? gc_parts.data() + t * part : nullptr;
    T* gxp = gx ? gxT.data() : nullptr;
    const T* xp = x ? xT.data() : nullptr;
    QN_DISPATCH_BLOCK_SIZE(ps.block_size, kBs, [&] {
#if defined(QN_X86)
      if constexpr (L == 16) {  // 16 float lanes: the avx512 path only
        return backward_avx512<V, code_t, kBs>(gyT.data(), xp, codes, C, s, j0, j1, S.data(), hit.data(), gxp, gcp);
      } else if (isa >= CpuIsa::kAvx2) {
        return backward_avx2<V, code_t, kBs>(gyT.data(), xp, codes, C, s, j0, j1, S.data(), hit.data(), gxp, gcp);
      }
#endif
      backward_portable<V, code_t, kBs>(gyT.data(), xp, codes, C, s, j0, j1, S.data(), hit.data(), gxp, gcp);
    });
  });
  (void)isa;
  if (gx) from_lanes(gxT.data(), M, in, L, gx);
  if (gc) {
    const int64_t kbs = ps.n_centroids * ps.block_size;
    for (int64_t t = 0; t < n_threads; ++t) {
      if (!used[t]) continue;
      const T* p = gc_parts.data() + t * part;
      for (int64_t e = 0; e < kbs; ++e)
        for (int l = 0; l < L; ++l) gc[e] += p[e * L + l];
    }
  }
}

// float32: 16 lanes on the avx512 path, 8 on the others; float64 (gradcheck): the portable code.
template <typename scalar_t, typename code_t>
void linear_backward_typed(CpuIsa isa, const scalar_t* gy, const scalar_t* x, const code_t* codes, const scalar_t* C,
                           const PQShape& s, int64_t M, scalar_t* gx, scalar_t* gc) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (isa == CpuIsa::kAvx512) return linear_backward<vec::f32x16, code_t>(isa, gy, x, codes, C, s, M, gx, gc);
    linear_backward<vec::f32x8, code_t>(isa, gy, x, codes, C, s, M, gx, gc);
  } else {
    linear_backward<vec::f64x4, code_t>(CpuIsa::kPortable, gy, x, codes, C, s, M, gx, gc);
  }
}

std::tuple<at::Tensor, at::Tensor> pq_linear_backward_cpu(const at::Tensor& grad_out,
                                                          const std::optional<at::Tensor>& x, const at::Tensor& codes,
                                                          const at::Tensor& centroids,
                                                          const std::optional<at::Tensor>& centroid_scale,
                                                          const std::optional<at::Tensor>& centroid_zero_point,
                                                          bool codes_transposed, bool input_grad, bool centroids_grad) {
  const PQBackwardArgs a = check_pq_linear_backward_args(
      grad_out, x, codes, centroids, centroid_scale, centroid_zero_point, codes_transposed, input_grad, centroids_grad);
  const PQShape& s = a.s;
  const int64_t in = s.n_blocks * s.block_size;
  const at::ScalarType compute = grad_out.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const at::Tensor gy = grad_out.reshape({-1, s.out}).to(compute).contiguous();
  const int64_t M = gy.size(0);
  at::Tensor gx = input_grad ? at::zeros({M, in}, gy.options()) : at::empty({0}, grad_out.options());
  // (zeros: the in == 0 and out == 0 cases return them as they are)
  at::Tensor gc =
      centroids_grad ? at::zeros({s.n_centroids, s.block_size}, gy.options()) : at::empty({0}, gy.options());
  if (M > 0 && s.out > 0 && in > 0 && (input_grad || centroids_grad)) {
    const at::Tensor xf = centroids_grad ? x->reshape({-1, in}).to(compute).contiguous() : at::Tensor();
    const at::Tensor C = pq_dequantized_centroids(centroids, centroid_scale, centroid_zero_point, compute);
    const at::Tensor packed = codes_transposed ? codes.contiguous() : codes.t().contiguous();
    const CpuIsa isa = cpu_isa();
    AT_DISPATCH_FLOATING_TYPES(compute, "pq_linear_backward", [&] {
      QN_DISPATCH_CODE_TYPES(codes.scalar_type(), "pq_linear_backward", [&] {
        linear_backward_typed<scalar_t, code_t>(isa, gy.const_data_ptr<scalar_t>(),
                                                xf.defined() ? xf.const_data_ptr<scalar_t>() : nullptr,
                                                packed.const_data_ptr<code_t>(), C.const_data_ptr<scalar_t>(), s, M,
                                                input_grad ? gx.mutable_data_ptr<scalar_t>() : nullptr,
                                                centroids_grad ? gc.mutable_data_ptr<scalar_t>() : nullptr);
      });
    });
  }
  if (input_grad) gx = gx.to(grad_out.scalar_type()).reshape(a.grad_x_shape);
  return {gx, gc};
}

}  // namespace

TORCH_LIBRARY_IMPL(quantnoise, CPU, m) { m.impl("pq_linear_backward", &pq_linear_backward_cpu); }

}  // namespace quantnoise

#pragma GCC diagnostic pop
