// Host helpers of the PQ ops shared by the CPU kernels, the CUDA launchers and the emulated CUDA
// launchers (ATen, no kernels). Defined in csrc/host/pq_host.cpp, which the emulation extension
// (python_tests/emu.py) compiles too.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

namespace quantnoise {

// The centroids in `dtype`, contiguous: (c - zero_point) * scale (computed in float32) for int8
// centroids, else a cast. Plain ATen ops, so it runs on the centroids' device.
at::Tensor pq_dequantized_centroids(const at::Tensor& centroids, const std::optional<at::Tensor>& scale,
                                    const std::optional<at::Tensor>& zero_point, at::ScalarType dtype);

}  // namespace quantnoise
