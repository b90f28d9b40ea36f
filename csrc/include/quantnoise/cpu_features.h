// The CPU instruction-set path of every kernel, chosen in one place at run time (no -march flags:
// one binary serves every x86-64 CPU).
//
// Paths, widest first, each with the CPU features it needs (x86-64 only):
//   avx512    avx512f, avx512bw, avx512vl and the avx2 path's  (QN_TARGET_AVX512)
//   avx2      avx2, fma                                        (QN_TARGET_AVX2)
//   portable  plain C++ at the compiler's baseline
// cpu_isa() is the widest path the CPU runs, capped by the environment variable
// QUANTNOISE_CPU_ISA=avx512|avx2|portable, read at every call (so tests can switch paths):
//   * a cap the CPU cannot honour (avx512 on a CPU without AVX-512) runs the widest path the CPU
//     has and warns once: the variable is an upper bound, never a promise;
//   * any other non-empty value is an error (ValueError naming the variable and the value).
// An op with no code of its own for the chosen path takes its next narrower one (e.g. an op with
// avx512 and portable code runs portable under avx2); every path computes the same result to
// rounding, and the ops whose contract says so (kmeans_assign) bit for bit.
#pragma once

#include <string>

#if defined(__x86_64__) || defined(_M_X64)
#define QN_X86 1
// Function attributes of the SIMD code of each path. Keep them in step with the probe in
// host/cpu_features.cpp: the path runs only where the CPU has every feature named here.
#define QN_TARGET_AVX2 __attribute__((target("avx2,fma")))
#define QN_TARGET_AVX512 __attribute__((target("avx2,fma,avx512f,avx512bw,avx512vl")))
#endif

namespace quantnoise {

enum class CpuIsa { kPortable = 0, kAvx2 = 1, kAvx512 = 2 };

// The path CPU kernels take now (see above). Call it outside parallel regions, once per op call.
CpuIsa cpu_isa();

// "avx512", "avx2" or "portable".
const char* cpu_isa_name(CpuIsa isa);

// The features this CPU lacks for `isa`, e.g. "avx512f avx512bw avx512vl"; empty if it has them all.
std::string cpu_isa_missing(CpuIsa isa);

// The path named `name` (as QUANTNOISE_CPU_ISA spells it); ValueError for an unknown name.
CpuIsa parse_cpu_isa(const std::string& name, const char* what);

}  // namespace quantnoise
