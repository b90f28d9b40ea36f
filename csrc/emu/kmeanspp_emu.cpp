// Emulated CUDA launchers of quantnoise::kmeanspp_init, kmeanspp_step and kmeanspp_sample:
// cuda/kmeanspp.cu itself (see launcher.h).
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <torch/library.h>

#include <limits>

#include "quantnoise/checks.h"
//
#include "launcher.h"

#define CUDA QN_EMU_DISPATCH_KEY
#include "../cuda/kmeanspp.cu"
#undef CUDA
