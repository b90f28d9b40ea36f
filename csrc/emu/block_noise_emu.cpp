// Emulated CUDA launchers of quantnoise::block_noise, noisy_linear and
// noisy_linear_backward_input: block_noise.cu ITSELF, compiled by g++ with the CUDA runtime
// pieces shimmed (csrc/emu/shim/) and its TORCH_LIBRARY_IMPL redirected to the emulation key.
// Its headers come first, so the CUDA -> PrivateUse3 rename reaches only block_noise.cu's text.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/matmul.h>
#include <torch/library.h>

#include "emu_registry.h"
#include "quantnoise/checks.h"
// The harness comes after ATen and before the kernel bodies.
#include "cuda_emu.h"
//
#include "ATen/cuda/CUDAContext.h"  // the shims (csrc/emu/shim is first on the include path)
#include "c10/cuda/CUDAGuard.h"

#define CUDA QN_EMU_DISPATCH_KEY
#include "../cuda/block_noise.cu"
#undef CUDA
