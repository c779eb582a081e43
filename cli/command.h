// What every `rlhf` command shares: --config FILE, --set key=value, --run-dir DIR; the resolved config
// is validated, logged and saved to the run directory; failures print one line and exit non-zero.
#pragma once

#include <CLI/CLI.hpp>

#include <functional>
#include <string>
#include <vector>

#include "common/config/config.h"
#include "common/status.h"

namespace rlhf::model {
struct HfConfig;
}
namespace rlhf::text {
class Tokenizer;
}

namespace rlhf::cli {

struct RunConfig {
  std::string dir;                // run directory; "" = runs/<command>-<UTC time>
  std::string log_level = "info"; // trace | debug | info | warn | error | off (RLHF_LOG_LEVEL wins)
  int64_t threads = 0;            // LibTorch intra-op threads; 0 = all cores
  int64_t seed = 0;               // seed of every random stream of the run
  static const config::Section<RunConfig>& Spec();
};

struct Context {
  std::string command;
  config::Config config;
  RunConfig run;
  std::string run_dir;  // resolved, created
};

// A command: `add_sections` declares the config keys it reads; `flags` are convenience options that become
// overrides ("--hidden-size 64" -> "model.hidden_size=64"); `body` does the work.
struct Command {
  std::string name;
  std::string help;
  std::function<void(config::Schema&)> add_sections;
  // For a command that reads another command's keys: `rlhf config-keys` documents only `own_sections`
  // and names the other command (`keys_of`) for the rest.
  std::string keys_of;
  std::function<void(config::Schema&)> own_sections;
  // A role of a run (serve rollout, serve scorer): it takes the run's one config file, accepting every key
  // of `rlhf train` (a misspelt key is still refused by name) and reading only `own_sections`.
  bool takes_run_config = false;
  // A quick tool whose output is its answer (tokenize): it logs at warn unless run.log_level says otherwise,
  // and makes no run directory (no log file, no config.yaml) unless run.dir is given.
  bool quiet_tool = false;
  // flag name (without --), config key, help
  struct Flag {
    std::string flag, key, help;
    bool is_switch = false;  // a switch sets the key to true
    bool is_list = false;    // "1,2,3" becomes the YAML list [1,2,3]
    bool is_string_list = false;  // "a;b" becomes the YAML list of strings ["a", "b"]
    std::string switch_value = "true";  // what a switch sets the key to
  };
  std::vector<Flag> flags;
  std::function<absl::Status(const Context&)> body;
  // A command whose process supervises a child that runs `body` (`rlhf run`): called instead of `body`,
  // after the config is read and before any log file, metrics port or run directory is opened, unless this
  // process is the child (RLHF_SUPERVISED=1). `ctx.run_dir` is resolved but not created.
  std::function<absl::Status(const Context&)> supervise;
};

// Registers `cmd` as a subcommand of `app`. Returns the subcommand.
CLI::App* AddCommand(CLI::App& app, const Command& cmd, int* exit_code);

// Every top-level command of the binary (for `rlhf config-keys`), and the `rlhf data` subcommands.
std::vector<Command> AllCommands();
std::vector<Command> DataCommands();
std::vector<Command> ServeCommands();

// The commands, each in its own file.
Command InitModelCommand();
Command LogitsCommand();
Command GridWorldCommand();
Command TokenizeCommand();
Command TrainTokenizerCommand();
Command GenerateCommand();
Command DataCheckCommand();  // `rlhf data check`
Command ServeRolloutCommand();  // `rlhf serve rollout`
Command TrainCommand();
Command ScoreCommand();        // `rlhf score`
Command ServeScorerCommand();  // `rlhf serve scorer`
Command ServeLearnerCommand();  // `rlhf serve learner` (train.cc)
Command EvalCommand();         // `rlhf eval`
Command ConstitutionalCommand();  // `rlhf constitutional`
Command RunCommand();            // `rlhf run` (run.cc)


}  // namespace rlhf::cli
