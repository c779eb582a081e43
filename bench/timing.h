// Timing helpers shared by the benchmarks.
#pragma once

#include <algorithm>
#include <chrono>

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

}  // namespace rlhf::bench
