// The PPO-family stages, ppo (with a critic) and grpo (critic-free; every group estimator of rl.advantage):
// online with rl.data.path (the step loop of services/coordinator generates and scores each batch, this
// process or another learns), or offline on a file of scored samples (rl.samples). The update itself is
// trainer/rl_update.h.
#include <spdlog/spdlog.h>

#include <cmath>
#include <filesystem>

#include "common/sample_json.h"
#include "services/coordinator/roles.h"
#include "trainer/pipeline/stage.h"
#include "trainer/rl_update.h"

namespace rlhf::trainer {

namespace fs = std::filesystem;

namespace {
// The KL to the reference of a step, NaN when the step has none (no reference).
double KlOrNan(const std::map<std::string, double>& m) {
  auto it = m.find("kl_ref");
  return it == m.end() ? std::nan("") : it->second;
}
}  // namespace

absl::Status RunRl(Pipeline& p, int64_t index, const std::string& stage) {
  const auto sc = RlStageConfig::Spec().Read(*p.config);
  auto rc = RlSection().Read(*p.config);
  const auto po = OptimSection("rl.optim").Read(*p.config);
  const auto co = OptimSection("rl.critic_optim").Read(*p.config);
  const auto data_cfg = DataSection("rl").Read(*p.config);
  const bool with_critic = stage == "ppo";
  const bool online = !data_cfg.path.empty();
  if (rc.advantage == Advantage::kAuto) rc.advantage = with_critic ? Advantage::kGae : Advantage::kGrpo;
  if (rc.advantage == Advantage::kGae && !with_critic) {
    return absl::InvalidArgumentError("rl.advantage=gae needs the ppo stage (a critic)");
  }
  if (online == !sc.samples.empty()) {
    return absl::InvalidArgumentError(
        "set one of rl.data.path (online: prompts to generate from) or rl.samples (offline: scored samples)");
  }
  if (sc.rollout_batch_size % p.group->size() != 0) {
    return absl::InvalidArgumentError("rl.rollout_batch_size must be a multiple of the number of ranks");
  }
  const int64_t g = rc.group_size;

  const std::string start = sc.policy.empty() ? p.policy : sc.policy;
  ASSIGN_OR_RETURN(auto tools, text::ModelText::Load(p.tokenizer_dir));
  std::vector<Sample> samples;  // offline
  std::optional<data::Dataset> ds;  // online
  int64_t total = 0;
  if (online) {
    ASSIGN_OR_RETURN(auto op, LoadOnlinePrompts(sc, data_cfg));
    ds.emplace(std::move(op.data));
    total = op.total_steps;
    if (LearnsElsewhere(p)) {  // another process learns: no model here
      OnlineStage s{stage, index, sc, g, false, &*ds, total, start, &tools};
      return RunOnlineStage(p, s);
    }
  } else {
    ASSIGN_OR_RETURN(samples, ReadSamplesJsonl(sc.samples));
    if (samples.size() % static_cast<size_t>(g) != 0) {
      return absl::InvalidArgumentError(absl::StrCat(sc.samples, " holds ", samples.size(), " samples, not whole groups of ", g));
    }
    const int64_t groups = static_cast<int64_t>(samples.size()) / g;
    total = groups / sc.rollout_batch_size;
    if (sc.steps > 0) total = std::min(total, sc.steps);
    if (total == 0) {
      return absl::InvalidArgumentError(absl::StrCat(sc.samples, " holds ", groups, " prompts, fewer than rl.rollout_batch_size"));
    }
  }

  bool all_ref = online ? sc.scorer_reference : true;
  for (const auto& s : samples) all_ref = all_ref && s.ref_logprobs_size() == s.completion_ids_size();
  const bool with_reference = !all_ref && rc.kl_placement != KlPlacement::kNone && rc.kl_coef > 0;
  {
    MemoryPlan plan;
    plan.trainable_models = with_critic ? 2 : 1;
    plan.frozen_models = with_reference ? 1 : 0;
    // Online with the embedded rollout worker: its copy of the policy (f32 at most).
    plan.rollout_copies = online && coordinator::RolesConfig::Spec().Read(*p.config).rollout_addresses.empty() ? 1 : 0;
    plan.micro_batch_rows = rc.micro_batch_size;
    // The longest row: prompt + completion (online: the longest of the first 2000 prompts + rl.max_new_tokens).
    int64_t longest = 0;
    if (online) {
      for (size_t i = 0; i < ds->examples().size() && i < 2000; ++i) {
        auto ids = tools.EncodePrompt(ds->examples()[i].prompt);
        if (ids.ok()) longest = std::max(longest, static_cast<int64_t>(ids->size()));
      }
      longest += sc.max_new_tokens;
    } else {
      for (const auto& smp : samples) longest = std::max<int64_t>(longest, smp.prompt_ids_size() + smp.completion_ids_size());
    }
    plan.tokens_per_row = std::max<int64_t>(longest, 1);
    RETURN_IF_ERROR(CheckMemory(p, stage, start, plan));
  }
  ASSIGN_OR_RETURN(auto policy, LoadForTraining(start, std::nullopt, p.seed));
  model::Transformer critic{nullptr};
  model::Transformer reference{nullptr};
  if (with_critic) {
    const std::string from = !sc.critic.empty() ? sc.critic : !p.reward_model.empty() ? p.reward_model : start;
    ASSIGN_OR_RETURN(critic, LoadForTraining(from, model::Head::kTokenClassification, p.seed + 1));
    if (p.rank0()) spdlog::info("{}: critic starts from {} (value head)", stage, from);
  }
  if (with_reference) {
    ASSIGN_OR_RETURN(reference, LoadFrozen(sc.reference.empty() ? start : sc.reference));
  }
  Learner learner(p.group, p.bucket_bytes);
  learner.AddModel("policy", policy, po, 1);
  if (with_critic) learner.AddModel("critic", critic, co, 1);
  RlUpdate update(&learner, policy, critic, reference, rc, tools.pad);
  // Optimizer steps per policy step, for the schedules.
  const int64_t batch_samples = sc.rollout_batch_size * g;
  const int64_t per_step = rc.ppo_epochs * (rc.minibatch_size > 0 ? batch_samples / rc.minibatch_size : 1);
  learner.SetTotalSteps(total * per_step);
  if (p.rank0()) {
    spdlog::info("{}: {}{} policy steps of {} prompts x {} samples, advantage {}, {} optimizer steps each", stage,
                 online ? "about " : "", total, sc.rollout_batch_size, g, AdvantageName(update.advantage()), per_step);
  }

  // The stage's outputs: the policy (and critic) folders; returns the policy's.
  auto save_models = [&]() -> absl::StatusOr<std::string> {
    const std::string dir = StageDir(p, index, stage);
    RETURN_IF_ERROR(SaveStageModel(p, *policy, (fs::path(dir) / "model").string()));
    if (with_critic) RETURN_IF_ERROR(SaveStageModel(p, *critic, (fs::path(dir) / "critic").string()));
    return (fs::path(dir) / "model").string();
  };
  if (online) {
    OnlineStage s{stage, index, sc, g, false, &*ds, total, start, &tools, policy.get(), &learner};
    s.trainer.check = [&](const std::vector<Sample>& batch) { return update.Check(batch); };
    s.trainer.step = [&](const std::vector<Sample>& mine, uint64_t seed) { return update.Update(mine, seed); };
    s.trainer.save = [&](nlohmann::json& extra) { extra["kl_coef"] = update.kl_controller().value(); };
    s.trainer.restore = [&](const nlohmann::json& extra) { update.kl_controller().Restore(extra.value("kl_coef", rc.kl_coef)); };
    s.trainer.finish = save_models;
    return RunOnlineStage(p, s);
  } else {
    int64_t step = 0;
    if (p.resume) {
      step = p.resume->step;
      RETURN_IF_ERROR(LoadTrainCheckpoint(p.resume_dir, learner, *p.resume));
      update.kl_controller().Restore(p.resume->extra.value("kl_coef", rc.kl_coef));
      if (p.rank0()) spdlog::info("{}: resumed at policy step {} from {}", stage, step, p.resume_dir);
      p.resume.reset();
    }
    for (; step < total; ++step) {
      // This rank's groups of the batch.
      auto [lo, hi] = ShardRange(static_cast<size_t>(sc.rollout_batch_size), p.group->rank(), p.group->size());
      const size_t first = static_cast<size_t>(step * sc.rollout_batch_size);
      std::vector<Sample> mine(samples.begin() + static_cast<std::ptrdiff_t>((first + lo) * g),
                               samples.begin() + static_cast<std::ptrdiff_t>((first + hi) * g));
      ASSIGN_OR_RETURN(auto m, update.Update(mine, p.seed + static_cast<uint64_t>(step)));
      const bool last = step + 1 == total;
      p.log.Write(index, stage, step + 1, m);
      if (p.rank0() && ((step + 1) % p.train.log_every == 0 || last)) {
        spdlog::info("{} step {}/{}: reward {:.4f} loss {:.4f} pg {:.4f} vf {:.4f} kl_ref {:.4f} clip {:.3f} entropy {:.3f} "
                     "{:.0f} tok/s",
                     stage, step + 1, total, m["reward_mean"], m["loss"], m["pg_loss"], m["vf_loss"], KlOrNan(m),
                     m["clip_fraction"], m["entropy"], m["tokens_per_second"]);
      }
      if ((p.train.save_every > 0 && (step + 1) % p.train.save_every == 0) || last) {
        TrainState st;
        st.stage = stage;
        st.stage_index = index;
        st.step = step + 1;
        st.extra["kl_coef"] = update.kl_controller().value();
        RETURN_IF_ERROR(Checkpoint(p, learner, st));
      }
    }
  }
  ASSIGN_OR_RETURN(p.policy, save_models());
  return absl::OkStatus();
}

}  // namespace rlhf::trainer
