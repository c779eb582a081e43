// Timing and machine-report helpers shared by the benchmarks.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdio>

#include "common/runtime.h"

namespace rlhf::bench {

using Clock = std::chrono::steady_clock;

// Seconds since `start`.
inline double Seconds(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// Best of `iters` timings of fn(), after one untimed warm-up call.
template <typename Fn>
double BestOf(int iters, Fn&& fn) {
  fn();
  double best = 1e30;
  for (int i = 0; i < iters; ++i) {
    auto t = Clock::now();
    fn();
    best = std::min(best, Seconds(t));
  }
  return best;
}

// One line on the machine the figures come from: LibTorch threads, the BLAS and its kernels, oneDNN's
// cap, and a warning where the reference BLAS (about 30x slower) is in use.
inline void PrintMachine() {
  const auto info = DescribeRuntime();
  std::printf("machine: %d threads, BLAS %s (core %s), oneDNN cap %s%s\n", info.threads, info.blas_library.c_str(),
              info.openblas_core.c_str(), info.onednn_max_isa.empty() ? "none" : info.onednn_max_isa.c_str(),
              info.reference_blas ? " -- REFERENCE BLAS, ~30x slow: run scripts/setup.sh" : "");
}

}  // namespace rlhf::bench
