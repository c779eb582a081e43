#include "trainer/pipeline/configs.h"

#include "absl/strings/str_join.h"
#include "trainer/pipeline/stages.h"

namespace rlhf::trainer {

const config::Section<TrainConfig>& TrainConfig::Spec() {
  static const auto* s = [] {
    using T = TrainConfig;
    auto* s = new config::Section<T>("train");
    s->Add("stages", &T::stages, "pipeline of stages, in order: " + absl::StrJoin(StageNames(), " | "));
    s->Add("model", &T::model, "starting policy: HF model folder with its tokenizer files");
    s->Add("save_every", &T::save_every, "checkpoint every N steps of a stage; 0 = at the end of each stage",
           config::AtLeast(0));
    s->Add("keep_checkpoints", &T::keep_checkpoints, "newest checkpoints kept; 0 = all", config::AtLeast(0));
    s->Add("resume", &T::resume, "continue the run directory from its newest checkpoint that verifies");
    s->Add("log_every", &T::log_every, "print a progress line every N steps", config::AtLeast(1));
    s->Add("memory_limit_gb", &T::memory_limit_gb,
           "refuse a stage whose estimated memory (logged at its start) is above this, before it loads its models; "
           "0 = the machine's physical memory",
           config::AtLeast(0));
    return s;
  }();
  return *s;
}

namespace {
// The keys of OfflineConfig, first in every offline stage's section.
template <typename T>
config::Section<T> OfflineSection(const std::string& prefix) {
  config::Section<T> s(prefix);
  s.template Add<std::string>("model", &T::model, "starting model; \"\" = the policy of the previous stage (or train.model)");
  s.template Add<int64_t>("epochs", &T::epochs, "passes over the training split", config::AtLeast(1));
  s.template Add<int64_t>("max_steps", &T::max_steps, "stop after this many optimizer steps; 0 = epochs decide",
                          config::AtLeast(0));
  s.template Add<int64_t>("batch_size", &T::batch_size,
                          "examples per optimizer step over all ranks (pairs for preference data)", config::AtLeast(1));
  s.template Add<int64_t>("micro_batch_size", &T::micro_batch_size,
                          "rows per forward/backward on one rank (pairs for preference data)", config::AtLeast(1));
  s.template Add<int64_t>("max_length", &T::max_length, "tokens per example; longer ones are cut", config::AtLeast(2));
  s.template Add<int64_t>("eval_every", &T::eval_every, "evaluate on the held-out split every N steps; 0 = at the end only",
                          config::AtLeast(0));
  return s;
}
}  // namespace

const config::Section<SftConfig>& SftConfig::Spec() {
  static const auto* s = [] {
    auto* s = new config::Section<SftConfig>(OfflineSection<SftConfig>("sft"));
    s->Add("packing", &SftConfig::packing, "pack several examples per row (attention kept inside each)");
    s->Add("accuracy_prompts", &SftConfig::accuracy_prompts,
           "held-out prompts of the greedy accuracy measured every eval_every steps (the completion is the truth, "
           "compared as reward.extract says); 0 = not measured",
           config::AtLeast(0));
    s->Add("target_accuracy", &SftConfig::target_accuracy,
           "end the stage early once the held-out greedy accuracy reaches this (needs accuracy_prompts and eval_every); "
           "0 = no target",
           config::InRange(0, 1));
    s->Add("patience", &SftConfig::patience,
           "end the stage early once neither the held-out greedy accuracy nor the held-out loss has improved for this many "
           "evaluations (needs accuracy_prompts and eval_every); 0 = off",
           config::AtLeast(0));
    return s;
  }();
  return *s;
}

const config::Section<RewardModelConfig>& RewardModelConfig::Spec() {
  static const auto* s = [] {
    using R = RewardModelConfig;
    auto* s = new config::Section<R>(OfflineSection<R>("reward_model"));
    s->Add("centering", &R::centering, "reward centring coefficient c of c * mean((r_c + r_r)^2)", config::AtLeast(0));
    s->Add("margin_field", &R::margin_field, "data field holding a per-pair margin; \"\" = no margin");
    s->Add("freeze_backbone", &R::freeze_backbone, "train the score head only");
    return s;
  }();
  return *s;
}

config::Section<PreferenceConfig> PreferenceConfig::Spec(const std::string& stage) {
  using O = PreferenceConfig;
  auto s = OfflineSection<O>(stage);
  if (stage == "dpo") {
    s.AddChoice("loss_type", &O::loss_type, DpoLossNames(), "sigmoid | ipo | hinge | robust");
    s.Add("ipo_length_normalize", &O::ipo_length_normalize, "IPO on per-token means (TRL) instead of sums (OpenRLHF)");
  }
  if (stage == "dpo" || stage == "kto") {
    s.Add("beta", &O::beta, "strength of the implicit KL to the reference", config::AtLeast(0));
    s.Add("reference", &O::reference, "reference policy; \"\" = the starting model");
    s.Add("reference_cache", &O::reference_cache,
          "keep the reference log-probs of the data in the stage directory and reuse them (resume, reruns)");
  }
  if (stage == "dpo") {
    s.Add("label_smoothing", &O::label_smoothing, "probability of a flipped label (cDPO, robust)", config::InRange(0, 0.5));
    s.Add("alpha", &O::alpha,
          "weight of the NLL of chosen (per-token mean) added to the loss (RPO: keeps the chosen answers likely); 0 = off",
          config::AtLeast(0))
        .Default(0.0);
  }
  if (stage == "kto") {
    s.Add("desirable_weight", &O::desirable_weight, "lambda_D: weight of desirable completions", config::AtLeast(0));
    s.Add("undesirable_weight", &O::undesirable_weight, "lambda_U: weight of undesirable completions", config::AtLeast(0));
  }
  if (stage == "orpo") s.Add("beta", &O::beta, "weight of the odds-ratio term beside the NLL of chosen", config::AtLeast(0));
  if (stage == "simpo") {
    s.Add("beta", &O::beta, "scale of the length-normalised log-prob margin", config::AtLeast(0)).Default(2.0);
    s.Add("gamma", &O::gamma, "target reward margin", config::AtLeast(0));
  }
  if (stage == "cpo") {
    s.Add("beta", &O::beta, "scale of the log-prob margin", config::AtLeast(0));
    s.Add("alpha", &O::alpha, "weight of the NLL of chosen", config::AtLeast(0));
  }
  if (stage == "simpo" || stage == "cpo") {
    s.Add("label_smoothing", &O::label_smoothing, "probability of a flipped label", config::InRange(0, 0.5));
  }
  if (stage == "rrhf") s.Add("sft_weight", &O::sft_weight, "weight of the NLL of the best (chosen) response", config::AtLeast(0));
  return s;
}

const config::Section<RlStageConfig>& RlStageConfig::Spec() {
  static const auto* s = [] {
    using R = RlStageConfig;
    auto* s = new config::Section<R>("rl");
    s->Add("policy", &R::policy, "starting policy; \"\" = the policy of the previous stage (or train.model)");
    s->Add("critic", &R::critic, "critic init for ppo; \"\" = the previous reward_model stage's output, else the policy");
    s->Add("reference", &R::reference, "reference policy for KL when samples lack ref_logprobs; \"\" = the starting policy");
    s->Add("samples", &R::samples, "JSONL of scored samples (groups of one prompt consecutive)");
    s->Add("rollout_batch_size", &R::rollout_batch_size, "prompts per policy step (each with group_size samples)",
           config::AtLeast(1));
    s->Add("steps", &R::steps, "policy steps; 0 = every full rollout batch of the file (online: rl.epochs decide)",
           config::AtLeast(0));
    s->Add("epochs", &R::epochs, "online: passes over the training prompts of rl.data", config::AtLeast(1));
    s->Add("temperature", &R::temperature, "online: sampling temperature of the rollouts", config::AtLeast(1e-6));
    s->Add("top_p", &R::top_p, "online: nucleus mass of the rollouts; 1 = off", config::InRange(0, 1));
    s->Add("top_k", &R::top_k, "online: keep the k most likely tokens; 0 = off", config::AtLeast(0));
    s->Add("min_p", &R::min_p, "online: keep tokens with p >= min_p * p_max; 0 = off", config::InRange(0, 1));
    s->Add("max_new_tokens", &R::max_new_tokens, "online: longest completion of a rollout", config::AtLeast(1));
    s->Add("stop", &R::stop, "online: stop strings of the rollouts (besides the model's eos ids)");
    s->Add("dynamic_sampling", &R::dynamic_sampling,
           "online: filter prompt groups whose rewards are all equal (DAPO); they are recorded as filtered");
    s->Add("scorer_reference", &R::scorer_reference,
           "online: reference log-probs from the scorer (reward.reference_model) instead of rl.reference");
    s->Add("max_staleness", &R::max_staleness,
           "online: asynchronous RL; the next batches (up to k) are generated while the learner trains, and a "
           "sample is trained at most k policy versions after the one that generated it (older groups are "
           "generated again, counted as stale); 0 = strictly on-policy. Pair with rl.tis_cap",
           config::InRange(0, 16));
    s->Add("sample_log", &R::sample_log,
           "online: append one line per step to samples.jsonl in the run folder: [prompt_index, sample_index, "
           "policy_version] of every trained sample (the learner's version is the line's step)");
    return s;
  }();
  return *s;
}

const config::Section<OnlinePrefConfig>& OnlinePrefConfig::Dpo() {
  static const auto* s = [] {
    using O = OnlinePrefConfig;
    auto* s = new config::Section<O>("online_dpo");
    s->Add("beta", &O::beta, "strength of the implicit KL to the reference (rl.reference)", config::AtLeast(0));
    s->AddChoice("loss_type", &O::loss_type, DpoLossNames(), "sigmoid | ipo | hinge | robust");
    s->Add("min_margin", &O::min_margin,
           "train a prompt's pair only when the best reward exceeds the worst by at least this (a noisy judge's "
           "near-ties are skipped; they count against kept_fraction); 0 = any difference",
           config::AtLeast(0));
    return s;
  }();
  return *s;
}
const config::Section<OnlinePrefConfig>& OnlinePrefConfig::Rft() {
  static const auto* s = [] {
    using O = OnlinePrefConfig;
    auto* s = new config::Section<O>("rft");
    s->Add("threshold", &O::threshold, "keep a prompt's best sample when its reward is >= this; SFT on the kept ones");
    return s;
  }();
  return *s;
}

const std::vector<std::pair<std::string, algo::DpoLoss>>& DpoLossNames() {
  static const std::vector<std::pair<std::string, algo::DpoLoss>> names = {
      {"sigmoid", algo::DpoLoss::kSigmoid}, {"ipo", algo::DpoLoss::kIpo}, {"hinge", algo::DpoLoss::kHinge},
      {"robust", algo::DpoLoss::kRobust}};
  return names;
}

const config::Section<RlConfig>& RlSection() {
  static const auto* s = [] {
    auto* s = new config::Section<RlConfig>("rl");
    RlConfig::AddTo(*s);
    return s;
  }();
  return *s;
}

config::Section<data::DataConfig> DataSection(const std::string& prefix) {
  config::Section<data::DataConfig> s(prefix + ".data");
  data::DataConfig::AddTo(s);
  return s;
}

config::Section<OptimConfig> OptimSection(const std::string& prefix) {
  config::Section<OptimConfig> s(prefix);
  OptimConfig::AddTo(s);
  return s;
}

}  // namespace rlhf::trainer
