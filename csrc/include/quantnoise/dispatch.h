// Compile-time switches and CUDA grid arithmetic shared by the CPU kernels, the CUDA launchers
// and the emulated launchers, each written once (the model: flash-attention's static_switch.h and
// ATen's AT_DISPATCH_*). No ATen include, so a .cuh can use the grid helpers; the codes switch
// names c10 types and expands only where ATen is already included (host .cpp/.cu files).
//
// Usage:
//   QN_DISPATCH_BLOCK_SIZE(block_size, kBlock, [&] {
//     drop_blocks<scalar_t, kBlock>(...);  // kBlock: a constexpr int64_t, 0 for an unlisted size
//   });
//   QN_DISPATCH_CODE_TYPES(codes.scalar_type(), "pq_decode", [&] {
//     decode_rows<scalar_t, code_t>(codes.const_data_ptr<code_t>(), ...);  // code_t: uint8_t | int32_t
//   });
//   QN_LAUNCH_KERNEL(grid_stride_blocks(numel, kThreadsPerBlock), kThreadsPerBlock, 0, stream, kernel<T>)(...);
//   (grid_stride_blocks: cuda_compat.h, grid_blocks with the emulation's cap; for grid-stride kernels)
// Both switches return what the lambda returns (all branches must return the same type).
#pragma once

#include <algorithm>
#include <cstdint>

// Block sizes that get a compile-time specialisation: those iPQ uses (fairseq: 4 and 8 for
// linear layers, 9 for 3x3 convolutions, 16 for large ones). Any other size runs with NAME == 0,
// the generic loop that reads the size at run time.
#define QN_DISPATCH_BLOCK_SIZE(BS, NAME, ...)           \
  [&] {                                                 \
    switch (BS) {                                       \
      QN_PRIVATE_BLOCK_SIZE_CASE(4, NAME, __VA_ARGS__)  \
      QN_PRIVATE_BLOCK_SIZE_CASE(8, NAME, __VA_ARGS__)  \
      QN_PRIVATE_BLOCK_SIZE_CASE(9, NAME, __VA_ARGS__)  \
      QN_PRIVATE_BLOCK_SIZE_CASE(16, NAME, __VA_ARGS__) \
      default: {                                        \
        static constexpr int64_t NAME = 0;              \
        return __VA_ARGS__();                           \
      }                                                 \
    }                                                   \
  }()
#define QN_PRIVATE_BLOCK_SIZE_CASE(N, NAME, ...) \
  case N: {                                      \
    static constexpr int64_t NAME = N;           \
    return __VA_ARGS__();                        \
  }

// PQ codes are uint8 (K <= 256) or int32 (DESIGN §3.3); the op's checks reject anything else
// first, so the default branch only guards against a caller that skipped them.
#define QN_DISPATCH_CODE_TYPES(TYPE, OP, ...)                                                            \
  [&] {                                                                                                  \
    switch (TYPE) {                                                                                      \
      case c10::ScalarType::Byte: {                                                                      \
        using code_t = uint8_t;                                                                          \
        return __VA_ARGS__();                                                                            \
      }                                                                                                  \
      case c10::ScalarType::Int: {                                                                       \
        using code_t = int32_t;                                                                          \
        return __VA_ARGS__();                                                                            \
      }                                                                                                  \
      default:                                                                                           \
        TORCH_CHECK_TYPE(false, "quantnoise::", OP, ": codes must be uint8 or int32, got dtype ", TYPE); \
    }                                                                                                    \
  }()

namespace quantnoise {

// Threads per block of the one-dimensional grid-stride kernels.
constexpr int kThreadsPerBlock = 256;
// Grid-stride kernels launch at most this many blocks and loop over the rest of the work.
constexpr int64_t kMaxGridStrideBlocks = int64_t{1} << 20;
// CUDA's limits on gridDim.x and gridDim.y.
constexpr int64_t kMaxGridDimX = (int64_t{1} << 31) - 1;
constexpr int64_t kMaxGridDimY = 65535;

// Blocks for `work` items at `per_block` items per block: ceil(work / per_block), at most
// max_blocks. A grid that must cover its work exactly passes CUDA's limit (kMaxGridDimX/Y); a
// grid-stride kernel, which loops over what a capped grid leaves, calls grid_stride_blocks
// (cuda_compat.h) instead, which the emulated build can shrink.
inline unsigned grid_blocks(int64_t work, int64_t per_block, int64_t max_blocks = kMaxGridStrideBlocks) {
  return static_cast<unsigned>(std::min<int64_t>((work + per_block - 1) / per_block, max_blocks));
}

}  // namespace quantnoise
