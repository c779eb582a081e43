// The online part of a stage: its learner behind rlhf.Learner, and the step loop of services/coordinator
// talking to it. Three ways to run, one step loop:
//   embedded (default)      rank 0 serves the learner in process and runs the step loop against it over
//                           an in-process channel; the other ranks follow the learner's commands
//   roles.learner_address   this process only coordinates: the step loop talks to `rlhf serve learner`
//   rlhf serve learner      this process only learns: it serves the learner on an address
#include <spdlog/spdlog.h>

#include <filesystem>

#include "absl/strings/str_cat.h"
#include "common/model/checkpoint.h"
#include "common/rpc.h"
#include "services/coordinator/learner_client.h"
#include "services/coordinator/roles.h"
#include "services/coordinator/step_loop.h"
#include "services/scoring/scorer.h"
#include "services/scoring/sources.h"
#include "trainer/pipeline/learner_service.h"
#include "trainer/pipeline/stage.h"

namespace rlhf::trainer {

namespace fs = std::filesystem;
using json = nlohmann::json;

scoring::RewardConfig PipelineReward(const Pipeline& p) {
  auto r = scoring::RewardConfig::Spec().Read(*p.config);
  if (r.reward_model_weight != 0 && r.reward_model.empty()) r.reward_model = p.reward_model;
  if (r.process_weight != 0 && r.tokenizer.empty()) r.tokenizer = p.tokenizer_dir;
  return r;
}

bool LearnsElsewhere(const Pipeline& p) {
  return p.serve_learner_address.empty() && !coordinator::RolesConfig::Spec().Read(*p.config).learner_address.empty();
}

namespace {

// The learner side of the stage: resumes from p.resume, and answers steps, checkpoints, weights and the end.
// `log_steps`: the learner writes its own metrics log (a learner process; the step loop logs otherwise).
absl::StatusOr<LearnerHooks> MakeLearnerHooks(Pipeline& p, OnlineStage& s, bool log_steps) {
  LearnerHooks h;
  h.stage = s.stage;
  h.group_size = s.group_size;
  if (p.resume) {
    h.version = p.resume->step;
    RETURN_IF_ERROR(LoadTrainCheckpoint(p.resume_dir, *s.learner, *p.resume));
    s.trainer.restore(p.resume->extra);
    h.extra_json = p.resume->extra.dump();
    if (p.rank0()) spdlog::info("{}: resumed at policy step {} from {}", s.stage, h.version, p.resume_dir);
    p.resume.reset();
  }
  auto logged = std::make_shared<int64_t>(h.version);
  h.check = s.trainer.check;
  h.step = [&p, &s, log_steps, logged](const std::vector<Sample>& mine,
                                        uint64_t seed) -> absl::StatusOr<std::map<std::string, double>> {
    ASSIGN_OR_RETURN(auto m, s.trainer.step(mine, seed));
    if (log_steps) p.log.Write(s.index, s.stage, ++*logged, m);
    return m;
  };
  h.checkpoint = [&p, &s](int64_t step, const std::string& extra_json) -> absl::Status {
    TrainState st;
    st.stage = s.stage;
    st.stage_index = s.index;
    st.step = step;
    st.extra = extra_json.empty() ? json::object() : json::parse(extra_json, nullptr, false);
    if (!st.extra.is_object()) return absl::InvalidArgumentError("learner checkpoint: the coordinator state is not a JSON object");
    s.trainer.save(st.extra);
    return Checkpoint(p, *s.learner, st);
  };
  h.finish = [&p, &s]() -> absl::StatusOr<std::string> {
    ASSIGN_OR_RETURN(p.policy, s.trainer.finish());
    return p.policy;
  };
  h.parameters = [&s] { return rollout::NamedParameters(*s.policy); };
  h.weights = [&s](int64_t version, int64_t chunk_bytes, const rollout::ChunkWriter& w) {
    return rollout::ModelChunks(*s.policy, version, chunk_bytes, w);
  };
  return h;
}

// The step loop of the stage against `learner` (rank 0 of the coordinating process).
absl::Status Coordinate(Pipeline& p, OnlineStage& s, coordinator::LearnerClient& learner, const std::string& label) {
  const auto& sc = s.sc;
  const auto roles_cfg = coordinator::RolesConfig::Spec().Read(*p.config);
  const auto reward_cfg = PipelineReward(p);
  coordinator::StepLoopOptions o;
  o.stage = s.stage;
  o.stage_dir = StageDir(p, s.index, s.stage);
  o.summary_path = (fs::path(p.run_dir) / "summary.json").string();
  o.coordinator.rollout_batch_size = sc.rollout_batch_size;
  o.coordinator.group_size = static_cast<int32_t>(s.group_size);
  o.coordinator.params.set_temperature(static_cast<float>(sc.temperature));
  o.coordinator.params.set_top_p(static_cast<float>(sc.top_p));
  o.coordinator.params.set_top_k(static_cast<int32_t>(sc.top_k));
  o.coordinator.params.set_min_p(static_cast<float>(sc.min_p));
  o.coordinator.params.set_max_new_tokens(static_cast<int32_t>(sc.max_new_tokens));
  for (const auto& st : sc.stop) o.coordinator.params.add_stop(st);
  o.coordinator.params.set_seed(p.seed);
  o.coordinator.epochs = sc.epochs;
  o.coordinator.dynamic_sampling = sc.dynamic_sampling || s.filter_equal;
  o.coordinator.want_ref_logprobs = sc.scorer_reference;
  o.steps = sc.steps;
  o.total_estimate = s.total;
  o.save_every = p.train.save_every;
  o.log_every = p.train.log_every;
  o.seed = p.seed;
  o.max_staleness = sc.max_staleness;
  if (sc.sample_log) o.sample_log_path = (fs::path(p.run_dir) / "samples.jsonl").string();
  o.eval = coordinator::EvalConfig::Spec().Read(*p.config);
  o.eval.judged_by = scoring::DescribeJudge(reward_cfg, o.eval.success_part, o.eval.success_threshold);
  o.learnability = coordinator::LearnabilityConfig::Spec().Read(*p.config);
  o.weight_chunk_bytes = roles_cfg.weight_chunk_bytes;
  o.weights = coordinator::WeightsConfig::Spec().Read(*p.config);
  {
    std::vector<std::string> addresses = roles_cfg.rollout_addresses;
    if (!roles_cfg.learner_address.empty()) addresses.push_back(roles_cfg.learner_address);
    o.weights_store_host = coordinator::AdvertisedStoreHost(o.weights, addresses);
  }
  o.retry = roles_cfg.retry();
  o.leases = roles_cfg.leases();
  o.learner_label = label;
  o.processes_path = (fs::path(p.run_dir) / "processes.json").string();
  o.rollout_addresses = roles_cfg.rollout_addresses;
  o.scorer_addresses = roles_cfg.scorers();
  o.other_processes = p.other_processes;
  const auto& ds = *s.data;
  ASSIGN_OR_RETURN(auto train_prompts,
                   coordinator::PromptsOf(ds, ds.Indices(data::Split::kTrain), *s.tools, reward_cfg.answer_field));
  ASSIGN_OR_RETURN(auto eval_prompts,
                   coordinator::PromptsOf(ds, coordinator::SplitIndices(ds, o.eval.split), *s.tools, reward_cfg.answer_field));
  ASSIGN_OR_RETURN(auto roles, coordinator::Roles::Start(roles_cfg, *p.config, s.start, 0, &reward_cfg));
  coordinator::StepLoopHooks hooks;
  hooks.log_step = [&](int64_t step, const std::map<std::string, double>& m) { p.log.Write(s.index, s.stage, step, m); };
  hooks.resume_at = [&](int64_t step) { return p.log.DropAfter(s.index, step); };
  hooks.after_checkpoint = MaybeKillAfterCheckpoint;
  hooks.before_sync = MaybePauseBeforeSync;
  return coordinator::RunStepLoop(o, *roles, learner, std::move(train_prompts), eval_prompts, hooks).status();
}

}  // namespace

absl::Status RunOnlineStage(Pipeline& p, OnlineStage& s) {
  const auto rpc = RpcConfig::Spec().Read(*p.config);
  if (!p.serve_learner_address.empty()) {  // `rlhf serve learner`
    ASSIGN_OR_RETURN(auto hooks, MakeLearnerHooks(p, s, /*log_steps=*/true));
    return ServeLearner(*p.group, rpc, p.serve_learner_address, std::move(hooks));
  }
  if (s.learner == nullptr) {  // roles.learner_address: the learner is another process
    if (p.group->size() != 1) {
      return absl::InvalidArgumentError("roles.learner_address: the coordinator is one process (the learner has the ranks)");
    }
    const auto roles_cfg = coordinator::RolesConfig::Spec().Read(*p.config);
    ASSIGN_OR_RETURN(auto channel, MakeChannel(rpc, roles_cfg.learner_address));
    coordinator::LearnerClient learner(channel, rpc, roles_cfg.retry());
    return Coordinate(p, s, learner, roles_cfg.learner_address);
  }
  // Embedded: the learner in this process, behind an in-process channel.
  ASSIGN_OR_RETURN(auto hooks, MakeLearnerHooks(p, s, /*log_steps=*/false));
  if (!p.rank0()) return FollowLearner(*p.group, std::move(hooks));
  ASSIGN_OR_RETURN(auto host, LearnerHost::Start(*p.group, rpc, "", std::move(hooks)));
  const auto roles_cfg = coordinator::RolesConfig::Spec().Read(*p.config);
  coordinator::LearnerClient learner(host->InProcessChannel(), rpc, roles_cfg.retry());
  auto status = Coordinate(p, s, learner, "embedded");
  if (!status.ok()) {
    host->Stop(status);
    return status;
  }
  return host->Wait();
}

}  // namespace rlhf::trainer
