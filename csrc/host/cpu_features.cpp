// The one CPU-feature probe and the QUANTNOISE_CPU_ISA cap (quantnoise/cpu_features.h).
#include "quantnoise/cpu_features.h"

#include <c10/util/Exception.h>

#include <array>
#include <cstdlib>

namespace quantnoise {
namespace {

constexpr std::array<CpuIsa, 3> kIsas = {CpuIsa::kPortable, CpuIsa::kAvx2, CpuIsa::kAvx512};

// What the CPU lacks for each path (index: CpuIsa), probed once. A path needs its own features
// and those of every narrower path. __builtin_cpu_supports takes string literals only, hence
// the spelled-out lists (the same features as QN_TARGET_AVX2 / QN_TARGET_AVX512).
const std::array<std::string, 3>& missing_features() {
  static const std::array<std::string, 3> missing = [] {
    std::array<std::string, 3> m;
#if defined(QN_X86)
    __builtin_cpu_init();
    auto need = [](std::string& out, bool has, const char* name) {
      if (!has) out += out.empty() ? name : std::string(" ") + name;
    };
    need(m[1], __builtin_cpu_supports("avx2"), "avx2");
    need(m[1], __builtin_cpu_supports("fma"), "fma");
    m[2] = m[1];
    need(m[2], __builtin_cpu_supports("avx512f"), "avx512f");
    need(m[2], __builtin_cpu_supports("avx512bw"), "avx512bw");
    need(m[2], __builtin_cpu_supports("avx512vl"), "avx512vl");
#else
    m[1] = "x86-64 (avx2)";
    m[2] = "x86-64 (avx512f)";
#endif
    return m;
  }();
  return missing;
}

CpuIsa widest_supported() {
  CpuIsa best = CpuIsa::kPortable;
  for (CpuIsa isa : kIsas) {
    if (missing_features()[static_cast<int>(isa)].empty()) best = isa;
  }
  return best;
}

}  // namespace

const char* cpu_isa_name(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::kAvx512:
      return "avx512";
    case CpuIsa::kAvx2:
      return "avx2";
    case CpuIsa::kPortable:
      break;
  }
  return "portable";
}

std::string cpu_isa_missing(CpuIsa isa) { return missing_features()[static_cast<int>(isa)]; }

CpuIsa parse_cpu_isa(const std::string& name, const char* what) {
  for (CpuIsa isa : kIsas) {
    if (name == cpu_isa_name(isa)) return isa;
  }
  TORCH_CHECK_VALUE(false, what, " must be one of 'avx512', 'avx2', 'portable', got '", name, "'");
}

CpuIsa cpu_isa() {
  static const CpuIsa best = widest_supported();
  const char* env = std::getenv("QUANTNOISE_CPU_ISA");
  if (env == nullptr || *env == '\0') return best;
  const CpuIsa cap = parse_cpu_isa(env, "QUANTNOISE_CPU_ISA (environment variable)");
  if (cap <= best) return cap;
  TORCH_WARN_ONCE("QUANTNOISE_CPU_ISA=", env, " but this CPU lacks ", cpu_isa_missing(cap), ": running the ",
                  cpu_isa_name(best), " path");
  return best;
}

}  // namespace quantnoise
