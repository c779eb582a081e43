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
std::atomic<bool> g_stop{false};
extern "C" void OnSignal(int) { g_stop.store(true); }
}  // namespace

Command ServeRolloutCommand() {
  Command c;
  c.name = "rollout";
  c.help = "serve a model as a rollout worker (gRPC rlhf.Rollout: Generate, UpdateWeights; rlhf.Health)";
  c.add_sections = [](config::Schema& s) {
    rollout::RolloutServerConfig::Spec().Register(s);
    RpcConfig::Spec().Register(s);
  };
  c.takes_run_config = true;
  c.flags = {{"model", "rollout.model", "model folder"}, {"address", "rollout.address", "host:port"}};
  c.body = [](const Context& ctx) -> absl::Status {
    auto cfg = rollout::RolloutServerConfig::Spec().Read(ctx.config);
    auto rpc = RpcConfig::Spec().Read(ctx.config);
    if (cfg.model.empty()) return absl::InvalidArgumentError("give --model DIR");
    ASSIGN_OR_RETURN(auto served, rollout::LoadRolloutService(cfg, cfg.model));
    auto& svc = *served->service;
    ASSIGN_OR_RETURN(auto server, RpcServer::Start(rpc, {cfg.address, "rollout", [&] { return svc.next_version(); }}, {&svc}));
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
