// Generation throughput of rollout::Generator on the "small" config (125M), prompts of 32 tokens, 64 new
// tokens, top-p 0.9 sampling, at batch 1, 8, 32, 64, f32 and bf16; beside each figure this machine's bounds
// measured in the same run:
//   memory bound  = read bandwidth (a buffer well past the last-level cache) / bytes of weights per step x B
//   compute bound = GEMM rate / (2 x non-embedding parameters) FLOP per token, at the faster of LibTorch's
//                   product and the model's own (AMX tiles for bf16 where usable)
//   bench/decode_bench [--threads 2] [--batches 1,8,32,64] [--dtypes f32,bf16] [--new-tokens 64] [--repeats 3]
#include <CLI/CLI.hpp>
#include <torch/torch.h>

#include <chrono>
#include <cstdio>

#include "common/logging.h"
#include "common/model/cpu_linear.h"
#include "common/model/init.h"
#include "common/model/transformer.h"
#include "common/runtime.h"
#include "rollout/generator.h"

using namespace rlhf;
using Clock = std::chrono::steady_clock;

namespace {
double Since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

double ReadBandwidthGBs() {
  auto buf = torch::ones({int64_t{256} << 20}, torch::kFloat32);  // 1 GiB, far past any last-level cache
  (void)buf.sum();
  double best = 1e30;
  for (int i = 0; i < 3; ++i) {
    auto t = Clock::now();
    (void)buf.sum().item<float>();
    best = std::min(best, Since(t));
  }
  return buf.numel() * 4.0 / best / 1e9;
}

// The 1024^3 product's rate through LibTorch's linear and through the model's own inference product
// (model::Linear without autograd: AMX tiles for bf16 where usable), best of five each.
struct GemmRates {
  double libtorch = 0, model = 0;
};
GemmRates GemmGflops(torch::ScalarType dt) {
  torch::NoGradGuard ng;
  auto a = torch::randn({1024, 1024}).to(dt), b = torch::randn({1024, 1024}).to(dt);
  auto rate = [&](auto&& product) {
    (void)product();
    double best = 1e30;
    for (int i = 0; i < 5; ++i) {
      auto t = Clock::now();
      (void)product();
      best = std::min(best, Since(t));
    }
    return 2.0 * 1024 * 1024 * 1024 / best / 1e9;
  };
  GemmRates r;
  r.libtorch = rate([&] { return torch::nn::functional::linear(a, b); });
  r.model = rate([&] { return model::Linear(a, b); });
  return r;
}
}  // namespace

int main(int argc, char** argv) {
  PrepareProcess(argc, argv);
  CLI::App app{"decode throughput of the generator beside memory and compute bounds"};
  int threads = 2;
  int64_t new_tokens = 64, prompt_len = 32;
  std::vector<int64_t> batches = {1, 8, 32, 64};
  std::vector<std::string> dtypes = {"f32", "bf16"};
  app.add_option("--threads", threads, "LibTorch threads");
  app.add_option("--batches", batches, "batch sizes")->delimiter(',');
  app.add_option("--dtypes", dtypes, "f32, bf16")->delimiter(',');
  app.add_option("--new-tokens", new_tokens, "tokens generated per sequence");
  int repeats = 3;
  app.add_option("--repeats", repeats, "runs per figure; the best is printed (this machine's speed varies by 20%)")
      ->check(CLI::PositiveNumber);
  bool profile = false;
  app.add_flag("--profile", profile, "also print where a decode step's time goes (backbone, lm_head, sampling)");
  CLI11_PARSE(app, argc, argv);
  InitLogging("warn");
  ConfigureRuntime(threads);
  auto cfg = model::ModelInitConfig::Small().ToHfConfig().value();
  model::Transformer net(cfg);
  net->InitWeights(0);
  net->eval();
  int64_t params = 0;
  for (const auto& p : net->parameters()) params += p.numel();
  const int64_t embed = cfg.vocab_size * cfg.hidden_size;
  const double bw = ReadBandwidthGBs();
  std::printf("small config: %.1fM parameters (%.1fM outside the embedding), %d threads, read bandwidth %.1f GB/s\n",
              params / 1e6, (params - embed) / 1e6, threads, bw);
  std::printf("%-5s %5s %12s %12s %8s %12s %8s %14s\n", "dtype", "batch", "decode tok/s", "mem bound", "% mem",
              "compute bnd", "% comp", "prefill tok/s");
  for (const auto& d : dtypes) {
    const auto dt = d == "bf16" ? torch::kBFloat16 : torch::kFloat32;
    net->to(dt);
    const GemmRates rates = GemmGflops(dt);
    // The bound takes the faster of LibTorch's product and the one the model runs.
    const double gemm = std::max(rates.libtorch, rates.model);
    const double bytes_per_step = static_cast<double>(params - embed) * (dt == torch::kBFloat16 ? 2 : 4);
    const double compute_bound = gemm * 1e9 / (2.0 * static_cast<double>(params - embed));
    for (int64_t B : batches) {
      std::vector<rollout::PromptInput> prompts;
      for (int64_t b = 0; b < B; ++b) {
        rollout::PromptInput p;
        p.prompt_id = "b" + std::to_string(b);
        p.prompt_index = b;
        for (int64_t t = 0; t < prompt_len; ++t) p.ids.push_back(static_cast<int32_t>((b * 131 + t * 17) % cfg.vocab_size));
        prompts.push_back(p);
      }
      rollout::Generator gen(net.get(), nullptr, {}, {B, prompt_len + new_tokens + 1, true});
      rollout::SamplingParams sp;
      sp.top_p = 0.9;
      // Best of `repeats` runs: the decode rate is the run's tokens after the first per sequence over its time
      // past a prefill-only run just before it.
      double decode_rate = 0, prefill_rate = 0;
      for (int rep = 0; rep < repeats; ++rep) {
        sp.max_new_tokens = 1;
        auto t0 = Clock::now();
        (void)gen.Generate(prompts, 1, sp);  // prefill (and one draw) only
        const double prefill = Since(t0);
        sp.max_new_tokens = new_tokens;
        auto t1 = Clock::now();
        auto out = gen.Generate(prompts, 1, sp);
        const double total = Since(t1);
        int64_t tokens = 0;
        for (const auto& g : *out) tokens += static_cast<int64_t>(g.completion_ids.size());
        decode_rate = std::max(decode_rate, (tokens - B) / std::max(total - prefill, 1e-9));
        prefill_rate = std::max(prefill_rate, B * prompt_len / prefill);
      }
      const double mem_bound = B * bw * 1e9 / bytes_per_step;
      std::printf("%-5s %5lld %12.1f %12.1f %7.0f%% %12.1f %7.0f%% %14.1f\n", d.c_str(), static_cast<long long>(B),
                  decode_rate, mem_bound, 100 * decode_rate / mem_bound, compute_bound,
                  100 * decode_rate / compute_bound, prefill_rate);
    }
    std::printf("(%s GEMM 1024^3: LibTorch %.0f GFLOP/s, the model's product %.0f GFLOP/s%s)\n", d.c_str(),
                rates.libtorch, rates.model,
                dt == torch::kBFloat16 ? (model::AmxUsable() ? ", AMX tiles" : ", no AMX") : "");
    if (profile) {
      torch::NoGradGuard ng;
      for (int64_t B : batches) {
        model::KVCache cache(cfg, B, prompt_len + 16, dt);
        net->Hidden(torch::randint(0, cfg.vocab_size, {B, prompt_len}, torch::kInt64), {}, &cache);
        auto ids = torch::randint(0, cfg.vocab_size, {B, 1}, torch::kInt64);
        double tb = 0, tl = 0, ts = 0;
        rollout::SamplingParams sp;
        sp.top_p = 0.9;
        std::vector<uint64_t> seeds(B, 1), steps(B, 0);
        for (int s = 0; s < 8; ++s) {
          auto t = Clock::now();
          auto h = net->Hidden(ids, {}, &cache);
          tb += Since(t);
          t = Clock::now();
          auto logits = net->Logits(h.select(1, 0));
          tl += Since(t);
          t = Clock::now();
          (void)rollout::Sample(logits, sp, seeds, steps);
          ts += Since(t);
        }
        // The step's matrix products alone, one per weight matrix at B rows: what the model's product reaches at
        // the decode's own shapes, against the 1024^3 rate the compute bound uses.
        double tg = 0, flop = 0;
        for (const auto& p : net->named_parameters()) {
          if (p.value().dim() != 2 || p.key().find("embed_tokens") != std::string::npos) continue;
          auto x = torch::randn({B, p.value().size(1)}).to(dt);
          (void)model::Linear(x, p.value());
          auto t = Clock::now();
          for (int s = 0; s < 4; ++s) (void)model::Linear(x, p.value());
          tg += Since(t) / 4;
          flop += 2.0 * B * p.value().numel();
        }
        std::printf("  %s batch %lld, per step: backbone %.1f ms, lm_head %.1f ms, sampling %.1f ms; its GEMMs alone "
                    "%.1f ms (%.0f GFLOP/s)\n",
                    d.c_str(), static_cast<long long>(B), tb * 125, tl * 125, ts * 125, tg * 1e3, flop / tg / 1e9);
      }
    }
  }
  return 0;
}
