// Emulated CUDA launcher of quantnoise::pq_linear_backward: cuda/pq_linear_backward.cu itself
// (see launcher.h).
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <tuple>

#include "quantnoise/checks.h"
#include "quantnoise/dispatch.h"
#include "quantnoise/pq_host.h"
//
#include "launcher.h"

#define CUDA QN_EMU_DISPATCH_KEY
#include "../cuda/pq_linear_backward.cu"
#undef CUDA
