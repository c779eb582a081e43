// `rlhf train`: the stage table, the keys, and the pipeline that runs the stages in order with
// evaluations between them, checkpoints and exact resume.
#include "trainer/pipeline/pipeline.h"

#include <spdlog/spdlog.h>

#include <chrono>
#include <filesystem>
#include <limits>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/comm/group.h"
#include "common/file.h"
#include "services/coordinator/eval.h"
#include "services/coordinator/learnability.h"
#include "services/coordinator/roles.h"
#include "services/scoring/scorer.h"
#include "services/scoring/sources.h"
#include "trainer/pipeline/stage.h"
#include "trainer/pipeline/stages.h"

namespace rlhf::trainer {

namespace fs = std::filesystem;
using json = nlohmann::json;

// ---- the stage table ------------------------------------------------------------------------------------------
namespace {

void OfflineKeys(const std::string& name, config::Schema& schema, void (*own)(const std::string&, config::Schema&)) {
  own(name, schema);
  DataSection(name).Register(schema);
  OptimSection(name + ".optim").Register(schema);
}
void SftKeys(const std::string& name, config::Schema& schema) {
  OfflineKeys(name, schema, [](const std::string&, config::Schema& s) { SftConfig::Spec().Register(s); });
}
void RewardModelKeys(const std::string& name, config::Schema& schema) {
  OfflineKeys(name, schema, [](const std::string&, config::Schema& s) { RewardModelConfig::Spec().Register(s); });
}
void PreferenceKeys(const std::string& name, config::Schema& schema) {
  OfflineKeys(name, schema, [](const std::string& n, config::Schema& s) { PreferenceConfig::Spec(n).Register(s); });
}
// The rl.* keys are registered once for every online stage (RegisterTrainKeys).
void NoOwnKeys(const std::string&, config::Schema&) {}

}  // namespace

const std::vector<StageSpec>& Stages() {
  using F = StageFamily;
  static const std::vector<StageSpec> stages = {
      {"sft", F::kSft, false, true, SftKeys, RunSft},
      {"reward_model", F::kRewardModel, false, false, RewardModelKeys, RunPreference},
      {"dpo", F::kPreference, false, true, PreferenceKeys, RunPreference},
      {"kto", F::kPreference, false, true, PreferenceKeys, RunPreference},
      {"orpo", F::kPreference, false, true, PreferenceKeys, RunPreference},
      {"simpo", F::kPreference, false, true, PreferenceKeys, RunPreference},
      {"cpo", F::kPreference, false, true, PreferenceKeys, RunPreference},
      {"rrhf", F::kPreference, false, true, PreferenceKeys, RunPreference},
      {"ppo", F::kRl, true, true, NoOwnKeys, RunRl},
      {"grpo", F::kRl, true, true, NoOwnKeys, RunRl},
      {"online_dpo", F::kOnlinePreference, true, true, NoOwnKeys, RunOnlinePreference},
      {"rft", F::kOnlinePreference, true, true, NoOwnKeys, RunOnlinePreference},
  };
  return stages;
}

const StageSpec* FindStage(const std::string& name) {
  for (const auto& s : Stages()) {
    if (s.name == name) return &s;
  }
  return nullptr;
}

std::vector<std::string> StageNames() {
  std::vector<std::string> out;
  for (const auto& s : Stages()) out.push_back(s.name);
  return out;
}

// ---- evaluations of the pipeline's policies and summary.json ------------------------------------------------
namespace {

// The JSON object in `path`; an empty object when the file is missing or holds something else.
json ReadJsonObject(const std::string& path) {
  auto text = ReadFile(path);
  if (!text.ok()) return json::object();
  json j = json::parse(*text, nullptr, false);
  return j.is_object() ? j : json::object();
}

}  // namespace

// With eval.data.path set, the policy is evaluated (greedy accuracy, mean reward, pass@k; services/coordinator)
// before the first stage and after each stage that changes it, on an embedded rollout worker and scorer;
// the figures go to <run>/evals.json and summary.json. Rank 0 evaluates; the others wait.
absl::Status EvaluatePolicy(Pipeline& p, const std::string& name) {
  const auto dc = coordinator::EvalDataSection().Read(*p.config);
  if (dc.path.empty()) return absl::OkStatus();
  if (p.rank0()) {
    auto ec = coordinator::EvalConfig::Spec().Read(*p.config);
    const auto roles_cfg = coordinator::RolesConfig::Spec().Read(*p.config);
    const auto reward_cfg = PipelineReward(p);
    ec.judged_by = scoring::DescribeJudge(reward_cfg, ec.success_part, ec.success_threshold);
    ASSIGN_OR_RETURN(auto prompts, coordinator::LoadEvalPrompts(dc, ec.split, p.tokenizer_dir, reward_cfg.answer_field));
    coordinator::RolesConfig embedded = roles_cfg;
    embedded.rollout_addresses.clear();  // the worker must hold this policy
    ASSIGN_OR_RETURN(auto roles, coordinator::Roles::Start(embedded, *p.config, p.policy, 0, &reward_cfg));
    coordinator::RolloutPool pool(roles->rollout_channels(), roles->rpc(), roles_cfg.retry(), {});
    pool.SetLeases(roles_cfg.leases());
    coordinator::ScorerClient scorer(roles->scorer_channels(), roles->rpc(), roles_cfg.retry());
    ASSIGN_OR_RETURN(auto r, coordinator::EvaluateToFile(pool, scorer, prompts, ec, 0, p.seed,
                                                         (fs::path(p.run_dir) / ("eval_" + name + ".jsonl")).string(),
                                                         absl::StrCat(name, " (", p.policy, ")")));
    const std::string path = (fs::path(p.run_dir) / "evals.json").string();
    json all = ReadJsonObject(path);
    r["policy"] = p.policy;
    all[name] = r;
    RETURN_IF_ERROR(WriteFileAtomic(path, all.dump(2) + "\n"));
  }
  return p.group->Barrier();
}

namespace {

// <run>/stages.json: per stage ("<index>-<name>") its wall time and its evaluations before and after, kept
// as stages end so that a resumed run reports the stages it did not run again.
std::string StagesPath(const Pipeline& p) { return (fs::path(p.run_dir) / "stages.json").string(); }

// The record of stage `index` just ended (rank 0): its evaluations are the pipeline's (eval.data.path, in
// evals.json) where there are some, else the stage's own (the online step loop's held-out evaluations in the
// summary.json it wrote during the stage, SFT's held-out accuracy); a stage without its own figure before
// it takes the figure after the previous policy stage (the same policy).
absl::Status RecordStage(Pipeline& p, int64_t index, const StageSpec& spec, double wall,
                         fs::file_time_type started) {
  json own_eval = std::move(p.stage_eval);
  p.stage_eval = json();
  if (!p.rank0()) return absl::OkStatus();
  const std::string name = absl::StrCat(index, "-", spec.name);
  json records = ReadJsonObject(StagesPath(p));
  json evals = ReadJsonObject((fs::path(p.run_dir) / "evals.json").string());
  json r = {{"index", index}, {"stage", spec.name}, {"wall_seconds", wall}};
  json online;  // what the step loop wrote during this stage
  const fs::path summary_path = fs::path(p.run_dir) / "summary.json";
  std::error_code ec;
  if (fs::exists(summary_path, ec) && fs::last_write_time(summary_path, ec) >= started && !ec) {
    json sj = ReadJsonObject(summary_path.string());
    if (sj.value("stage", std::string()) == spec.name) online = sj;
  }
  const std::string before_name = index == 0 ? "start" : absl::StrCat(index - 1, "-", p.train.stages[static_cast<size_t>(index - 1)]);
  if (evals.contains(before_name)) {
    r["eval_before"] = evals[before_name];
  } else if (online.contains("eval_before")) {
    r["eval_before"] = online["eval_before"];
  } else if (index > 0 && records.contains(before_name) && records[before_name].contains("eval_after") &&
             FindStage(p.train.stages[static_cast<size_t>(index - 1)])->makes_policy) {
    r["eval_before"] = records[before_name]["eval_after"];
  }
  if (evals.contains(name)) {
    r["eval_after"] = evals[name];
  } else if (online.contains("eval_after")) {
    r["eval_after"] = online["eval_after"];
  } else if (!own_eval.is_null()) {
    r["eval_after"] = own_eval;
  }
  // The previous policy stage without a figure after it: this stage's figure before it is of its policy.
  if (index > 0 && r.contains("eval_before") && records.contains(before_name) &&
      !records[before_name].contains("eval_after") && FindStage(p.train.stages[static_cast<size_t>(index - 1)])->makes_policy) {
    records[before_name]["eval_after"] = r["eval_before"];
  }
  records[name] = r;
  return WriteFileAtomic(StagesPath(p), records.dump(2) + "\n");
}

// summary.json of the pipeline, the same fields in every pipeline: `stages` (each stage's record in order:
// wall time, evaluation before and after), `eval_before` / `eval_after` of the last stage that has both (the
// stage a recipe is about: the RL or preference stage after SFT), the pipeline evaluations, and the whole
// run's wall time; merged into the fields an online stage wrote (ledger, throughput, roles).
// `wall`: this process's; the stages before `resume_stage` ran in an earlier process and add their own.
absl::Status WritePipelineSummary(Pipeline& p, const std::vector<std::string>& names, double wall, int64_t resume_stage) {
  if (!p.rank0()) return absl::OkStatus();
  const std::string evals_path = (fs::path(p.run_dir) / "evals.json").string();
  const std::string path = (fs::path(p.run_dir) / "summary.json").string();
  json summary = ReadJsonObject(path);
  if (fs::exists(evals_path)) {
    json evals = ReadJsonObject(evals_path);
    json ordered = json::array();
    for (const auto& n : names) {
      if (evals.is_object() && evals.contains(n)) ordered.push_back({{"after", n}, {"eval", evals[n]}});
    }
    summary["pipeline_evals"] = ordered;
  }
  json records = ReadJsonObject(StagesPath(p)), stages = json::array();
  for (size_t i = 1; i < names.size(); ++i) {
    if (!records.contains(names[i])) continue;
    stages.push_back(records[names[i]]);
    if (static_cast<int64_t>(i) <= resume_stage) wall += records[names[i]].value("wall_seconds", 0.0);
  }
  for (auto it = stages.rbegin(); it != stages.rend(); ++it) {
    if (it->contains("eval_before") && it->contains("eval_after")) {
      summary["eval_before"] = (*it)["eval_before"];
      summary["eval_after"] = (*it)["eval_after"];
      summary["evaluated_stage"] = (*it)["stage"];
      break;
    }
  }
  summary["stages"] = stages;
  summary["wall_seconds"] = wall;
  return WriteFileAtomic(path, summary.dump(2) + "\n");
}

}  // namespace

void RegisterTrainKeys(config::Schema& schema) {
  TrainConfig::Spec().Register(schema);
  comm::DistConfig::Spec().Register(schema);
  for (const auto& s : Stages()) s.register_keys(s.name, schema);
  RlStageConfig::Spec().Register(schema);
  DataSection("rl").Register(schema);
  RlSection().Register(schema);
  coordinator::EvalConfig::Spec().Register(schema);
  coordinator::LearnabilityConfig::Spec().Register(schema);
  coordinator::EvalDataSection().Register(schema);
  OnlinePrefConfig::Dpo().Register(schema);
  OnlinePrefConfig::Rft().Register(schema);
  coordinator::RegisterRoleKeys(schema);
  OptimSection("rl.optim").Register(schema);
  OptimSection("rl.critic_optim").Register(schema);
}

namespace {
// Whether the run directory holds any checkpoint (verified or not).
bool HasCheckpoints(const std::string& run_dir) {
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(fs::path(run_dir) / "checkpoints", ec)) {
    if (e.path().filename().string().rfind("step-", 0) == 0) return true;
  }
  return false;
}
}  // namespace

absl::Status RunTraining(const config::Config& config, const std::string& run_dir, uint64_t seed,
                         const TrainingOptions& options) {
  Pipeline p;
  p.config = &config;
  p.run_dir = run_dir;
  p.seed = seed;
  p.serve_learner_address = options.serve_learner_address;
  p.other_processes = options.other_processes;
  p.train = TrainConfig::Spec().Read(config);
  const auto t_start = std::chrono::steady_clock::now();
  const auto dist = comm::DistConfig::Spec().Read(config);
  p.bucket_bytes = dist.bucket_bytes;
  if (p.train.stages.empty()) return absl::InvalidArgumentError("train.stages is empty");
  for (const auto& s : p.train.stages) {
    if (FindStage(s) == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("train.stages: unknown stage '", s,
                                                     "' (", absl::StrJoin(StageNames(), ", "), ")"));
    }
  }
  if (p.train.model.empty()) return absl::InvalidArgumentError("set train.model (--model DIR): the starting policy");
  p.policy = p.train.model;
  p.tokenizer_dir = p.train.model;
  const bool coordinate_only = LearnsElsewhere(p);
  if (coordinate_only) {
    for (const auto& s : p.train.stages) {
      if (!FindStage(s)->online_capable) {
        return absl::InvalidArgumentError(absl::StrCat(
            "roles.learner_address: this process only coordinates online stages; stage '", s,
            "' belongs in the learner's pipeline (rlhf serve learner)"));
      }
    }
  }
  if (options.group) {
    p.group = options.group;
  } else {
    ASSIGN_OR_RETURN(p.group, comm::Group::Create(dist));
  }
  torch::manual_seed(seed);

  int64_t resume_stage = 0;
  if (coordinate_only) {
    // The learner holds the checkpoints; the log is cut at its step once the stage knows it (RunOnline).
    RETURN_IF_ERROR(p.log.Open(run_dir, p.rank0(), std::numeric_limits<int64_t>::max(), 0));
  } else if (p.train.resume && HasCheckpoints(run_dir)) {
    ASSIGN_OR_RETURN(p.resume_dir, FindLatestCheckpoint(run_dir));
    ASSIGN_OR_RETURN(auto state, ReadTrainState(p.resume_dir));
    if (state.stage_index >= static_cast<int64_t>(p.train.stages.size()) ||
        p.train.stages[static_cast<size_t>(state.stage_index)] != state.stage) {
      return absl::FailedPreconditionError(absl::StrCat(p.resume_dir, " belongs to stage '", state.stage,
                                                        "', which is not stage ", state.stage_index, " of train.stages"));
    }
    resume_stage = state.stage_index;
    p.resume = state;
    RETURN_IF_ERROR(p.log.Open(run_dir, p.rank0(), state.stage_index, state.step));
  } else {
    // --resume of a run that has not written a checkpoint yet (e.g. a learner restarted by its supervisor
    // before the first one) starts it from the beginning.
    if (p.train.resume && p.rank0()) spdlog::info("resume: {} holds no checkpoint yet; starting from the beginning", run_dir);
    if (!p.train.resume && p.rank0() && fs::exists(fs::path(run_dir) / "checkpoints" / "latest")) {
      return absl::FailedPreconditionError(absl::StrCat(run_dir, " already holds checkpoints: add --resume to continue "
                                                        "it, or choose another --run-dir"));
    }
    RETURN_IF_ERROR(p.log.Open(run_dir, p.rank0(), -1, 0));
  }
  for (size_t i = 0; i < p.train.stages.size(); ++i) {
    const std::string& stage = p.train.stages[i];
    const int64_t index = static_cast<int64_t>(i);
    if (index < resume_stage) {  // finished before the checkpoint: take its outputs
      const std::string out = (fs::path(StageDir(p, index, stage)) / "model").string();
      if (!fs::exists(fs::path(out) / "config.json")) {
        return absl::FailedPreconditionError(absl::StrCat("cannot resume: stage ", index, " (", stage,
                                                          ") finished but its output ", out, " is missing"));
      }
      (FindStage(stage)->makes_policy ? p.policy : p.reward_model) = out;
      continue;
    }
    // Pipeline evaluations run where the policy is: in the learner's process when that is another one.
    if (index == 0 && !p.resume && !coordinate_only) RETURN_IF_ERROR(EvaluatePolicy(p, "start"));
    if (p.rank0()) spdlog::info("stage {}/{}: {}", index + 1, p.train.stages.size(), stage);
    const StageSpec& spec = *FindStage(stage);
    const auto stage_start = std::chrono::steady_clock::now();
    const auto stage_started = fs::file_time_type::clock::now();
    RETURN_IF_ERROR(spec.run(p, index, stage));
    if (spec.makes_policy && !coordinate_only) RETURN_IF_ERROR(EvaluatePolicy(p, absl::StrCat(index, "-", stage)));
    RETURN_IF_ERROR(RecordStage(p, index, spec,
                                std::chrono::duration<double>(std::chrono::steady_clock::now() - stage_start).count(),
                                stage_started));
  }
  std::vector<std::string> names = {"start"};
  for (size_t i = 0; i < p.train.stages.size(); ++i) names.push_back(absl::StrCat(i, "-", p.train.stages[i]));
  RETURN_IF_ERROR(WritePipelineSummary(
      p, names, std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count(), resume_stage));
  if (p.rank0()) {
    spdlog::info("training done: policy {}; peak resident memory {:.2f} GB (estimated at most {:.2f} GB)", p.policy,
                 static_cast<double>(PeakResidentBytes()) / 1e9, p.peak_estimate / 1e9);
  }
  return absl::OkStatus();
}

}  // namespace rlhf::trainer
