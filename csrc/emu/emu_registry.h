// How an emulated kernel reaches pytest: each csrc/emu/<op>_emu.cpp registers its launcher as
// the implementation of quantnoise::<op> for QN_EMU_DISPATCH_KEY, a dispatch key that no real
// device uses. Tests (python_tests/emu.py) route CPU tensors to it by redispatching, so the
// real CPU kernel stays registered and nothing changes in the installed package.
#pragma once

#include <torch/library.h>

#define QN_EMU_DISPATCH_KEY PrivateUse3
#define QN_EMU_LIBRARY_IMPL(m) TORCH_LIBRARY_IMPL(quantnoise, PrivateUse3, m)
