// CPU kernels of quantnoise::kmeanspp_init (k-means++ seeding, fused), kmeanspp_step and
// kmeanspp_sample (its two halves, for data split over ranks). The rule is quantnoise/kmeanspp.h.
//
// x is copied once into float32 blocks of 8 points, transposed ([B][N/8][D][8], zero padded), so
// one step updates 8 points per AVX2 instruction: the FMA chain of kmeans_squared_distance in each
// lane, min with the running weight, and the float64 lane sums of the chunk weight (points i and
// i + 32 land in the same lane, in order). The AVX2 and portable paths share that body (a vector
// type per path) and give identical results; AVX-512 CPUs run the AVX2 code (the step is memory
// bound). Problems run in parallel when there are enough of them; otherwise each step's chunks do.
#include "quantnoise/kmeanspp.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "kmeans_simd.h"
#include "quantnoise/checks.h"
#include "quantnoise/cpu_features.h"
#include "quantnoise/cpu_parallel.h"
#include "quantnoise/kmeans.h"

namespace quantnoise {
namespace {

constexpr int64_t kBlock = 8;  // points per transposed block: the lanes of PortableVec and Avx2Vec
constexpr int64_t kBlocksPerChunk = kKMeansPPChunk / kBlock;

// One chunk of one step: w = min(w, |x_i - c|^2) for its m points (blocks `xt`, weights `w`, both
// padded to whole blocks; padding is never read into the sums) and returns the chunk weight.
template <class V>
[[gnu::always_inline]] inline double update_chunk(const float* xt, int64_t dim, const float* c, float* w, int64_t m) {
  typename V::D acc[kKMeansPPLanes / (kBlock / 2)];
  for (auto& a : acc) a = V::zero_d();
  const int64_t full = m / kBlock;
  for (int64_t blk = 0; blk < full; ++blk) {
    const float* xb = xt + blk * dim * kBlock;
    typename V::F s = V::zero();
    for (int64_t d = 0; d < dim; ++d) {
      const typename V::F diff = V::sub(V::load(xb + d * kBlock), V::set1(c[d]));
      s = V::fmadd(diff, diff, s);
    }
    s = V::min(V::load(w + blk * kBlock), s);
    V::store(w + blk * kBlock, s);
    const int64_t g = (blk % (kKMeansPPLanes / kBlock)) * 2;  // lanes 8*(blk % 4) .. +7
    acc[g] = V::add_half(acc[g], s, 0);
    acc[g + 1] = V::add_half(acc[g + 1], s, 1);
  }
  double lanes[kKMeansPPLanes];
  for (int g = 0; g < kKMeansPPLanes / (kBlock / 2); ++g) V::store_d(lanes + g * (kBlock / 2), acc[g]);
  for (int64_t i = full * kBlock; i < m; ++i) {  // a partial last block, one point at a time
    const float* xb = xt + full * dim * kBlock + (i - full * kBlock);
    float s = 0.0f;
    for (int64_t d = 0; d < dim; ++d) {
      const float diff = xb[d * kBlock] - c[d];
      s = fmaf(diff, diff, s);
    }
    w[i] = s < w[i] ? s : w[i];
    lanes[i % kKMeansPPLanes] += static_cast<double>(w[i]);
  }
  return kmeanspp_combine_lanes(lanes);
}

double update_chunk_portable(const float* xt, int64_t dim, const float* c, float* w, int64_t m) {
  return update_chunk<PortableVec>(xt, dim, c, w, m);
}
#if defined(QN_X86)
QN_TARGET_AVX2 double update_chunk_avx2(const float* xt, int64_t dim, const float* c, float* w, int64_t m) {
  return update_chunk<Avx2Vec>(xt, dim, c, w, m);
}
#endif

using UpdateFn = double (*)(const float*, int64_t, const float*, float*, int64_t);

UpdateFn update_for(CpuIsa isa) {
#if defined(QN_X86)
  if (isa >= CpuIsa::kAvx2) return &update_chunk_avx2;
#endif
  (void)isa;
  return &update_chunk_portable;
}

// x [B, N, D] as float32 blocks of 8 points, transposed: [B][n_blocks][D][8], zero padded.
std::vector<float> transpose_blocks(const at::Tensor& x, int64_t n_blocks) {
  const int64_t batch = x.size(0), n = x.size(1), dim = x.size(2);
  std::vector<float> xt(static_cast<size_t>(batch * n_blocks * dim * kBlock), 0.0f);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "kmeanspp_cpu", [&] {
    const scalar_t* src = x.const_data_ptr<scalar_t>();
    // ~1M coordinates per task: one problem of 131072 x 8 stays on the calling thread (OpenMP
    // workers spin after a parallel region, taking CPU from a single-threaded seeding that follows).
    const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 20) / (kBlock * std::max<int64_t>(1, dim)));
    at::parallel_for(0, batch * n_blocks, grain, [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) {
        const int64_t b = t / n_blocks, i0 = (t % n_blocks) * kBlock;
        float* dst = xt.data() + t * dim * kBlock;
        for (int64_t l = 0; l < kBlock && i0 + l < n; ++l) {
          const scalar_t* row = src + (b * n + i0 + l) * dim;
          for (int64_t d = 0; d < dim; ++d) dst[d * kBlock + l] = static_cast<float>(row[d]);
        }
      }
    });
  });
  return xt;
}

// The state of B problems stepping together: blocks of x, padded weights, chunk weights.
struct Seeding {
  int64_t batch, n, dim, n_blocks, n_chunks;
  std::vector<float> xt, w;
  std::vector<double> chunk_w;
  UpdateFn update;

  Seeding(const at::Tensor& x, CpuIsa isa)
      : batch(x.size(0)),
        n(x.size(1)),
        dim(x.size(2)),
        n_blocks((n + kBlock - 1) / kBlock),
        n_chunks(kmeanspp_n_chunks(n)),
        xt(transpose_blocks(x, n_blocks)),
        w(static_cast<size_t>(batch * n_blocks * kBlock), std::numeric_limits<float>::infinity()),
        chunk_w(static_cast<size_t>(batch * n_chunks), 0.0),
        update(update_for(isa)) {}

  float* weights(int64_t b) { return w.data() + b * n_blocks * kBlock; }

  // Point i of problem b, float32, into c[dim].
  void point(int64_t b, int64_t i, float* c) const {
    const float* blk = xt.data() + (b * n_blocks + i / kBlock) * dim * kBlock + i % kBlock;
    for (int64_t d = 0; d < dim; ++d) c[d] = blk[d * kBlock];
  }

  void update_chunk_of(int64_t b, int64_t j, const float* c) {
    const int64_t first_block = j * kBlocksPerChunk;
    const int64_t m = std::min(kKMeansPPChunk, n - j * kKMeansPPChunk);
    chunk_w[b * n_chunks + j] =
        update(xt.data() + (b * n_blocks + first_block) * dim * kBlock, dim, c, weights(b) + first_block * kBlock, m);
  }

  void update_problem(int64_t b, const float* c) {
    for (int64_t j = 0; j < n_chunks; ++j) update_chunk_of(b, j, c);
  }

  int64_t draw(int64_t b, double u01) { return kmeanspp_draw(weights(b), chunk_w.data() + b * n_chunks, n, u01); }
};

at::Tensor kmeanspp_init_cpu(const at::Tensor& x, const at::Tensor& first, const at::Tensor& uniforms) {
  check_kmeanspp_init_args(x, first, uniforms);
  const int64_t batch = x.size(0), k = uniforms.size(1) + 1;
  at::Tensor out = at::empty({batch, k}, x.options().dtype(at::kLong));
  if (batch == 0) return out;
  Seeding st(x.contiguous(), cpu_isa());
  const at::Tensor u = uniforms.contiguous();
  const double* u_ptr = u.const_data_ptr<double>();
  const int64_t* first_ptr = first.contiguous().const_data_ptr<int64_t>();
  int64_t* out_ptr = out.mutable_data_ptr<int64_t>();
  for (int64_t b = 0; b < batch; ++b) out_ptr[b * k] = first_ptr[b];
  if (batch >= at::get_num_threads()) {  // whole problems per thread: no barrier per step
    parallel_for_dynamic(0, batch, 1, [&](int64_t begin, int64_t end) {
      std::vector<float> c(static_cast<size_t>(st.dim));
      for (int64_t b = begin; b < end; ++b) {
        for (int64_t s = 1; s < k; ++s) {
          st.point(b, out_ptr[b * k + s - 1], c.data());
          st.update_problem(b, c.data());
          out_ptr[b * k + s] = st.draw(b, u_ptr[b * (k - 1) + s - 1]);
        }
      }
    });
    return out;
  }
  std::vector<float> c(static_cast<size_t>(batch * st.dim));
  // ~1M coordinates (~0.3 ms) per grab: a step of N = 131072 at D = 8 runs on one thread, since a
  // barrier per step costs more than it saves where threads get preempted (a shared machine).
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 20) / (kKMeansPPChunk * std::max<int64_t>(1, st.dim)));
  for (int64_t s = 1; s < k; ++s) {  // few problems: the chunks of each step in parallel
    for (int64_t b = 0; b < batch; ++b) st.point(b, out_ptr[b * k + s - 1], c.data() + b * st.dim);
    parallel_for_dynamic(0, batch * st.n_chunks, grain, [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) {
        const int64_t b = t / st.n_chunks;
        st.update_chunk_of(b, t % st.n_chunks, c.data() + b * st.dim);
      }
    });
    for (int64_t b = 0; b < batch; ++b) out_ptr[b * k + s] = st.draw(b, u_ptr[b * (k - 1) + s - 1]);
  }
  return out;
}

std::tuple<at::Tensor, at::Tensor> kmeanspp_step_cpu(const at::Tensor& x, const at::Tensor& dmin,
                                                     const at::Tensor& centroid) {
  check_kmeanspp_step_args(x, dmin, centroid);
  const int64_t batch = x.size(0), n = x.size(1);
  Seeding st(x.contiguous(), cpu_isa());
  const at::Tensor d_in = dmin.contiguous();
  const at::Tensor c = centroid.to(at::kFloat).contiguous();
  for (int64_t b = 0; b < batch; ++b) std::copy_n(d_in.const_data_ptr<float>() + b * n, n, st.weights(b));
  at::parallel_for(0, batch * st.n_chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t b = t / st.n_chunks;
      st.update_chunk_of(b, t % st.n_chunks, c.const_data_ptr<float>() + b * st.dim);
    }
  });
  at::Tensor d_out = at::empty({batch, n}, x.options().dtype(at::kFloat));
  at::Tensor chunk_w = at::empty({batch, st.n_chunks}, x.options().dtype(at::kDouble));
  for (int64_t b = 0; b < batch; ++b) std::copy_n(st.weights(b), n, d_out.mutable_data_ptr<float>() + b * n);
  std::copy(st.chunk_w.begin(), st.chunk_w.end(), chunk_w.mutable_data_ptr<double>());
  return {d_out, chunk_w};
}

at::Tensor kmeanspp_sample_cpu(const at::Tensor& dmin, const at::Tensor& chunk_weights, const at::Tensor& target) {
  check_kmeanspp_sample_args(dmin, chunk_weights, target);
  const int64_t batch = dmin.size(0), n = dmin.size(1), n_chunks = chunk_weights.size(1);
  const at::Tensor w = dmin.contiguous(), cw = chunk_weights.contiguous(), t = target.contiguous();
  at::Tensor out = at::empty({batch}, dmin.options().dtype(at::kLong));
  for (int64_t b = 0; b < batch; ++b) {
    out.mutable_data_ptr<int64_t>()[b] =
        kmeanspp_sample(w.const_data_ptr<float>() + b * n, cw.const_data_ptr<double>() + b * n_chunks, n,
                        t.const_data_ptr<double>()[b]);
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(quantnoise, CPU, m) {
  m.impl("kmeanspp_init", &kmeanspp_init_cpu);
  m.impl("kmeanspp_step", &kmeanspp_step_cpu);
  m.impl("kmeanspp_sample", &kmeanspp_sample_cpu);
}

}  // namespace quantnoise
