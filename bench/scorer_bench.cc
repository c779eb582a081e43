// Samples per second scored by the reward model and by the reference model on the "small" config (hidden
// 768, 12 layers, vocab 32000) at batch 32, three ways on the same samples:
//   raw      the forward pass written directly (Hidden + SequenceScores / TokenLogProbs on one [32, T] batch)
//   scorer   Scorer::Score in process (validation, batching by tokens, composition)
//   service  rlhf.Scorer over gRPC on loopback (one client, 32 samples per request)
// Service overhead = service time / raw time - 1 (target: at most 15%). Best of --iters.
//
//   bench/scorer_bench [--batch 32] [--prompt 32] [--response 64] [--iters 2] [--threads 0]
#include <CLI/CLI.hpp>
#include <torch/torch.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>

#include "bench/timing.h"
#include "common/logging.h"
#include "common/model/checkpoint.h"
#include "common/model/init.h"
#include "common/rpc.h"
#include "common/runtime.h"
#include "rlhf/scoring.grpc.pb.h"
#include "services/scoring/scorer.h"
#include "services/scoring/service.h"

using namespace rlhf;
using bench::BestOf;
using bench::Clock;
using bench::Seconds;
namespace fs = std::filesystem;


int main(int argc, char** argv) {
  PrepareProcess(argc, argv);
  CLI::App app{"scorer throughput: raw forward vs Scorer vs gRPC service"};
  int64_t batch = 32, prompt = 32, response = 64, threads = 0;
  int iters = 2;
  app.add_option("--batch", batch, "samples per request / forward");
  app.add_option("--prompt", prompt, "prompt tokens per sample");
  app.add_option("--response", response, "completion tokens per sample");
  app.add_option("--iters", iters, "timed iterations (best is reported)");
  app.add_option("--threads", threads, "LibTorch threads; 0 = all cores");
  CLI11_PARSE(app, argc, argv);
  InitLogging("warn");
  ConfigureRuntime(static_cast<int>(threads));
  bench::PrintMachine();

  // Small-config reward model and reference policy as HF folders (random weights).
  const std::string dir = (fs::temp_directory_path() / ("scorer-bench-" + std::to_string(getpid()))).string();
  auto cfg = model::ModelInitConfig::Small().ToHfConfig().value();
  {
    model::Transformer ref(cfg);
    ref->InitWeights(1);
    auto rc = cfg;
    rc.head = model::Head::kSequenceClassification;
    model::Transformer rm(rc);
    rm->InitWeights(2);
    if (!model::SaveModel(*ref, dir + "/ref").ok() || !model::SaveModel(*rm, dir + "/rm").ok()) return 1;
  }
  torch::manual_seed(0);
  std::vector<Sample> samples(static_cast<size_t>(batch));
  auto ids = torch::randint(3, cfg.vocab_size, {batch, prompt + response}, torch::kInt64);
  for (int64_t i = 0; i < batch; ++i) {
    auto& s = samples[static_cast<size_t>(i)];
    s.set_prompt_id("p" + std::to_string(i));
    for (int64_t t = 0; t < prompt; ++t) s.add_prompt_ids(static_cast<int32_t>(ids[i][t].item<int64_t>()));
    for (int64_t t = prompt; t < prompt + response; ++t) {
      s.add_completion_ids(static_cast<int32_t>(ids[i][t].item<int64_t>()));
      s.add_logprobs(-3.f);
    }
    s.set_temperature(1.0f);
  }
  const int64_t budget = batch * (prompt + response);
  std::printf("small config, batch %lld, %lld + %lld tokens per sample\n", static_cast<long long>(batch),
              static_cast<long long>(prompt), static_cast<long long>(response));
  std::printf("%-16s %12s %12s %12s %10s\n", "model", "raw smp/s", "scorer smp/s", "service smp/s", "overhead");

  for (const std::string which : {"reward_model", "reference"}) {
    scoring::RewardConfig rc;
    rc.batch_tokens = budget;
    const bool rm = which == "reward_model";
    if (rm) {
      rc.reward_model_weight = 1, rc.reward_model = dir + "/rm";
    } else {
      rc.missing_eos_weight = 1, rc.reference_model = dir + "/ref";
    }
    auto scorer = scoring::Scorer::Create(rc);
    if (!scorer.ok()) {
      std::fprintf(stderr, "%s\n", std::string(scorer.status().message()).c_str());
      return 1;
    }
    // Raw: the model of the scorer itself, one forward on the padded batch.
    model::LoadOptions lo;
    if (rm) lo.head = model::Head::kSequenceClassification;
    auto net = model::LoadModel(dir + (rm ? "/rm" : "/ref"), lo).value();
    const double raw = BestOf(iters, [&] {
      torch::NoGradGuard ng;
      auto h = net->Hidden(ids);
      if (rm) {
        (void)net->SequenceScores(h).sum().item<float>();
      } else {
        (void)net->TokenLogProbs(h.slice(1, 0, -1), ids.slice(1, 1), 1.0).logprobs.sum().item<float>();
      }
    });
    const double in_proc = BestOf(iters, [&] {
      auto v = samples;
      auto out = (*scorer)->Score(v, !rm);
      if (!out.ok()) std::exit(1);
    });
    scoring::ScorerServiceConfig sc;
    sc.max_batch_tokens = budget;
    sc.max_wait_ms = 1;
    scoring::ScorerService svc(std::move(*scorer), sc);
    RpcConfig rpc;
    rpc.deadline_seconds = 600;
    auto server = RpcServer::Start(rpc, {"127.0.0.1:0", "scorer", nullptr}, {&svc}).value();
    auto stub = ::rlhf::Scorer::NewStub(MakeChannel(rpc, "127.0.0.1:" + std::to_string(server->port())).value());
    ScoreRequest req;
    req.set_want_ref_logprobs(!rm);
    for (const auto& s : samples) *req.add_samples() = s;
    const double service = BestOf(iters, [&] {
      grpc::ClientContext ctx;
      SetDeadline(&ctx, rpc);
      ScoreReply reply;
      auto st = stub->Score(&ctx, req, &reply);
      if (!st.ok() || reply.results_size() != batch) {
        std::fprintf(stderr, "service call failed: %s\n", st.error_message().c_str());
        std::exit(1);
      }
    });
    server->Shutdown();
    std::printf("%-16s %12.2f %12.2f %12.2f %+9.1f%%\n", which.c_str(), batch / raw, batch / in_proc, batch / service,
                100.0 * (service / raw - 1.0));
  }
  fs::remove_all(dir);
  std::printf("target: service overhead at most 15%%\n");
  return 0;
}
