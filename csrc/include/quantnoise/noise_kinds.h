// The Quant-Noise kinds (DESIGN §3.1): one small functor each, shared by the CPU loop
// (cpu/block_noise.cpp) and the CUDA kernels (cuda/block_noise_kernels.cuh). A kind says what a
// block becomes when it is noised (φ) and what a kept block becomes:
//
//   kind         φ(noised block)                kept block
//   drop         0                              s * w  (s = 1/(1-p) with rescale, else 1)
//   fake_quant   Q(w) on the int-N grid         clamp(w, lo, hi)
//   centroid     nearest row of the codebook    w
//
// The gradients come from the same Row: grad(g, w) is the straight-through gradient of an entry
// (drop: s * g; fake_quant: g inside the clamp range lo <= w <= hi, else 0; centroid: g); the
// dropout-style backward (straight_through=False) is 0 on noised blocks and grad(g, w) elsewhere
// (noise_grad below, the block_noise_backward op). Kinds may read per-row parameters
// (fake_quant: per-output-channel scales): the loops call kind.row(r) when they enter row r of
// weight.reshape(out, -1) and use the returned Row for the row's blocks. An element-wise kind's
// Row has noised(w) and kept(w); a block kind (centroid) has noise_block(src, dst, n) instead.
// Adding a kind: csrc/README.md.
#pragma once

#include <cstdint>

#include "quantnoise/macros.h"
#include "quantnoise/pq.h"  // nearest_centroid

namespace quantnoise {

// The noise kinds, in the order of the op's `noise` argument strings ("drop", "fake_quant",
// "centroid"); host code maps the string once (noise_kind_from_name in checks.h).
enum class NoiseKind : int { kDrop = 0, kFakeQuant = 1, kCentroid = 2 };

// Round half to even for |x| < 2^(mantissa bits - 1) without rint(): adding and subtracting
// 1.5 * 2^mantissa leaves the nearest integer under the default rounding mode. It vectorises on
// every x86-64 (rint needs SSE4.1, which the portable build may not assume) and gives rint()'s
// and PyTorch's nearbyint's result on the fake-quant range (|x| <= 256). Never built with
// -ffast-math, so the compiler may not fold the two additions.
template <typename T>
QN_INLINE T round_half_even(T x) {
  constexpr T kMagic = sizeof(T) == 4 ? T(12582912.0) : T(6755399441055744.0);  // 1.5 * 2^23, 1.5 * 2^52
  return (x + kMagic) - kMagic;
}

// noise="drop": noised blocks become 0, kept blocks are scaled by s.
template <typename opmath_t>
struct DropNoise {
  opmath_t s;
  struct Row {
    opmath_t s;
    template <typename T>
    QN_INLINE T noised(T) const {
      return T(0);  // zeros, not 0 * w (NaN for an infinite w)
    }
    template <typename T>
    QN_INLINE T kept(T w) const {
      return static_cast<T>(s * static_cast<opmath_t>(w));
    }
    template <typename T>
    QN_INLINE T grad(T g, T) const {
      return static_cast<T>(s * static_cast<opmath_t>(g));
    }
  };
  static constexpr bool kElementwise = true;
  QN_INLINE Row row(int64_t) const { return Row{s}; }
};

// noise="fake_quant": Q(w) = rint(clamp(w * (1/scale), qmin - z, qmax - z)) * scale, which equals
// PyTorch's (clamp(rint(w * (1/scale)) + z, qmin, qmax) - z) * scale bit for bit (the bounds are
// integers, so clamping before or after rounding gives the same integer). Kept entries are
// clamped to [lo, hi] = [(qmin - z) s, (qmax - z) s], so the noise is computed from the clamped
// weight (fairseq#2968 computed it from the raw one). Parameters per tensor (n_params == 1) or
// per row. Arithmetic in float32 (float64 for double weights).
template <typename opmath_t>
struct FakeQuantNoise {
  const float* scale;         // [n_params], > 0 (checked by the host)
  const int32_t* zero_point;  // [n_params], in [qmin, qmax]
  int64_t n_params;           // 1 or the number of rows
  int32_t qmin, qmax;
  struct Row {
    opmath_t s, inv_s, lo_t, hi_t, lo, hi;  // lo_t/hi_t: the integer bounds minus z
    template <typename T>
    QN_INLINE T noised(T w) const {
      opmath_t t = static_cast<opmath_t>(w) * inv_s;
      t = t < lo_t ? lo_t : (t > hi_t ? hi_t : t);
      return static_cast<T>(round_half_even(t) * s);
    }
    template <typename T>
    QN_INLINE T kept(T w) const {
      const opmath_t v = static_cast<opmath_t>(w);
      return static_cast<T>(v < lo ? lo : (v > hi ? hi : v));
    }
    template <typename T>
    QN_INLINE T grad(T g, T w) const {  // the clamp's gradient: 0 (not 0 * g) outside [lo, hi]
      const opmath_t v = static_cast<opmath_t>(w);
      return v >= lo && v <= hi ? g : T(0);
    }
  };
  static constexpr bool kElementwise = true;
  QN_INLINE Row row(int64_t r) const {
    const int64_t i = n_params == 1 ? 0 : r;
    const float s = scale[i];
    const float inv_s = 1.0f / s;  // PyTorch's fake_quantize multiplies by the float32 inverse
    const float z = static_cast<float>(zero_point[i]);
    const float lo_t = static_cast<float>(qmin) - z, hi_t = static_cast<float>(qmax) - z;
    return Row{s, inv_s, lo_t, hi_t, lo_t * s, hi_t * s};
  }
};

// noise="centroid": a noised block becomes its nearest row of the codebook C [K][block_size]
// (squared L2, ties to the lowest index: pq.h's nearest_centroid), a kept block is copied.
template <typename scalar_t, typename opmath_t>
struct CentroidNoise {
  using opmath_type = opmath_t;
  const scalar_t* C;  // [K][block_size]
  int64_t K, block_size;
  struct Row {
    const scalar_t* C;
    int64_t K;
    QN_INLINE void noise_block(const scalar_t* src, scalar_t* dst, int64_t n) const {
      const scalar_t* c = C + nearest_centroid<opmath_t>(src, C, K, n) * n;
      for (int64_t d = 0; d < n; ++d) dst[d] = c[d];
    }
    template <typename T>
    QN_INLINE T kept(T w) const {
      return w;
    }
    template <typename T>
    QN_INLINE T grad(T g, T) const {
      return g;
    }
  };
  static constexpr bool kElementwise = false;
  QN_INLINE Row row(int64_t) const { return Row{C, K}; }
};

// The forward of one block of any kind: dst = noised ? φ(src) : kept(src), n entries.
template <typename Row, typename scalar_t, bool kElementwise>
QN_INLINE void noise_block(const Row& row, const scalar_t* src, scalar_t* dst, int64_t n, bool noised) {
  if constexpr (kElementwise) {
    if (noised) {
      for (int64_t i = 0; i < n; ++i) dst[i] = row.noised(src[i]);
    } else {
      for (int64_t i = 0; i < n; ++i) dst[i] = row.kept(src[i]);
    }
  } else {
    if (noised) {
      row.noise_block(src, dst, n);
    } else {
      for (int64_t i = 0; i < n; ++i) dst[i] = row.kept(src[i]);
    }
  }
}

// The backward of one entry of any kind: the gradient of the weight entry w given g, the gradient
// of its noised value (0 on a noised block for the dropout-style backward).
template <typename Row, typename T>
QN_INLINE T noise_grad(const Row& row, T g, T w, bool noised, bool straight_through) {
  return !straight_through && noised ? T(0) : row.grad(g, w);
}

}  // namespace quantnoise
