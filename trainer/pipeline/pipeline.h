// `rlhf train`: a pipeline of training stages in one config (e.g. sft -> reward_model -> ppo), each stage
// reading the previous stage's output checkpoint, on one rank or many (mpirun / env bootstrap), with
// checkpoints, exact resume and a metrics log. The stages are listed in trainer/pipeline/stages.h.
// Run directory: config.yaml, log.txt, metrics.jsonl (one line per step, trainer/pipeline/metrics_log.h),
// checkpoints/ (trainer/train_checkpoint.h), evals.json and summary.json, and <index>-<stage>/ with each
// stage's output HF model folder(s).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "common/config/config.h"
#include "common/status.h"

namespace rlhf::comm {
class Group;
}

namespace rlhf::trainer {

// Declares every key `rlhf train` reads.
void RegisterTrainKeys(config::Schema& schema);

// Where the pipeline runs, beyond its config.
struct TrainingOptions {
  // `rlhf serve learner`: online stages serve rlhf.Learner here for a coordinator (`rlhf train` with
  // roles.learner_address) instead of running their step loop (trainer/pipeline/learner_service.h).
  std::string serve_learner_address;
  // The learner's data-parallel group when the caller formed it (`rlhf run`); null = from the dist.* keys.
  std::shared_ptr<comm::Group> group;
  // Processes of the run the step loop does not reach itself (learner ranks above 0 under `rlhf run`), as
  // JSON objects for processes.json.
  std::vector<std::string> other_processes;
};

// Runs the configured pipeline. `seed`: the run seed (run.seed).
absl::Status RunTraining(const config::Config& config, const std::string& run_dir, uint64_t seed,
                         const TrainingOptions& options = {});

}  // namespace rlhf::trainer
