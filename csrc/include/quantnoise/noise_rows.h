// block_noise's `rows` argument (host only, ATen): the tensor holds rows `rows` of a larger weight
// and gets their mask (the row-only noise of an embedding lookup). Shared by the CPU, CUDA and
// emulated launchers.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <string_view>

#include "quantnoise/checks.h"

namespace quantnoise {

// rows checked (int64 [weight.size(0)] on weight's device; values >= 0 where reading them costs no
// device sync, i.e. on the CPU) and contiguous; undefined when not given.
inline at::Tensor checked_noise_rows(std::string_view op, const std::optional<at::Tensor>& rows,
                                     const at::Tensor& weight) {
  if (!rows.has_value()) return {};
  const at::Tensor& r = *rows;
  QN_CHECK_TYPE(r.scalar_type() == at::kLong, op, "rows must be an int64 tensor, got dtype ", r.scalar_type());
  QN_CHECK_VALUE(r.dim() == 1 && r.size(0) == weight.size(0), op, "rows must have shape [", weight.size(0),
                 "] (one index per row of weight), got shape ", r.sizes());
  QN_CHECK_VALUE(r.device() == weight.device(), op, "rows must be on weight's device ", weight.device(), ", got ",
                 r.device());
  const at::Tensor rc = r.contiguous();
  if (rc.device().is_cpu() && rc.numel() > 0) {
    const int64_t* p = rc.const_data_ptr<int64_t>();
    int64_t lowest = p[0];
    for (int64_t i = 1; i < rc.numel(); ++i) lowest = p[i] < lowest ? p[i] : lowest;
    QN_CHECK_VALUE(lowest >= 0, op, "rows must be >= 0, got ", lowest);
  }
  return rc;
}

}  // namespace quantnoise
