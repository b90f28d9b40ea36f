// The lookup-table (LUT) path of the CPU pq_linear, for every ISA path (pq_lut.cpp).
#pragma once

#include <cstdint>

#include "quantnoise/checks.h"
#include "quantnoise/cpu_features.h"

namespace quantnoise {

// y[M][out] (float32, zeroed by the caller) = xf[M][in] . W^T, W's block (o, j) = C[code(o, j)];
// codes packed [n_blocks][out] (uint8_t or int32_t), C [K][block_size] float32. The rows run
// through a table of x_block . centroid per block (pq_lut.cpp), on the `isa` path.
template <typename code_t>
void lut_linear(CpuIsa isa, const float* xf, int64_t M, const code_t* packed, const float* C, const PQShape& s,
                float* y);

}  // namespace quantnoise
