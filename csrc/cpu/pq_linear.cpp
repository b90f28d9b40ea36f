// CPU kernels of quantnoise::pq_decode and quantnoise::pq_linear (DESIGN §3.3; pq_embedding is
// cpu/pq_embedding.cpp). Codes come in the interchange or the packed layout (quantnoise/pq.h).
//
// pq_linear has two paths:
//  * LUT (pq_lut.cpp; every float32 batch size where building the tables costs less than the
//    dense product): per input block and row, a table of x_block . centroid, then sums of table
//    entries picked by the codes. avx512, avx2 and portable code from one source.
//  * tile (float64, or path='tile'): decode a few hundred rows of W into a ~1 MiB buffer, at::mm.
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

#include "pq_lut.h"
#include "quantnoise/checks.h"
#include "quantnoise/cpu_alloc.h"
#include "quantnoise/cpu_features.h"
#include "quantnoise/dispatch.h"
#include "quantnoise/pq.h"
#include "quantnoise/pq_host.h"

namespace quantnoise {

namespace {

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
      act_range_update(v, lo, hi);
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
  const bool fp64 = x.scalar_type() == at::kDouble;
  const at::ScalarType compute = fp64 ? at::kDouble : at::kFloat;
  at::Tensor xf = flatten_rows(x).to(compute).contiguous();
  const int64_t M = xf.size(0);
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
