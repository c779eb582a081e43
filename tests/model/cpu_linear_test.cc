// The AMX bf16 and AVX-512 f32 products against f64 products of the same values, and the threads our kernels
// run on.
#include "common/model/cpu_linear.h"

#include <ATen/Parallel.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <mutex>
#include <set>
#include <thread>

namespace rlhf::model {
namespace {

// at::parallel_for is instantiated in our own code (the kernels here, decode attention, the sampler): its loop
// is an OpenMP region only when that code is compiled with OpenMP, as LibTorch is. Without it, two chunks run
// one after the other on the calling thread.
TEST(CpuLinear, ParallelForInOurCodeRunsOnSeveralThreads) {
  const int before = at::get_num_threads();
  at::set_num_threads(2);
  std::mutex mu;
  std::set<std::thread::id> ids;
  at::parallel_for(0, 2, 1, [&](int64_t, int64_t) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    std::lock_guard<std::mutex> lock(mu);
    ids.insert(std::this_thread::get_id());
  });
  at::set_num_threads(before);
  EXPECT_EQ(ids.size(), 2u) << "at::parallel_for ran its two chunks on one thread";
}

const uint16_t* Bits(const torch::Tensor& t) { return reinterpret_cast<const uint16_t*>(t.data_ptr()); }

TEST(CpuLinear, AmxProductEqualsTheF32ProductRoundedToBf16) {
  if (!AmxUsable()) GTEST_SKIP() << "AMX is not usable on this machine (or RLHF_AMX=0)";
  torch::manual_seed(3);
  // Row counts around the 16-row tiles and the 4-block groups, weight rows that leave a partial last block,
  // and products long enough that the order of the sums matters.
  for (int64_t M : {1, 5, 16, 17, 64, 100}) {
    for (int64_t N : {1, 16, 33, 250}) {
      for (int64_t K : {32, 96, 768}) {
        for (bool with_bias : {false, true}) {
          auto x = torch::randn({M, K}).to(torch::kBFloat16);
          auto w = torch::randn({N, K}).to(torch::kBFloat16);
          auto b = with_bias ? torch::randn({N}).to(torch::kBFloat16) : torch::Tensor();
          auto y = torch::full({M, N}, 7.f).to(torch::kBFloat16);
          AmxLinearBf16(Bits(x), M, K, Bits(w), N, with_bias ? Bits(b) : nullptr,
                        reinterpret_cast<uint16_t*>(y.data_ptr()));
          auto ref = torch::matmul(x.to(torch::kFloat64), w.to(torch::kFloat64).t());
          if (with_bias) ref = ref + b.to(torch::kFloat64);
          // Accumulated in f32 and rounded once to bf16: within one bf16 step (2^-8 relative) of the exact
          // value, plus the f32 sum's own error on long products.
          auto err = (y.to(torch::kFloat64) - ref).abs();
          auto bound = ref.abs() * (1.0 / 256) + 1e-5 * std::sqrt(static_cast<double>(K)) * 4;
          EXPECT_TRUE((err <= bound).all().item<bool>())
              << "M " << M << " N " << N << " K " << K << " bias " << with_bias << ": max error "
              << err.max().item<double>();
        }
      }
    }
  }
}

TEST(CpuLinear, Avx512ProductEqualsTheF64ProductWithinF32Rounding) {
  if (!Avx512Usable()) GTEST_SKIP() << "AVX-512 is not usable on this machine (or RLHF_AVX512=0)";
  torch::manual_seed(4);
  // Rows around the 8-row tiles, weight rows around the 3-row tiles and the 96-row chunks (one chunk per
  // thread or fewer), and lengths on both sides of the 1024 block of k.
  for (int64_t M : {1, 2, 7, 8, 9, 64, 100}) {
    for (int64_t N : {1, 2, 4, 97, 250}) {
      for (int64_t K : {16, 48, 1040, 2048}) {
        for (bool with_bias : {false, true}) {
          auto x = torch::randn({M, K});
          auto w = torch::randn({N, K});
          auto b = with_bias ? torch::randn({N}) : torch::Tensor();
          auto y = torch::full({M, N}, 7.f);
          Avx512LinearF32(x.data_ptr<float>(), M, K, w.data_ptr<float>(), N, with_bias ? b.data_ptr<float>() : nullptr,
                          y.data_ptr<float>());
          auto ref = torch::matmul(x.to(torch::kFloat64), w.to(torch::kFloat64).t());
          if (with_bias) ref = ref + b.to(torch::kFloat64);
          auto scale = torch::matmul(x.abs().to(torch::kFloat64), w.abs().to(torch::kFloat64).t());
          auto err = (y.to(torch::kFloat64) - ref).abs();
          EXPECT_TRUE((err <= scale * 1e-5 + 1e-6).all().item<bool>())
              << "M " << M << " N " << N << " K " << K << " bias " << with_bias << ": max error "
              << err.max().item<double>();
        }
      }
    }
  }
}

TEST(CpuLinear, Avx512ProductRejectsLengthsThatAreNotMultiplesOf16) {
  if (!Avx512Usable()) GTEST_SKIP() << "AVX-512 is not usable on this machine (or RLHF_AVX512=0)";
  std::vector<float> x(24), w(24), y(1);
  EXPECT_THROW(Avx512LinearF32(x.data(), 1, 24, w.data(), 1, nullptr, y.data()), c10::Error);
}

TEST(CpuLinear, AmxProductRejectsLengthsThatAreNotMultiplesOf32) {
  if (!AmxUsable()) GTEST_SKIP() << "AMX is not usable on this machine (or RLHF_AMX=0)";
  std::vector<uint16_t> x(48), w(48), y(1);
  EXPECT_THROW(AmxLinearBf16(x.data(), 1, 48, w.data(), 1, nullptr, y.data()), c10::Error);
}

}  // namespace
}  // namespace rlhf::model
