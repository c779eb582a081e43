// What the stages of `rlhf train` share (trainer/pipeline only): the pipeline's state, loading and saving
// models, datasets and their tokens, checkpoints, the offline step loop, reference log-probs, and the
// online stage's driver. Each stage family's run function lives in its own file (stages.h lists them).
//
// Dimension key: N rows, T tokens of a row.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/comm/group.h"
#include "common/data/dataset.h"
#include "common/model/transformer.h"
#include "common/text/model_text.h"
#include "rlhf/sample.pb.h"
#include "trainer/batching.h"
#include "trainer/learner.h"
#include "trainer/memory_estimate.h"
#include "trainer/objectives.h"
#include "trainer/pipeline/configs.h"
#include "trainer/pipeline/metrics_log.h"
#include "trainer/train_checkpoint.h"

namespace rlhf::scoring {
struct RewardConfig;
}

namespace rlhf::trainer {

// ---- the pipeline's state -----------------------------------------------------------------------------------
struct Pipeline {
  const config::Config* config = nullptr;
  std::string run_dir;
  uint64_t seed = 0;
  TrainConfig train;
  std::shared_ptr<comm::Group> group;
  int64_t bucket_bytes = 25 << 20;
  MetricsLog log;
  std::string policy;        // newest policy folder
  std::string reward_model;  // newest reward model folder
  std::string tokenizer_dir; // folder with tokenizer files
  std::optional<TrainState> resume;  // the checkpoint state when this stage resumes
  std::string resume_dir;
  std::string serve_learner_address;  // `rlhf serve learner`: online stages serve rlhf.Learner here
  std::vector<std::string> other_processes;  // processes.json entries the step loop does not reach (JSON)
  // The stage's own last held-out evaluation (e.g. SFT's greedy accuracy), set by a stage that makes one;
  // the pipeline takes it into summary.json's stage record and clears it.
  nlohmann::json stage_eval;
  double peak_estimate = 0;  // the largest memory estimate of a stage so far (CheckMemory), bytes
  bool rank0() const { return group->rank() == 0; }
};

// <run>/<index>-<stage>: the stage's outputs.
std::string StageDir(const Pipeline& p, int64_t index, const std::string& stage);

// Fault-injection seam for the resume tests: RLHF_FAULT_KILL_AFTER_CHECKPOINT=<step> kills this process
// (SIGKILL, no cleanup) right after the checkpoint of that step is committed.
void MaybeKillAfterCheckpoint(int64_t step);
// Fault-injection seam for the membership tests: with RLHF_FAULT_PAUSE_DIR set and the version listed in
// RLHF_FAULT_PAUSE_BEFORE_SYNC (comma-separated), the step loop creates <dir>/paused-<version> before the
// workers take that version and waits (at most 120 s) for <dir>/resume-<version>, so that a test acts on a
// worker at that exact point.
void MaybePauseBeforeSync(int64_t version);
// Fault-injection seam for the asynchronous tests and benchmark: RLHF_FAULT_SLOW_TRAIN=<seconds> makes the
// learner wait that long before each step (a slow learner).
void MaybeSlowTrain();
// A checkpoint of every model of `learner` with `state` (a collective: every rank calls it).
absl::Status Checkpoint(Pipeline& p, Learner& learner, TrainState state);

// ---- memory ---------------------------------------------------------------------------------------------------
// Before a stage loads its models: one line with the memory it will need (trainer/memory_estimate.h) for the
// model in `model_dir`; RESOURCE_EXHAUSTED naming the parts and the keys to lower when the estimate is above
// train.memory_limit_gb (0: the machine's physical memory), a warning when above the memory available now.
absl::Status CheckMemory(Pipeline& p, const std::string& stage, const std::string& model_dir, const MemoryPlan& plan);

// ---- models -------------------------------------------------------------------------------------------------
// A model to train: f32 master weights, `head` replaced when given (initialised from `seed`).
absl::StatusOr<model::Transformer> LoadForTraining(const std::string& dir, std::optional<model::Head> head, uint64_t seed);
// A frozen model (reference): f32, no gradients, eval mode.
absl::StatusOr<model::Transformer> LoadFrozen(const std::string& dir);
// Rank 0 saves `net` to `dir` with the pipeline's tokenizer files; every rank waits for it.
absl::Status SaveStageModel(Pipeline& p, model::TransformerImpl& net, const std::string& dir);

// ---- data ---------------------------------------------------------------------------------------------------
// Loads a dataset of one of `kinds` (INVALID_ARGUMENT naming the stage otherwise).
absl::StatusOr<data::Dataset> LoadData(const data::DataConfig& dc, const std::string& stage,
                                       std::initializer_list<data::Kind> kinds);
// Prompt + `field` of the examples at `idx` as token rows (completion-only targets), cut at max_length.
std::vector<TokenSeq> Tokenize(const data::Dataset& ds, const std::vector<size_t>& idx, const text::ModelText& t,
                               int64_t max_length, data::ojson data::Example::*field, absl::Status* status);
// Pairs (prompt + chosen, prompt + rejected) as rows: chosen rows first, then rejected rows.
MicroBatch PairRows(const std::vector<const TokenSeq*>& chosen, const std::vector<const TokenSeq*>& rejected, int32_t pad);

// ---- the offline loop (sft, reward_model, the preference stages) ---------------------------------------------
struct OfflineTask {
  std::string stage;
  int64_t stage_index = 0;
  OfflineConfig cfg;
  int64_t n_train = 0;  // examples in the training split
  // Micro-batches of this rank for the examples at these positions of the epoch's order.
  std::function<absl::StatusOr<std::vector<MicroBatch>>(const std::vector<size_t>&)> micro;
  std::function<std::vector<size_t>(int64_t epoch)> order;
  std::function<absl::StatusOr<std::map<std::string, double>>()> evaluate;  // held-out metrics
  // Held-out greedy accuracy, the same figure on every rank (collective), measured with `evaluate` and
  // logged as eval/accuracy; empty = not measured. With it, the stage may stop early (sft.target_*):
  std::function<absl::StatusOr<double>()> accuracy;
  double target_accuracy = 0;  // stop once the accuracy reaches this; 0 = off
  int64_t patience = 0;        // stop once it has not improved on its best for this many evaluations; 0 = off
  Objective* objective = nullptr;
};
// Optimizer steps over the epochs (or max_steps), with held-out evaluation, progress lines, the metrics log
// and checkpoints; resumes from p.resume.
absl::Status RunOffline(Pipeline& p, Learner& learner, OfflineTask& task);

// ---- reference log-probs --------------------------------------------------------------------------------------
// Summed completion log-probs of `seqs` under `net`, without gradient, `micro` rows per forward.
std::vector<float> SequenceLogProbs(model::TransformerImpl& net, const std::vector<const TokenSeq*>& seqs, int64_t micro,
                                    int32_t pad);
// Reference log-probs of `seqs`: from <stage dir>/reference_logprobs.safetensors when it was made for the
// same reference and rows, else computed with `reference` (loaded from ref_dir when empty; rank 0 writes
// the cache when `cache`).
absl::StatusOr<std::vector<float>> ReferenceLogProbs(Pipeline& p, int64_t index, const std::string& stage,
                                                     const std::string& ref_dir, model::Transformer reference, bool cache,
                                                     const std::vector<const TokenSeq*>& seqs, int64_t micro, int32_t pad);

// ---- online stages ----------------------------------------------------------------------------------------------
// The training prompts of an online stage (rl.data) and about how many policy steps they make (fewer when
// groups are filtered), bounded by rl.steps.
struct OnlinePrompts {
  data::Dataset data;
  int64_t total_steps = 0;
};
absl::StatusOr<OnlinePrompts> LoadOnlinePrompts(const RlStageConfig& sc, const data::DataConfig& dc);

// What an online stage's learner does with each batch: the step on this rank's groups, and the stage's own
// state that a checkpoint keeps (the KL coefficient of PPO / GRPO).
struct OnlineTrainer {
  // Refuses a whole batch that `step` could not use (trainer::CheckSamples), before any rank starts on it.
  std::function<absl::Status(const std::vector<Sample>&)> check;
  std::function<absl::StatusOr<std::map<std::string, double>>(const std::vector<Sample>&, uint64_t)> step;
  std::function<void(nlohmann::json&)> save = [](nlohmann::json&) {};
  std::function<void(const nlohmann::json&)> restore = [](const nlohmann::json&) {};
  std::function<absl::StatusOr<std::string>()> finish;  // saves the stage's models; the policy folder
};

// An online stage: its prompts, its sampling, its text side, and (null `policy` and `learner` when another
// process learns) its learner.
struct OnlineStage {
  std::string stage;
  int64_t index = 0;
  RlStageConfig sc;
  int64_t group_size = 1;
  bool filter_equal = false;          // the stage needs groups with different rewards (online DPO)
  const data::Dataset* data = nullptr;
  int64_t total = 0;                  // about how many policy steps
  std::string start;                  // the starting policy folder (an embedded rollout worker starts from it)
  const text::ModelText* tools = nullptr;
  model::TransformerImpl* policy = nullptr;  // the learner's policy (its weights go to the rollout workers)
  Learner* learner = nullptr;
  OnlineTrainer trainer;
};

// The reward.* keys for an embedded scorer of the pipeline: the reward model of an earlier reward_model
// stage, and step ends placed on the policy's tokens, unless the config names others.
scoring::RewardConfig PipelineReward(const Pipeline& p);

// With roles.learner_address, this process coordinates an online stage and another one learns.
bool LearnsElsewhere(const Pipeline& p);
// Runs an online stage: `rlhf serve learner` serves its learner; otherwise the step loop
// (services/coordinator/step_loop.h) runs on rank 0 against the learner, served in this process (the other
// ranks follow it) or, with roles.learner_address, in another one.
absl::Status RunOnlineStage(Pipeline& p, OnlineStage& s);

// ---- stage families (stages.h) ----------------------------------------------------------------------------------
absl::Status RunSft(Pipeline& p, int64_t index, const std::string& stage);
absl::Status RunPreference(Pipeline& p, int64_t index, const std::string& stage);  // reward_model and the DPO family
absl::Status RunRl(Pipeline& p, int64_t index, const std::string& stage);          // ppo, grpo
absl::Status RunOnlinePreference(Pipeline& p, int64_t index, const std::string& stage);  // online_dpo, rft

// ---- evaluation of the pipeline's policies -------------------------------------------------------------------
// With eval.data.path set: the policy evaluated on an embedded rollout worker and scorer, into
// <run>/evals.json under `name` (rank 0; the others wait).
absl::Status EvaluatePolicy(Pipeline& p, const std::string& name);

}  // namespace rlhf::trainer
