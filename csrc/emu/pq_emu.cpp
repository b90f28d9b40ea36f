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
#include "quantnoise/pq_host.h"
// The harness comes after ATen and before the kernel bodies.
#include "cuda_emu.h"
//
#include "ATen/cuda/CUDAContext.h"  // the shims (csrc/emu/shim is first on the include path)
#include "c10/cuda/CUDAGuard.h"

#define CUDA QN_EMU_DISPATCH_KEY
#include "../cuda/pq.cu"
#undef CUDA
