// Emulated CUDA launchers of quantnoise::pq_decode, pq_linear and pq_embedding: pq.cu ITSELF,
// compiled by g++ with the CUDA runtime pieces it uses shimmed (csrc/emu/shim/: no-op device
// guard, null stream, no-op launch check) and its TORCH_LIBRARY_IMPL redirected to the
// emulation dispatch key. So the launchers' host logic is tested too, with no copy of it.
// The headers pq.cu includes come first, so the CUDA -> PrivateUse3 rename below reaches only
// pq.cu's own text.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/aminmax.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <type_traits>
#include <vector>

#include "emu_registry.h"
#include "quantnoise/checks.h"
// The harness comes after ATen and before the kernel bodies.
#include "cuda_emu.h"
//
#include <ATen/ops/mul.h>
#include <ATen/ops/sub.h>

#include "ATen/cuda/CUDAContext.h"  // the shims (csrc/emu/shim is first on the include path)
#include "c10/cuda/CUDAGuard.h"

namespace quantnoise {
// pq.cu links this host helper from csrc/cpu/pq_linear.cpp, which the emulation extension does
// not build (it registers CPU kernels). Same body; TODO: move it to a shared host .cpp.
at::Tensor pq_dequantized_centroids(const at::Tensor& centroids, const std::optional<at::Tensor>& scale,
                                    const std::optional<at::Tensor>& zero_point, at::ScalarType dtype) {
  if (centroids.scalar_type() != at::kChar) return centroids.to(dtype).contiguous();
  at::Tensor c = centroids.to(at::kFloat);
  if (zero_point.has_value()) c = at::sub(c, zero_point->to(c.device(), at::kFloat).reshape({-1, 1}));
  c = at::mul(c, scale->to(c.device(), at::kFloat).reshape({-1, 1}));
  return c.to(dtype).contiguous();
}
}  // namespace quantnoise

#define CUDA QN_EMU_DISPATCH_KEY
#include "../cuda/pq.cu"
#undef CUDA
