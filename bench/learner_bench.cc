// Throughput of one PPO optimizer step through the learner on the "small" config (hidden 768, 12 layers,
// vocab 32000): policy forward+backward, critic forward+backward, gradient clipping and AdamW steps of
// both models, beside the same passes written directly in LibTorch (log_softmax + gather, the clipped
// policy and value losses, torch::nn::utils::clip_grad_norm_, torch::optim::AdamW) on the same tokens.
// The learner's overhead = learner time / direct time - 1 (target: at most 15%). Both sides compute the
// same quantities (log-probs and entropy at the temperature, values); each side runs in its own phases
// (learner, direct, learner) and the best timing of each is kept.
//
//   bench/learner_bench [--samples 8] [--micro 4] [--prompt 32] [--response 64] [--iters 3] [--threads 0]
#include <CLI/CLI.hpp>
#include <torch/torch.h>

#include <chrono>
#include <cstdio>

#include "bench/timing.h"
#include "common/logging.h"
#include "common/model/init.h"
#include "common/model/transformer.h"
#include "common/runtime.h"
#include "trainer/batching.h"
#include "trainer/learner.h"
#include "trainer/objectives.h"

using namespace rlhf;
using bench::Clock;
using bench::Seconds;


int main(int argc, char** argv) {
  PrepareProcess(argc, argv);
  CLI::App app{"PPO step throughput: learner vs direct LibTorch"};
  int64_t samples = 8, micro = 4, prompt = 32, response = 64, threads = 0;
  int iters = 3;
  app.add_option("--samples", samples, "samples per optimizer step (one minibatch)");
  app.add_option("--micro", micro, "samples per micro-batch");
  app.add_option("--prompt", prompt, "prompt tokens per sample");
  app.add_option("--response", response, "response tokens per sample");
  app.add_option("--iters", iters, "timed iterations per side (best is reported)");
  app.add_option("--threads", threads, "LibTorch threads; 0 = all cores");
  CLI11_PARSE(app, argc, argv);
  InitLogging("warn");
  ConfigureRuntime(static_cast<int>(threads));
  bench::PrintMachine();

  auto cfg = model::ModelInitConfig::Small().ToHfConfig().value();
  auto critic_cfg = cfg;
  critic_cfg.head = model::Head::kTokenClassification;
  auto make = [&](const model::HfConfig& c, uint64_t seed) {
    model::Transformer m(c);
    m->InitWeights(seed);
    m->train();
    return m;
  };
  // Two copies of each model, one per side, from the same seeds.
  auto policy_l = make(cfg, 1), critic_l = make(critic_cfg, 2);
  auto policy_d = make(cfg, 1), critic_d = make(critic_cfg, 2);

  // The minibatch: right-aligned responses after prompts, with per-token fields as the RL update builds them.
  const int64_t t = prompt + response;
  torch::manual_seed(0);
  trainer::MicroBatch full;
  full.ids = torch::randint(3, cfg.vocab_size, {samples, t}, torch::kInt64);
  full.attention_mask = torch::ones({samples, t}, torch::kInt64);
  full.target_mask = torch::zeros({samples, t});
  full.target_mask.slice(1, prompt).fill_(1);
  full.fields["old_logprobs"] = -torch::rand({samples, t}) * 8 - 4;
  full.fields["advantages"] = torch::randn({samples, t});
  full.fields["returns"] = torch::randn({samples, t});
  full.fields["old_values"] = torch::randn({samples, t}) * 0.1;
  std::vector<trainer::MicroBatch> micros;
  for (int64_t i = 0; i < samples; i += micro) {
    std::vector<int64_t> rows;
    for (int64_t r = i; r < std::min(samples, i + micro); ++r) rows.push_back(r);
    micros.push_back(trainer::SelectRows(full, rows));
  }
  const double tokens = static_cast<double>(samples * t);

  // Learner side.
  trainer::OptimConfig oc;
  oc.lr = 1e-6;
  oc.max_grad_norm = 1.0;
  trainer::Learner learner(comm::Group::Single());
  learner.AddModel("policy", policy_l, oc, 1000);
  learner.AddModel("critic", critic_l, oc, 1000);
  trainer::PpoLossConfig lc;
  lc.temperature = 0.9;
  trainer::PpoObjective objective(policy_l, critic_l, lc);
  auto learner_step = [&] {
    auto r = learner.Step(micros, objective);
    if (!r.ok()) {
      std::fprintf(stderr, "learner step failed: %s\n", std::string(r.status().message()).c_str());
      std::exit(1);
    }
  };

  // Direct side.
  torch::optim::AdamW opt_p(policy_d->parameters(), torch::optim::AdamWOptions(1e-6).weight_decay(0));
  torch::optim::AdamW opt_c(critic_d->parameters(), torch::optim::AdamWOptions(1e-6).weight_decay(0));
  auto direct_step = [&] {
    opt_p.zero_grad();
    opt_c.zero_grad();
    const double n = full.target_mask.slice(1, 1).sum().item<double>();
    for (const auto& mb : micros) {
      auto m = mb.target_mask.slice(1, 1);
      auto h = policy_d->Hidden(mb.ids, {mb.attention_mask});
      auto logits = policy_d->Logits(h.slice(1, 0, -1)).to(torch::kFloat32) / lc.temperature;
      auto logp = torch::log_softmax(logits, -1);
      auto lp = logp.gather(-1, mb.ids.slice(1, 1).unsqueeze(-1)).squeeze(-1);
      auto entropy = -(logp.exp() * logp).sum(-1);
      auto old = mb.fields.at("old_logprobs").slice(1, 1), adv = mb.fields.at("advantages").slice(1, 1);
      auto ratio = torch::exp(lp - old);
      auto pg = torch::max(-adv * ratio, -adv * ratio.clamp(0.8, 1.2));
      auto v = critic_d->Scores(critic_d->Hidden(mb.ids, {mb.attention_mask}).slice(1, 0, -1)).squeeze(-1);
      auto ov = mb.fields.at("old_values").slice(1, 1), ret = mb.fields.at("returns").slice(1, 1);
      auto vc = ov + (v - ov).clamp(-0.2, 0.2);
      auto vf = 0.5 * torch::max((v - ret).pow(2), (vc - ret).pow(2));
      auto loss = (pg * m).sum() / n + 0.5 * (vf * m).sum() / n;
      loss.backward();
      (void)(entropy * m).sum().item<double>();
    }
    torch::nn::utils::clip_grad_norm_(policy_d->parameters(), 1.0);
    torch::nn::utils::clip_grad_norm_(critic_d->parameters(), 1.0);
    opt_p.step();
    opt_c.step();
  };

  std::printf("PPO step on the small config: %lld samples x %lld tokens (%lld prompt + %lld response), micro-batch %lld, "
              "policy + critic\n",
              static_cast<long long>(samples), static_cast<long long>(t), static_cast<long long>(prompt),
              static_cast<long long>(response), static_cast<long long>(micro));
  // Each side runs in its own phase (a warm-up step, then `iters` timed ones), learner - direct - learner:
  // switching between the two sets of models right before a timed step makes that step pay for the switch.
  auto phase = [&](auto&& step, double& best) {
    step();
    for (int i = 0; i < iters; ++i) {
      auto a = Clock::now();
      step();
      best = std::min(best, Seconds(a));
    }
  };
  double best_l = 1e30, best_d = 1e30;
  phase(learner_step, best_l);
  phase(direct_step, best_d);
  phase(learner_step, best_l);
  std::printf("  learner (Learner::Step + PpoObjective): %7.3f s  %8.1f tok/s\n", best_l, tokens / best_l);
  std::printf("  direct LibTorch (same passes):          %7.3f s  %8.1f tok/s\n", best_d, tokens / best_d);
  std::printf("  learner overhead: %+.1f%% (target <= 15%%)\n", 100.0 * (best_l / best_d - 1.0));
  return 0;
}
