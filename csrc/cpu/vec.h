// Portable SIMD for the CPU kernels: GCC/Clang vector extensions, written once for every ISA path.
//
// A kernel body is a template over a vector type V (e.g. f32x8) and is force-inlined
// (QN_ALWAYS_INLINE) into the path's entry function, which carries the path's target attribute
// (QN_TARGET_AVX2, QN_TARGET_AVX512 from quantnoise/cpu_features.h; none for portable). So the
// same source becomes ymm + FMA code, zmm code, or baseline SSE2 / NEON code (a 32-byte vector is
// then two 16-byte registers). `a * b + c` contracts to an FMA where the target has one.
#pragma once

#include <cstring>
#include <type_traits>

#define QN_ALWAYS_INLINE inline __attribute__((always_inline))

// GCC notes that vector arguments change the ABI without AVX; moot here (see load/store).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"

namespace quantnoise {
namespace vec {

typedef float f32x8 __attribute__((vector_size(32)));
typedef float f32x16 __attribute__((vector_size(64)));
typedef double f64x4 __attribute__((vector_size(32)));

// The element type and the number of lanes of a vector type.
template <typename V>
using elem_t = std::remove_cv_t<std::remove_reference_t<decltype(V{}[0])>>;
template <typename V>
constexpr int kLanes = static_cast<int>(sizeof(V) / sizeof(elem_t<V>));

// Vectors travel between force-inlined functions only, by reference: no vector ever crosses a
// call boundary, so the ISA of the caller decides the code (and GCC's ABI notes do not apply).
template <typename V>
QN_ALWAYS_INLINE V load(const elem_t<V>* p) {
  V v;
  std::memcpy(&v, p, sizeof(V));
  return v;
}

template <typename V>
QN_ALWAYS_INLINE void store(elem_t<V>* p, const V& v) {
  std::memcpy(p, &v, sizeof(V));
}

template <typename V>
QN_ALWAYS_INLINE V broadcast(elem_t<V> s) {
  V v;
  for (int i = 0; i < kLanes<V>; ++i) v[i] = s;  // compiles to one broadcast
  return v;
}

}  // namespace vec
}  // namespace quantnoise

#pragma GCC diagnostic pop
