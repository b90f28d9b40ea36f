// Emulated CUDA launchers of quantnoise::pq_decode and pq_linear: cuda/pq_linear.cu itself (see
// launcher.h).
#include <ATen/Context.h>
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/aminmax.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <type_traits>

#include "quantnoise/checks.h"
#include "quantnoise/dispatch.h"
#include "quantnoise/pq_host.h"
//
#include "launcher.h"

#define CUDA QN_EMU_DISPATCH_KEY
#include "../cuda/pq_linear.cu"
#undef CUDA
