// Process set-up that must happen before LibTorch does real work, and a report of what the numerical
// runtime actually uses (BLAS library and kernel, threads, oneDNN ISA cap).
#pragma once

#include <string>
#include <vector>

namespace rlhf {

// Call first in main(). On x86 CPUs where OpenBLAS cannot name the core (it then falls back to slow
// generic kernels: measured 60 vs 300 GFLOP/s f32 on 2 cores), sets OPENBLAS_CORETYPE from the CPU's
// flags and re-executes the process once, because OpenBLAS reads it only when it is loaded. Where the CPU
// reports AMX but using it faults (seen on VMs), caps oneDNN at AVX512_CORE_BF16. Variables already set by
// the user are respected; RLHF_NO_REEXEC=1 disables the re-exec.
void PrepareProcess(int argc, char** argv);
// The command line PrepareProcess was given (for a process that starts itself again, e.g. a supervisor).
const std::vector<std::string>& ProcessArgs();

struct RuntimeInfo {
  std::string blas_library;       // resolved path of the BLAS LibTorch calls (from /proc/self/maps)
  bool reference_blas = false;    // Debian's reference BLAS: about 30x slower than OpenBLAS
  std::string openblas_core;      // kernel family OpenBLAS chose, when it is OpenBLAS
  std::string openblas_config;
  std::string onednn_max_isa;     // ONEDNN_MAX_CPU_ISA in force, "" when not capped
  int threads = 0;                // intra-op threads LibTorch uses
};
RuntimeInfo DescribeRuntime();

// Sets LibTorch's intra-op threads (0 = all cores) and logs the runtime, warning on the reference BLAS.
void ConfigureRuntime(int threads);

}  // namespace rlhf
