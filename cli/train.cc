// rlhf train: the training pipeline (trainer/pipeline/pipeline.h) as a command; rlhf serve learner: the same pipeline
// whose online stages serve rlhf.Learner for a coordinator process.
#include "cli/command.h"
#include "absl/strings/str_join.h"
#include "common/comm/group.h"
#include "common/metrics.h"
#include "trainer/pipeline/pipeline.h"
#include "trainer/pipeline/stages.h"

namespace rlhf::cli {

namespace {

struct ServeLearnerConfig {
  std::string address = "127.0.0.1:0";
  static const config::Section<ServeLearnerConfig>& Spec() {
    static const auto* s = [] {
      auto* s = new config::Section<ServeLearnerConfig>("learner");
      s->Add("address", &ServeLearnerConfig::address,
             "host:port where `rlhf serve learner` serves the online stage (rlhf.Learner) on rank 0");
      return s;
    }();
    return *s;
  }
};

std::vector<Command::Flag> PipelineFlags() {
  return {{"model", "train.model", "starting policy folder"},
          {"stages", "train.stages", "stages separated by ';', e.g. sft;reward_model", false, false, true},
          {"seed", "run.seed", "run seed"},
          {"resume", "train.resume", "continue the run directory from its newest checkpoint", true}};
}

}  // namespace

Command TrainCommand() {
  Command c;
  c.name = "train";
  c.help = "run a pipeline of training stages (" + absl::StrJoin(trainer::StageNames(), ", ") + ") on one or many ranks";
  c.add_sections = [](config::Schema& s) { trainer::RegisterTrainKeys(s); };
  c.flags = PipelineFlags();
  c.body = [](const Context& ctx) {
    auto world = comm::DetectWorld(comm::DistConfig::Spec().Read(ctx.config));
    Metrics::Process().SetProcessLabels({{"role", world.ok() && world->rank > 0 ? "learner" : "coordinator+learner"}});
    return trainer::RunTraining(ctx.config, ctx.run_dir, static_cast<uint64_t>(ctx.run.seed));
  };
  return c;
}

Command ServeLearnerCommand() {
  Command c;
  c.name = "learner";
  c.help = "run a training pipeline whose online stages serve rlhf.Learner to a coordinator (rlhf train with "
           "roles.learner_address); offline stages run here as in rlhf train";
  c.add_sections = [](config::Schema& s) {
    trainer::RegisterTrainKeys(s);
    ServeLearnerConfig::Spec().Register(s);
  };
  c.keys_of = "train";
  c.own_sections = [](config::Schema& s) { ServeLearnerConfig::Spec().Register(s); };
  c.flags = PipelineFlags();
  c.flags.push_back({"address", "learner.address", "host:port"});
  c.body = [](const Context& ctx) {
    const auto cfg = ServeLearnerConfig::Spec().Read(ctx.config);
    Metrics::Process().SetProcessLabels({{"role", "learner"}});
    trainer::TrainingOptions o;
    o.serve_learner_address = cfg.address;
    return trainer::RunTraining(ctx.config, ctx.run_dir, static_cast<uint64_t>(ctx.run.seed), o);
  };
  return c;
}

}  // namespace rlhf::cli
