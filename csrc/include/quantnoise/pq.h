// Product-quantization helpers shared by the CPU and CUDA kernels (DESIGN §3.3).
//
// Weight layout: W.reshape(out, -1) is cut into blocks of block_size consecutive entries;
// block (o, j) is centroids[codes[o][j]]. Codes come in two layouts:
//   interchange [out, n_blocks]  (row-major, what files and other helpers exchange)
//   transposed  [n_blocks, out]  (what the lookup kernels read: for an input block j, the codes
//                                 of consecutive outputs are contiguous; ops.pq_pack_codes)
// Activation fake-quant: affine int-N per tensor or per row (token), straight-through backward.
#pragma once

#include <cmath>
#include <cstdint>

#include "quantnoise/macros.h"

namespace quantnoise {

// The affine grid of a range [lo, hi] widened to contain 0, with 2^bits levels. The reference
// (reference.py: _act_qparams) computes exactly these float32 operations in the same order.
struct AffineGrid {
  float scale;
  float zero_point;
  float qmax;
};

QN_INLINE AffineGrid make_affine_grid(float lo, float hi, int bits) {
  lo = lo < 0.f ? lo : 0.f;
  hi = hi > 0.f ? hi : 0.f;
  const float qmax = static_cast<float>((1 << bits) - 1);
  float scale = (hi - lo) / qmax;
  if (!(scale > 0.f)) scale = 1.f;  // all-zero input: any grid holds it exactly
  float zp = rintf(-lo / scale);
  zp = zp < 0.f ? 0.f : (zp > qmax ? qmax : zp);
  return AffineGrid{scale, zp, qmax};
}

// round-half-even(v / scale) + zp, clamped to [0, qmax], mapped back: (q - zp) * scale.
QN_INLINE float fake_quant_affine(float v, const AffineGrid& g) {
  float q = rintf(v / g.scale) + g.zero_point;
  q = q < 0.f ? 0.f : (q > g.qmax ? g.qmax : q);
  return (q - g.zero_point) * g.scale;
}

}  // namespace quantnoise
