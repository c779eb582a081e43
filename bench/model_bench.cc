// Forward (prefill) and forward+backward throughput of the transformer on the "small" config
// (hidden 768, 12 layers, 12 heads, 4 KV heads, intermediate 2048, vocab 32000), f32 and bf16, with the
// GFLOP/s they imply and the raw GEMM rate of this machine measured in the same run.
//
//   bench/model_bench [--tokens 512] [--iters 3] [--threads 0] [--dtypes f32,bf16]
#include <CLI/CLI.hpp>
#include <torch/torch.h>

#include <chrono>
#include <cstdio>

#include "bench/timing.h"
#include "common/logging.h"
#include "common/model/init.h"
#include "common/model/transformer.h"
#include "common/runtime.h"

using namespace rlhf;
using bench::BestOf;
using bench::Clock;
using bench::Seconds;

namespace {

double GemmGflops(torch::ScalarType dt) {
  auto a = torch::randn({1024, 1024}).to(dt), b = torch::randn({1024, 1024}).to(dt);
  double s = BestOf(5, [&] { (void)torch::matmul(a, b); });
  return 2.0 * 1024 * 1024 * 1024 / s / 1e9;
}

}  // namespace

int main(int argc, char** argv) {
  PrepareProcess(argc, argv);
  CLI::App app{"transformer forward / forward+backward throughput"};
  int64_t tokens = 512, threads = 0;
  int iters = 3;
  std::vector<std::string> dtypes = {"f32", "bf16"};
  app.add_option("--tokens", tokens, "sequence length of the prefill");
  app.add_option("--iters", iters, "timed iterations (best is reported)");
  app.add_option("--threads", threads, "LibTorch threads; 0 = all cores");
  app.add_option("--dtypes", dtypes, "f32, bf16")->delimiter(',');
  CLI11_PARSE(app, argc, argv);
  InitLogging("info");
  ConfigureRuntime(static_cast<int>(threads));

  auto cfg = model::ModelInitConfig::Small().ToHfConfig().value();
  bench::PrintMachine();
  std::printf("GEMM 1024^3: f32 %.0f GFLOP/s, bf16 %.0f GFLOP/s\n", GemmGflops(torch::kFloat32),
              GemmGflops(torch::kBFloat16));

  model::Transformer net(cfg);
  net->InitWeights(0);
  int64_t params = 0, embed = cfg.vocab_size * cfg.hidden_size;
  for (const auto& p : net->parameters()) params += p.numel();
  // Matmul FLOPs per token: every weight but the embedding lookup, x2; attention scores and values over the
  // full T x T block (what the kernel computes) per layer.
  const double T = static_cast<double>(tokens);
  const double fwd_flops = 2.0 * static_cast<double>(params - embed) * T +
                           4.0 * cfg.num_hidden_layers * cfg.num_attention_heads * cfg.head_dim * T * T;
  std::printf("small config: %.1fM parameters, %lld tokens per pass, %.1f GFLOP per forward\n", params / 1e6,
              static_cast<long long>(tokens), fwd_flops / 1e9);
  std::printf("%-6s %14s %10s %18s %10s\n", "dtype", "forward tok/s", "GFLOP/s", "fwd+bwd tok/s", "GFLOP/s");
  auto ids = torch::randint(0, cfg.vocab_size, {1, tokens}, torch::kInt64);
  auto targets = torch::randint(0, cfg.vocab_size, {1, tokens}, torch::kInt64);
  for (const auto& d : dtypes) {
    auto dt = d == "bf16" ? torch::kBFloat16 : torch::kFloat32;
    net->to(dt);
    double fwd = BestOf(iters, [&] {
      torch::NoGradGuard ng;
      (void)net->Logits(net->Hidden(ids));
    });
    double fb = BestOf(iters, [&] {
      net->zero_grad();
      auto lp = net->TokenLogProbs(net->Hidden(ids), targets).logprobs;
      (-lp.mean()).backward();
    });
    std::printf("%-6s %14.0f %10.1f %18.0f %10.1f\n", d.c_str(), T / fwd, fwd_flops / fwd / 1e9, T / fb,
                3 * fwd_flops / fb / 1e9);
  }
  return 0;
}
