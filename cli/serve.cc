// The serving roles: rlhf serve rollout (a rollout worker) and rlhf serve scorer (the reward sources and the
// reference model), each a gRPC server until SIGINT or SIGTERM. `rlhf run` serves the same roles by rank.
#include "cli/serve.h"

#include "cli/command.h"

#include <spdlog/spdlog.h>

#include <atomic>
#include <csignal>
#include <thread>

#include "common/metrics.h"
#include "common/rpc.h"
#include "rollout/service.h"
#include "services/scoring/scorer.h"
#include "services/scoring/service.h"

namespace rlhf::cli {

namespace {
std::atomic<bool> g_stop{false};
extern "C" void OnSignal(int) { g_stop.store(true); }

// Until SIGINT or SIGTERM.
void ServeUntilSignal() {
  std::signal(SIGINT, OnSignal);
  std::signal(SIGTERM, OnSignal);
  while (!g_stop.load()) std::this_thread::sleep_for(std::chrono::milliseconds(200));
}
}  // namespace

absl::Status ServeRollout(const config::Config& config, const std::string& model, const std::string& address,
                          const std::function<absl::Status(int port)>& started) {
  auto cfg = rollout::RolloutServerConfig::Spec().Read(config);
  auto rpc = RpcConfig::Spec().Read(config);
  Metrics::Process().SetProcessLabels({{"role", "rollout"}});
  if (model.empty()) return absl::InvalidArgumentError("give --model DIR");
  ASSIGN_OR_RETURN(auto served, rollout::LoadRolloutService(cfg, model));
  auto& svc = *served->service;
  ASSIGN_OR_RETURN(auto server, RpcServer::Start(rpc, {address, "rollout", [&] { return svc.next_version(); }}, {&svc}));
  spdlog::info("rollout worker serving {} on port {} ({} slots, capacity {})", model, server->port(), cfg.slots,
               cfg.capacity);
  if (started) RETURN_IF_ERROR(started(server->port()));
  ServeUntilSignal();
  spdlog::info("rollout worker: stopping");
  server->Shutdown(std::chrono::milliseconds(5000));
  return absl::OkStatus();
}

absl::Status ServeScorer(const config::Config& config, const std::string& address,
                         const std::function<absl::Status(int port)>& started) {
  auto cfg = scoring::ScorerServiceConfig::Spec().Read(config);
  auto rpc = RpcConfig::Spec().Read(config);
  Metrics::Process().SetProcessLabels({{"role", "scorer"}});
  ASSIGN_OR_RETURN(auto scorer, scoring::Scorer::Create(scoring::RewardConfig::Spec().Read(config)));
  std::string sources;
  for (const auto& s : scorer->SourceNames()) sources += (sources.empty() ? "" : ", ") + s;
  const bool has_ref = scorer->has_reference();
  scoring::ScorerService svc(std::move(scorer), cfg);
  ASSIGN_OR_RETURN(auto server, RpcServer::Start(rpc, {address, "scorer", {}}, {&svc}));
  spdlog::info("scorer serving on port {} (sources: {}; reference: {})", server->port(), sources, has_ref ? "yes" : "no");
  if (started) RETURN_IF_ERROR(started(server->port()));
  ServeUntilSignal();
  spdlog::info("scorer: stopping");
  server->Shutdown(std::chrono::milliseconds(5000));
  return absl::OkStatus();
}

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
  c.body = [](const Context& ctx) {
    const auto cfg = rollout::RolloutServerConfig::Spec().Read(ctx.config);
    return ServeRollout(ctx.config, cfg.model, cfg.address, {});
  };
  return c;
}

Command ServeScorerCommand() {
  Command c;
  c.name = "scorer";
  c.help = "serve the reward sources and the reference model (gRPC rlhf.Scorer; rlhf.Health)";
  c.add_sections = [](config::Schema& s) {
    scoring::ScorerServiceConfig::Spec().Register(s);
    scoring::RewardConfig::Spec().Register(s);
    RpcConfig::Spec().Register(s);
  };
  c.takes_run_config = true;
  c.flags = {{"address", "scorer.address", "host:port"}};
  c.body = [](const Context& ctx) {
    return ServeScorer(ctx.config, scoring::ScorerServiceConfig::Spec().Read(ctx.config).address, {});
  };
  return c;
}

}  // namespace rlhf::cli
