// What an emulated CUDA launcher (csrc/emu/<stem>_emu.cpp) includes between the headers of
// cuda/<stem>.cu and the .cu itself: the harness (after ATen, before any kernel body) and the
// shims of the CUDA runtime pieces a launcher uses (csrc/emu/shim/, first on the include path).
// The emu file then renames the dispatch key and includes the .cu ITSELF, so the launcher's host
// logic is tested with no copy of it:
//
//   #include <ATen/...>            // every header cuda/<stem>.cu includes, first: the rename
//   #include "quantnoise/..."      // below must reach only the .cu's own text
//   #include "launcher.h"
//   #define CUDA QN_EMU_DISPATCH_KEY
//   #include "../cuda/<stem>.cu"
//   #undef CUDA
//
// How an emulated kernel reaches pytest: the .cu's TORCH_LIBRARY_IMPL(quantnoise, CUDA, m) becomes
// the implementation of quantnoise::<op> for QN_EMU_DISPATCH_KEY, a dispatch key that no real
// device uses. Tests (python_tests/emu.py) route CPU tensors to it by redispatching, so the real
// CPU kernel stays registered and nothing changes in the installed package.
#pragma once

#include <torch/library.h>

#include "cuda_emu.h"
//
#include "ATen/cuda/CUDAContext.h"
#include "c10/cuda/CUDAGuard.h"

#define QN_EMU_DISPATCH_KEY PrivateUse3
