// rlhf serve rollout: the rollout worker as a gRPC server, until SIGINT or SIGTERM.
#include <spdlog/spdlog.h>

#include <csignal>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <thread>

#include "cli/command.h"
#include "common/metrics.h"
#include "common/model/checkpoint.h"
#include "common/rpc.h"
#include "common/text/tokenizer.h"
#include "rollout/service.h"

namespace rlhf::cli {

namespace {
struct ServeRolloutConfig {
  std::string model;               // model folder to serve
  std::string address = "0.0.0.0:50051";  // host:port to listen on
  int64_t slots = 16;              // sequences decoded together
  int64_t capacity = 1024;         // KV cache length per sequence (prompt + completion)
  int64_t max_new_tokens = 1024;   // the most a request may ask for
  std::string dtype;               // "" = the checkpoint's (measured choice for bf16), float32, bfloat16
  static const config::Section<ServeRolloutConfig>& Spec() {
    static const auto* s = [] {
      using S = ServeRolloutConfig;
      auto* s = new config::Section<S>("rollout");
      s->Add("model", &S::model, "model folder to serve");
      s->Add("address", &S::address, "host:port of the gRPC server");
      s->Add("slots", &S::slots, "sequences decoded together", config::AtLeast(1));
      s->Add("capacity", &S::capacity, "KV cache length per sequence (prompt + completion)", config::AtLeast(2));
      s->Add("max_new_tokens", &S::max_new_tokens, "the most new tokens a request may ask for", config::AtLeast(1));
      s->Add("dtype", &S::dtype, "compute dtype: \"\" = the checkpoint's, float32, bfloat16",
             config::OneOf({"", "float32", "bfloat16", "f32", "bf16"}));
      return s;
    }();
    return *s;
  }
};

std::atomic<bool> g_stop{false};
extern "C" void OnSignal(int) { g_stop.store(true); }
}  // namespace

Command ServeRolloutCommand() {
  Command c;
  c.name = "rollout";
  c.help = "serve a model as a rollout worker (gRPC rlhf.Rollout: Generate, UpdateWeights; rlhf.Health)";
  c.add_sections = [](config::Schema& s) {
    ServeRolloutConfig::Spec().Register(s);
    RpcConfig::Spec().Register(s);
  };
  c.flags = {{"model", "rollout.model", "model folder"}, {"address", "rollout.address", "host:port"}};
  c.body = [](const Context& ctx) -> absl::Status {
    auto cfg = ServeRolloutConfig::Spec().Read(ctx.config);
    auto rpc = RpcConfig::Spec().Read(ctx.config);
    if (cfg.model.empty()) return absl::InvalidArgumentError("give --model DIR");
    ASSIGN_OR_RETURN(auto load, model::LoadOptionsForDtype(cfg.dtype));
    ASSIGN_OR_RETURN(auto net, model::LoadModel(cfg.model, load));
    std::unique_ptr<text::Tokenizer> tok;
    if (auto t = text::Tokenizer::FromFile(cfg.model); t.ok()) tok = std::make_unique<text::Tokenizer>(std::move(*t));
    std::vector<int32_t> eos(net->config().eos_token_ids.begin(), net->config().eos_token_ids.end());
    rollout::RolloutServiceOptions opts;
    opts.generator = {cfg.slots, cfg.capacity, true};
    opts.max_new_tokens = cfg.max_new_tokens;
    rollout::RolloutService svc(net.get(), tok.get(), eos, opts);
    ASSIGN_OR_RETURN(auto server, RpcServer::Start(rpc, {cfg.address, "rollout", [&] { return svc.version(); }}, {&svc}));
    auto& version = Metrics::Process().Gauge("rlhf_policy_version", "weights version held by this process",
                                             {{"role", "rollout"}});
    spdlog::info("rollout worker serving {} on port {} ({} slots, capacity {})", cfg.model, server->port(), cfg.slots,
                 cfg.capacity);
    std::signal(SIGINT, OnSignal);
    std::signal(SIGTERM, OnSignal);
    while (!g_stop.load()) {
      version.Set(static_cast<double>(svc.version()));
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
    spdlog::info("rollout worker: stopping");
    server->Shutdown(std::chrono::milliseconds(5000));
    return absl::OkStatus();
  };
  return c;
}

}  // namespace rlhf::cli
