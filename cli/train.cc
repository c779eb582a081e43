// rlhf train: the training pipeline (trainer/train.h) as a command.
#include "cli/command.h"
#include "trainer/train.h"

namespace rlhf::cli {

Command TrainCommand() {
  Command c;
  c.name = "train";
  c.help = "run a pipeline of training stages (sft, reward_model, dpo, ppo, grpo) on one or many ranks";
  c.add_sections = [](config::Schema& s) { trainer::RegisterTrainKeys(s); };
  c.flags = {{"model", "train.model", "starting policy folder"},
             {"stages", "train.stages", "stages separated by ';', e.g. sft;reward_model", false, false, true},
             {"seed", "run.seed", "run seed"},
             {"resume", "train.resume", "continue the run directory from its newest checkpoint", true}};
  c.body = [](const Context& ctx) {
    return trainer::RunTraining(ctx.config, ctx.run_dir, static_cast<uint64_t>(ctx.run.seed));
  };
  return c;
}

}  // namespace rlhf::cli
