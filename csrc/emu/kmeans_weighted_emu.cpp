// Emulated CUDA launchers of quantnoise::kmeans_assign_weighted and kmeans_update_weighted:
// cuda/kmeans_weighted.cu itself (see launcher.h).
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>

#include "quantnoise/checks.h"
#include "quantnoise/kmeans_weighted_host.h"
//
#include "launcher.h"

#define CUDA QN_EMU_DISPATCH_KEY
#include "../cuda/kmeans_weighted.cu"
#undef CUDA
