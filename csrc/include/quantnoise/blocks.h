// The block layout and the per-block Bernoulli draw shared by every noise kind and device.
//
// Layout (DESIGN §3): W is viewed as W.reshape(out, -1); a block is block_size consecutive
// entries of one row. For a contiguous W, block b covers flat elements [b*bs, (b+1)*bs).
//
// Draw: block b uses 32-bit lane b % 4 of Philox(counter = (b / 4, offset), key = seed).
// It is noised iff that lane < threshold, threshold = round-down(p * 2^32) (2^32 when p == 1).
// The Python reference (reference.py) implements exactly this rule with tensor arithmetic.
#pragma once

#include <cstdint>

#include "quantnoise/macros.h"
#include "quantnoise/philox.h"

namespace quantnoise {

constexpr int64_t kBlocksPerDraw = 4;  // one Philox call yields four 32-bit lanes

struct BlockRng {
  uint32_t key0, key1;      // seed, low and high words
  uint32_t off_lo, off_hi;  // offset, low and high words
  uint64_t threshold;       // noised iff lane < threshold; 0 = never, 2^32 = always

  // Four lanes: the draws of blocks 4g .. 4g+3.
  QN_INLINE U32x4 draw_group(int64_t group) const {
    const uint64_t g = static_cast<uint64_t>(group);
    return philox4x32_10(U32x4{{static_cast<uint32_t>(g), static_cast<uint32_t>(g >> 32), off_lo, off_hi}}, key0, key1);
  }

  QN_INLINE bool noised(const U32x4& lanes, int64_t block) const {
    return static_cast<uint64_t>(lanes.v[block % kBlocksPerDraw]) < threshold;
  }

  QN_INLINE bool block_noised(int64_t block) const { return noised(draw_group(block / kBlocksPerDraw), block); }
};

// Host-side constructor: p in [0, 1] (validated by the caller).
inline BlockRng make_block_rng(int64_t seed, int64_t offset, double p) {
  const uint64_t s = static_cast<uint64_t>(seed), o = static_cast<uint64_t>(offset);
  const uint64_t threshold = p >= 1.0 ? (uint64_t{1} << 32) : static_cast<uint64_t>(p * 4294967296.0);
  return BlockRng{static_cast<uint32_t>(s), static_cast<uint32_t>(s >> 32), static_cast<uint32_t>(o),
                  static_cast<uint32_t>(o >> 32), threshold};
}

}  // namespace quantnoise
