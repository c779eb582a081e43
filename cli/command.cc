#include "cli/command.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>

#include "common/file.h"
#include "trainer/pipeline/pipeline.h"
#include "common/comm/group.h"
#include "common/logging.h"
#include "common/metrics.h"
#include "common/runtime.h"

namespace rlhf::cli {

namespace fs = std::filesystem;

const config::Section<RunConfig>& RunConfig::Spec() {
  static const auto* s = [] {
    auto* s = new config::Section<RunConfig>("run");
    s->Add("dir", &RunConfig::dir, "run directory (resolved config, log, outputs); \"\" = runs/<command>-<UTC time>");
    s->Add("log_level", &RunConfig::log_level, "trace, debug, info, warn, error or off (RLHF_LOG_LEVEL overrides)",
           config::OneOf({"trace", "debug", "info", "warn", "error", "off"}));
    s->Add("threads", &RunConfig::threads, "LibTorch intra-op threads; 0 = all cores", config::AtLeast(0));
    s->Add("seed", &RunConfig::seed, "seed of every random stream of the run", config::AtLeast(0));
    return s;
  }();
  return *s;
}

namespace {

std::string DefaultRunDir(const std::string& command) {
  auto now = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
  std::tm tm{};
  gmtime_r(&now, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y%m%d-%H%M%S", &tm);
  return (fs::path("runs") / (command + "-" + buf)).string();
}

absl::Status Execute(const Command& cmd, const std::string& label, const std::string& file,
                     const std::vector<std::string>& overrides) {
  config::Schema schema;
  RunConfig::Spec().Register(schema);
  MetricsConfig::Spec().Register(schema);
  if (cmd.add_sections) cmd.add_sections(schema);
  if (cmd.takes_run_config) trainer::RegisterTrainKeys(schema);
  ASSIGN_OR_RETURN(auto cfg, config::Config::Load(schema, file, overrides));
  Context ctx{label, cfg, RunConfig::Spec().Read(cfg), ""};
  const bool bare = cmd.quiet_tool && ctx.run.dir.empty();  // no run directory, logs at warn by default
  InitLogging(cmd.quiet_tool && ctx.run.log_level == RunConfig{}.log_level ? "warn" : ctx.run.log_level);
  if (bare) {
    ConfigureRuntime(static_cast<int>(ctx.run.threads));
    return GuardExceptions(label, [&] { return cmd.body(ctx); });
  }
  std::string dir_name = label;
  std::replace(dir_name.begin(), dir_name.end(), ' ', '-');
  ctx.run_dir = ctx.run.dir.empty() ? DefaultRunDir(dir_name) : ctx.run.dir;
  const char* supervised = std::getenv("RLHF_SUPERVISED");
  if (cmd.supervise && (supervised == nullptr || std::string(supervised) != "1")) return cmd.supervise(ctx);
  std::error_code ec;
  fs::create_directories(ctx.run_dir, ec);
  if (ec) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot create run directory '", ctx.run_dir, "': ", ec.message(), "; set run.dir"));
  }
  // Under mpirun / torchrun every rank shares the run directory: rank 0 owns log.txt and config.yaml. A role
  // of `rlhf run` logs under its role's name (learner 0 owns log.txt).
  auto world = comm::DetectWorld(comm::DistConfig{});
  const int world_rank = world.ok() ? world->rank : 0;
  bool owner = world_rank == 0;  // writes log.txt and config.yaml
  std::string log_name = absl::StrCat("log-rank", world_rank, ".txt");
  if (const char* role = std::getenv("RLHF_ROLE"); role != nullptr && supervised != nullptr) {
    const char* index = std::getenv("RLHF_ROLE_INDEX");
    const std::string name = absl::StrCat(role, index ? index : "0");
    owner = name == "learner0";
    log_name = absl::StrCat("log-", name, ".txt");
  }
  RETURN_IF_ERROR(AddLogFile((fs::path(ctx.run_dir) / (owner ? "log.txt" : log_name)).string()));
  const char* run_rank = std::getenv("RLHF_RUN_RANK");
  Metrics::Process().SetProcessLabels({{"rank", run_rank != nullptr ? run_rank : std::to_string(world_rank)}});
  // Every process exports at least this (with its role and rank labels), so that each one is seen scraped.
  Metrics::Process()
      .Gauge("rlhf_process_start_time_seconds", "when this process started (Unix time)")
      .Set(std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count());
  const std::string resolved = cfg.ToYaml();
  if (owner) {
    RETURN_IF_ERROR(WriteFileAtomic((fs::path(ctx.run_dir) / "config.yaml").string(),
                                    absl::StrCat("# resolved config of `rlhf ", label, "`\n", resolved)));
  }
  spdlog::info("rlhf {}: run dir {}; resolved config:\n{}", label, ctx.run_dir, resolved);
  ConfigureRuntime(static_cast<int>(ctx.run.threads));
  auto metrics = MetricsConfig::Spec().Read(cfg);
  ASSIGN_OR_RETURN(int port, Metrics::Process().Serve(metrics));
  if (port != 0) spdlog::info("metrics on http://{}:{}/metrics", metrics.bind, port);
  return GuardExceptions(label, [&] { return cmd.body(ctx); });
}

}  // namespace

CLI::App* AddCommand(CLI::App& app, const Command& cmd, int* exit_code) {
  CLI::App* sub = app.add_subcommand(cmd.name, cmd.help);
  // "data check" for subcommands of a command group, "init-model" at the top level.
  const std::string label = app.get_parent() != nullptr ? app.get_name() + " " + cmd.name : cmd.name;
  struct State {
    std::string file, run_dir;
    std::vector<std::string> sets;
    std::vector<std::string> flag_values;
  };
  auto st = std::make_shared<State>();
  st->flag_values.resize(cmd.flags.size());
  sub->add_option("--config", st->file, "YAML config file");
  sub->add_option("--set", st->sets, "override a config key: key=value (repeatable)");
  sub->add_option("--run-dir", st->run_dir, "run directory (same as --set run.dir=DIR)");
  auto switch_values = std::make_shared<std::vector<char>>(cmd.flags.size(), 0);
  for (size_t i = 0; i < cmd.flags.size(); ++i) {
    const auto& f = cmd.flags[i];
    std::string help = f.help + " [" + f.key + "]";
    if (f.is_switch) {
      sub->add_flag_callback("--" + f.flag, [switch_values, i] { (*switch_values)[i] = 1; }, help);
    } else {
      sub->add_option("--" + f.flag, st->flag_values[i], help);
    }
  }
  sub->callback([cmd, label, st, switch_values, exit_code] {
    std::vector<std::string> overrides;
    for (size_t i = 0; i < cmd.flags.size(); ++i) {
      if (cmd.flags[i].is_switch) {
        if ((*switch_values)[i]) overrides.push_back(cmd.flags[i].key + "=" + cmd.flags[i].switch_value);
      } else if (!st->flag_values[i].empty()) {
        const std::string& v = st->flag_values[i];
        std::string value = v;
        if (cmd.flags[i].is_string_list) {
          value = "[";
          size_t start = 0;
          while (start <= v.size()) {
            size_t end = v.find(';', start);
            if (end == std::string::npos) end = v.size();
            std::string item = v.substr(start, end - start);
            if (!item.empty()) value += (value.size() > 1 ? ", \"" : "\"") + item + "\"";
            start = end + 1;
          }
          value += "]";
        } else if (cmd.flags[i].is_list && v.front() != '[') {
          value = "[" + v + "]";
        }
        overrides.push_back(cmd.flags[i].key + "=" + value);
      }
    }
    if (!st->run_dir.empty()) overrides.push_back("run.dir=" + st->run_dir);
    overrides.insert(overrides.end(), st->sets.begin(), st->sets.end());  // --set wins over flags
    absl::Status s = Execute(cmd, label, st->file, overrides);
    if (!s.ok()) {
      std::cerr << "rlhf " << label << ": error: " << s.message() << std::endl;
      *exit_code = s.code() == absl::StatusCode::kInvalidArgument ? 2 : 1;
    } else {
      *exit_code = 0;
    }
  });
  return sub;
}

std::vector<Command> AllCommands() { return {InitModelCommand(), LogitsCommand(),   TokenizeCommand(),
          TrainTokenizerCommand(), GenerateCommand(), GridWorldCommand(), TrainCommand(), RunCommand(), ScoreCommand(),
          EvalCommand(), ConstitutionalCommand()};
}

std::vector<Command> DataCommands() { return {DataCheckCommand()}; }

std::vector<Command> ServeCommands() { return {ServeRolloutCommand(), ServeScorerCommand(), ServeLearnerCommand()}; }

}  // namespace rlhf::cli
