// Emulated CUDA launchers of quantnoise::kmeans_assign and quantnoise::kmeans_update: kmeans.cu
// ITSELF, compiled by g++ with the CUDA runtime pieces shimmed (csrc/emu/shim/) and its
// TORCH_LIBRARY_IMPL redirected to the emulation dispatch key (the pattern of pq_emu.cpp).
// The headers kmeans.cu includes come first, so the CUDA -> PrivateUse3 rename below reaches
// only kmeans.cu's own text.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>

#include "emu_registry.h"
#include "quantnoise/checks.h"
#include "quantnoise/kmeans_host.h"
// The harness comes after ATen and before the kernel bodies.
#include "cuda_emu.h"
//
#include "ATen/cuda/CUDAContext.h"  // the shims (csrc/emu/shim is first on the include path)
#include "c10/cuda/CUDAGuard.h"

#define CUDA QN_EMU_DISPATCH_KEY
#include "../cuda/kmeans.cu"
#undef CUDA
