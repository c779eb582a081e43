#include "trainer/rl_update.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include "absl/strings/str_cat.h"
#include "trainer/algo/advantages.h"
#include "trainer/batching.h"

namespace rlhf::trainer {

void RlConfig::AddTo(config::Section<RlConfig>& s) {
  using R = RlConfig;
  s.AddChoice("advantage", &R::advantage,
              {{"auto", Advantage::kAuto}, {"gae", Advantage::kGae}, {"grpo", Advantage::kGrpo},
               {"dr_grpo", Advantage::kDrGrpo}, {"rloo", Advantage::kRloo}, {"reinforce_pp", Advantage::kReinforcePp},
               {"reinforce_pp_baseline", Advantage::kReinforcePpBaseline}, {"process", Advantage::kProcess}},
              "estimator: auto (gae with a critic, else grpo) | gae | grpo | dr_grpo | rloo | reinforce_pp | "
              "reinforce_pp_baseline | process (per-step rewards of the samples, GRPO-normalised)");
  s.Add("group_size", &R::group_size, "G: samples per prompt (consecutive in the batch)", config::AtLeast(1));
  s.Add("ppo_epochs", &R::ppo_epochs, "passes over each rollout batch", config::AtLeast(1));
  s.Add("minibatch_size", &R::minibatch_size,
        "samples per optimizer step over all ranks; 0 = the whole rollout batch", config::AtLeast(0));
  s.Add("micro_batch_size", &R::micro_batch_size, "samples per forward/backward on one rank", config::AtLeast(1));
  s.Add("gamma", &R::gamma, "discount of GAE and return-to-go", config::InRange(0, 1));
  s.Add("lam", &R::lam, "GAE lambda", config::InRange(0, 1));
  s.Add("whiten_advantages", &R::whiten_advantages, "whiten GAE advantages over the global batch");
  s.Add("kl_coef", &R::kl_coef, "beta: the initial (or fixed) KL coefficient", config::AtLeast(0));
  s.AddChoice("kl_placement", &R::kl_placement,
              {{"auto", KlPlacement::kAuto}, {"reward", KlPlacement::kReward}, {"loss", KlPlacement::kLoss},
               {"none", KlPlacement::kNone}},
              "auto (reward for gae / reinforce_pp, loss for grpo / dr_grpo / rloo) | reward (r_t -= beta kl_t) | "
              "loss (+ beta agg(kl)) | none");
  s.AddChoice("kl_estimator", &R::kl_estimator,
              {{"auto", KlEstimatorChoice::kAuto}, {"k1", KlEstimatorChoice::kK1}, {"k2", KlEstimatorChoice::kK2},
               {"k3", KlEstimatorChoice::kK3}, {"low_var_kl", KlEstimatorChoice::kK3}},
              "auto (k1 in the reward, k3 in the loss) | k1 | k2 | k3 (low_var_kl)");
  s.Add("kl_clamp", &R::kl_clamp, "clamp the log-ratio to [-20, 20] and the KL to [-10, 10] (verl, OpenRLHF)");
  s.Add("kl_target", &R::kl_target, "adaptive KL (Ziegler et al.): target KL per sequence; 0 = fixed coefficient",
        config::AtLeast(0));
  s.Add("kl_horizon", &R::kl_horizon, "adaptive KL horizon in samples", config::AtLeast(1));
  s.Add("score_clip", &R::score_clip, "clip sequence scores to [-c, c]; 0 = off", config::AtLeast(0));
  s.Add("missing_eos_penalty", &R::missing_eos_penalty,
        "added to the score of responses cut at the length limit (e.g. -1); 0 = off");
  s.Add("mask_truncated", &R::mask_truncated, "responses cut at the length limit contribute no loss");
  s.Add("group_eps", &R::group_eps, "epsilon added to the group std (grpo)", config::AtLeast(0));
  s.Add("clip_eps_low", &R::clip_eps_low, "PPO clip: ratio >= 1 - eps_low", config::InRange(0, 1));
  s.Add("clip_eps_high", &R::clip_eps_high, "PPO clip: ratio <= 1 + eps_high (DAPO: 0.28)", config::AtLeast(0));
  s.Add("dual_clip", &R::dual_clip, "dual clip constant c > 1 for negative advantages; 0 = off", config::AtLeast(0));
  s.AddChoice("ratio_level", &R::ratio_level,
              {{"token", algo::RatioLevel::kToken}, {"sequence", algo::RatioLevel::kSequence}},
              "importance ratio per token, or per sequence (GSPO)");
  s.Add("tis_cap", &R::tis_cap, "truncated importance weights against the behaviour log-probs; 0 = off",
        config::AtLeast(0));
  s.Add("max_behaviour_gap", &R::max_behaviour_gap,
        "a group whose behaviour log-probs (the rollout worker's) differ from the learner's by more than this, "
        "mean |learner - behaviour| nats per response token, is refused: not trained, recorded as dropped with its "
        "rollout worker named (on-policy the gap is ~1e-6; a tampered or mismatched worker shows nats). Online "
        "samples only (those the run's rollout workers generated); 0 = off",
        config::AtLeast(0));
  s.AddChoice("loss_aggregation", &R::loss_aggregation,
              {{"token_mean", algo::Aggregation::kTokenMean},
               {"seq_mean_token_mean", algo::Aggregation::kSeqMeanTokenMean},
               {"seq_mean_token_sum_norm", algo::Aggregation::kSeqMeanTokenSumNorm}},
              "token_mean | seq_mean_token_mean | seq_mean_token_sum_norm");
  s.Add("norm_length", &R::norm_length, "L_max of seq_mean_token_sum_norm; 0 = the longest response in the batch",
        config::AtLeast(0));
  s.Add("vf_coef", &R::vf_coef, "weight of the value loss", config::AtLeast(0));
  s.AddChoice("value_clip", &R::value_clip,
              {{"none", algo::ValueClip::kNone}, {"ppo", algo::ValueClip::kPpo}, {"study_notes", algo::ValueClip::kStudyNotes}},
              "none | ppo | study_notes");
  s.Add("vclip", &R::vclip, "value clip range", config::AtLeast(0));
  s.Add("ent_coef", &R::ent_coef, "entropy bonus coefficient", config::AtLeast(0));
  s.Add("shuffle_minibatches", &R::shuffle_minibatches, "shuffle this rank's samples before cutting minibatches");
}

void KlController::Update(double kl, double n_samples) {
  if (target_ <= 0) return;
  const double err = std::clamp(kl / target_ - 1.0, -0.2, 0.2);
  value_ *= 1.0 + err * n_samples / horizon_;
}

RlUpdate::RlUpdate(Learner* learner, model::Transformer policy, model::Transformer critic,
                   model::Transformer reference, RlConfig config, int32_t pad_id)
    : learner_(learner),
      policy_(std::move(policy)),
      critic_(std::move(critic)),
      reference_(std::move(reference)),
      config_(std::move(config)),
      pad_id_(pad_id),
      kl_(config_.kl_coef, config_.kl_target, config_.kl_horizon) {
  advantage_ = config_.advantage != Advantage::kAuto ? config_.advantage
               : critic_.is_empty()                   ? Advantage::kGrpo
                                                      : Advantage::kGae;
  const bool group_estimator = advantage_ == Advantage::kGrpo || advantage_ == Advantage::kDrGrpo ||
                               advantage_ == Advantage::kRloo || advantage_ == Advantage::kProcess;
  kl_placement_ = config_.kl_placement != KlPlacement::kAuto ? config_.kl_placement
                  : group_estimator                         ? KlPlacement::kLoss
                                                            : KlPlacement::kReward;
  switch (config_.kl_estimator) {
    case KlEstimatorChoice::kK1: kl_estimator_ = algo::KlEstimator::kK1; break;
    case KlEstimatorChoice::kK2: kl_estimator_ = algo::KlEstimator::kK2; break;
    case KlEstimatorChoice::kK3: kl_estimator_ = algo::KlEstimator::kK3; break;
    case KlEstimatorChoice::kAuto:
      kl_estimator_ = kl_placement_ == KlPlacement::kLoss ? algo::KlEstimator::kK3 : algo::KlEstimator::kK1;
      break;
  }
}

const char* AdvantageName(Advantage a) {
  switch (a) {
    case Advantage::kAuto: return "auto";
    case Advantage::kGae: return "gae";
    case Advantage::kGrpo: return "grpo";
    case Advantage::kDrGrpo: return "dr_grpo";
    case Advantage::kRloo: return "rloo";
    case Advantage::kReinforcePp: return "reinforce_pp";
    case Advantage::kReinforcePpBaseline: return "reinforce_pp_baseline";
    case Advantage::kProcess: return "process";
  }
  return "?";
}

namespace {
// Sums `named` over the ranks, name by name (every rank passes the same names).
absl::StatusOr<std::map<std::string, double>> SumByName(comm::Group& group, std::map<std::string, double> named) {
  std::vector<double> v;
  for (const auto& [_, x] : named) v.push_back(x);
  ASSIGN_OR_RETURN(v, group.SumDoubles(std::move(v)));
  size_t i = 0;
  for (auto& [_, x] : named) x = v[i++];
  return named;
}

// The behaviour check of rl.max_behaviour_gap: per group of this rank, the mean |learner - behaviour|
// log-prob over the response tokens of its samples from the run's rollout workers (rollout_worker set) that
// carry behaviour log-probs (`sample_gap`: per sample, the sum of |learner - behaviour| over its response
// tokens); a group above `bound` has its rows of `target_mask` zeroed (not trained). Returns, identical on every rank, "refused_groups" (how
// many) and "refused_group/<i>" = the gap of each refused group, i its position in the whole batch (the
// ranks' shards in rank order).
absl::StatusOr<std::map<std::string, double>> RefuseMismatchedGroups(comm::Group& group, const std::vector<Sample>& samples,
                                                                     const torch::Tensor& sample_gap,
                                                                     const torch::Tensor& response, int64_t group_size,
                                                                     double bound, torch::Tensor& target_mask) {
  const int64_t n = static_cast<int64_t>(samples.size()), groups = n / group_size;
  auto tokens = response.sum(1);
  // Where this rank's groups sit in the batch.
  std::vector<double> counts(static_cast<size_t>(group.size()), 0.0);
  counts[static_cast<size_t>(group.rank())] = static_cast<double>(groups);
  ASSIGN_OR_RETURN(counts, group.SumDoubles(std::move(counts)));
  int64_t offset = 0, total = 0;
  for (int r = 0; r < group.size(); ++r) {
    if (r < group.rank()) offset += static_cast<int64_t>(counts[static_cast<size_t>(r)]);
    total += static_cast<int64_t>(counts[static_cast<size_t>(r)]);
  }
  std::vector<double> gaps(static_cast<size_t>(total), 0.0);
  for (int64_t g = 0; g < groups; ++g) {
    double sum = 0, tok = 0;
    for (int64_t i = g * group_size; i < (g + 1) * group_size; ++i) {
      const Sample& s = samples[static_cast<size_t>(i)];
      // Only samples of the run's own rollout workers are checked (offline sample files may come from any
      // engine), and only those with behaviour log-probs.
      if (!s.has_rollout_worker() || s.logprobs_size() != s.completion_ids_size()) continue;
      sum += sample_gap[i].item<double>(), tok += tokens[i].item<double>();
    }
    const double mean = tok > 0 ? sum / tok : 0.0;
    if (mean <= bound) continue;
    gaps[static_cast<size_t>(offset + g)] = mean;
    target_mask.slice(0, g * group_size, (g + 1) * group_size).zero_();
  }
  ASSIGN_OR_RETURN(gaps, group.SumDoubles(std::move(gaps)));
  std::map<std::string, double> out = {{"refused_groups", 0.0}};
  for (int64_t i = 0; i < total; ++i) {
    if (gaps[static_cast<size_t>(i)] <= 0) continue;
    out["refused_groups"] += 1;
    out[absl::StrCat("refused_group/", i)] = gaps[static_cast<size_t>(i)];
  }
  return out;
}

// Pads [N, T-1] (values of tokens 1..T-1) back to [N, T] aligned with ids.
torch::Tensor Unshift(const torch::Tensor& x) { return torch::cat({torch::zeros({x.size(0), 1}, x.options()), x}, 1); }
}  // namespace

absl::Status CheckSamples(const std::vector<Sample>& samples, int64_t group_size, int64_t vocab, int64_t context) {
  const int64_t n = static_cast<int64_t>(samples.size());
  if (n == 0) return absl::InvalidArgumentError("a rollout batch needs at least one sample on every rank");
  if (group_size < 1 || n % group_size != 0) {
    return absl::InvalidArgumentError(absl::StrCat(n, " samples are not whole groups of ", group_size));
  }
  const double temperature = samples[0].temperature() > 0 ? samples[0].temperature() : 1.0;
  auto good_logprobs = [](const auto& v, int64_t len) {
    if (v.size() == 0) return true;
    if (v.size() != len) return false;
    for (float x : v) {
      if (!std::isfinite(x) || x > 1e-3f) return false;
    }
    return true;
  };
  for (int64_t i = 0; i < n; ++i) {
    const Sample& s = samples[static_cast<size_t>(i)];
    auto bad = [&](const std::string& what) {
      return absl::InvalidArgumentError(absl::StrCat("sample ", i, " (prompt ", s.prompt_id(), "): ", what));
    };
    if (!s.has_reward()) return bad("has no reward: score the samples first");
    if (!std::isfinite(s.reward())) return bad("has a reward that is not a finite number");
    if (s.completion_ids_size() == 0) return bad("has an empty completion");
    if (group_size > 1 && i % group_size != 0 && s.prompt_id() != samples[static_cast<size_t>(i - 1)].prompt_id()) {
      return bad(absl::StrCat("groups of ", group_size, " samples of one prompt must be consecutive"));
    }
    if (!std::isfinite(s.temperature())) return bad("has a temperature that is not a finite number");
    if ((s.temperature() > 0 ? s.temperature() : 1.0) != temperature) return bad("samples of one batch need one temperature");
    if (s.prompt_ids_size() + s.completion_ids_size() > context) return bad("is longer than the model's context");
    for (const auto* ids : {&s.prompt_ids(), &s.completion_ids()}) {
      for (int32_t id : *ids) {
        if (id < 0 || id >= vocab) return bad(absl::StrCat("token id ", id, " is outside the vocabulary"));
      }
    }
    if (!good_logprobs(s.logprobs(), s.completion_ids_size()) || !good_logprobs(s.ref_logprobs(), s.completion_ids_size())) {
      return bad("log-probs must be finite, <= 0 and one per completion token");
    }
  }
  return absl::OkStatus();
}

absl::Status RlUpdate::Check(const std::vector<Sample>& samples) const {
  return CheckSamples(samples, config_.group_size, policy_->config().vocab_size,
                      policy_->config().max_position_embeddings);
}

absl::StatusOr<std::map<std::string, double>> RlUpdate::Update(const std::vector<Sample>& samples, uint64_t seed) {
  const RlConfig& c = config_;
  auto& group = learner_->group();
  RETURN_IF_ERROR(Check(samples));
  const int64_t n = static_cast<int64_t>(samples.size());
  const double temperature = samples[0].temperature() > 0 ? samples[0].temperature() : 1.0;
  bool have_ref = true;
  std::vector<TokenSeq> seqs(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    const Sample& s = samples[static_cast<size_t>(i)];
    if (s.ref_logprobs_size() != s.completion_ids_size()) have_ref = false;
    auto& q = seqs[static_cast<size_t>(i)];
    const bool masked = c.mask_truncated && s.finish_reason() == FINISH_REASON_LENGTH;
    for (int32_t id : s.prompt_ids()) q.ids.push_back(id), q.target.push_back(0);
    for (int32_t id : s.completion_ids()) q.ids.push_back(id), q.target.push_back(masked ? 0 : 1);
  }
  std::vector<const TokenSeq*> ptrs;
  for (const auto& q : seqs) ptrs.push_back(&q);
  MicroBatch full = PadRows(ptrs, pad_id_);  // [N, T]
  const int64_t t_len = full.ids.size(1);
  // Response tokens before masking of truncated ones (for statistics).
  auto response = torch::zeros({n, t_len}, torch::kFloat32);
  auto behaviour = torch::zeros({n, t_len}, torch::kFloat32);
  auto ref_given = torch::zeros({n, t_len}, torch::kFloat32);
  auto scores = torch::zeros({n}, torch::kFloat32);
  std::vector<double> lengths(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    const Sample& s = samples[static_cast<size_t>(i)];
    const int64_t p = s.prompt_ids_size(), len = s.completion_ids_size();
    response[i].slice(0, p, p + len).fill_(1.0);
    behaviour[i].slice(0, p, p + len).copy_(torch::tensor(std::vector<float>(s.logprobs().begin(), s.logprobs().end())));
    if (s.logprobs_size() != len) behaviour[i].zero_();
    if (have_ref) {
      ref_given[i].slice(0, p, p + len).copy_(
          torch::tensor(std::vector<float>(s.ref_logprobs().begin(), s.ref_logprobs().end())));
    }
    float score = s.reward();
    if (s.finish_reason() == FINISH_REASON_LENGTH) score += static_cast<float>(c.missing_eos_penalty);
    scores[i] = score;
    lengths[static_cast<size_t>(i)] = static_cast<double>(len);
  }
  // KL needs reference log-probs: from the samples, else from the reference model.
  const bool use_kl = kl_placement_ != KlPlacement::kNone && (have_ref || !reference_.is_empty());
  if (kl_placement_ != KlPlacement::kNone && c.kl_coef > 0 && !use_kl) {
    return absl::InvalidArgumentError("KL needs ref_logprobs in every sample or a reference model");
  }

  // 2. Old log-probs, values and reference log-probs, no gradient, micro-batch by micro-batch.
  auto old_lp = torch::zeros({n, t_len}, torch::kFloat32);
  auto values = torch::zeros({n, t_len}, torch::kFloat32);
  auto ref_lp = have_ref ? ref_given : torch::zeros({n, t_len}, torch::kFloat32);
  RETURN_IF_ERROR(GuardExceptions("rollout batch forward", [&]() -> absl::Status {
    torch::NoGradGuard no_grad;
    std::vector<size_t> all(static_cast<size_t>(n));
    std::iota(all.begin(), all.end(), 0);
    for (const auto& chunk : Chunks(all, c.micro_batch_size)) {
      std::vector<int64_t> rows(chunk.begin(), chunk.end());
      MicroBatch mb = SelectRows(full, rows);
      const int64_t t = mb.ids.size(1);
      auto idx = torch::tensor(rows, torch::kInt64);
      auto put = [&](torch::Tensor& dst, const torch::Tensor& v) {  // v [b, t-1] for tokens 1..t-1
        auto block = torch::zeros({static_cast<int64_t>(rows.size()), t_len}, torch::kFloat32);
        block.slice(1, 1, t).copy_(v);
        dst.index_copy_(0, idx, block);
      };
      put(old_lp, RowTokenStats(*policy_, mb, temperature, false).logprobs);
      if (!critic_.is_empty()) put(values, RowValues(*critic_, mb));
      if (use_kl && !have_ref) put(ref_lp, RowTokenStats(*reference_, mb, temperature, false).logprobs);
    }
    return absl::OkStatus();
  }));

  // 2b. How far the learner's log-probs are from the behaviour log-probs the rollout sampled with, per
  //     sample (summed over its response tokens). Groups whose gap is over the bound are refused: their
  //     tokens leave the update (and every denominator), and every rank learns their positions in the batch.
  const auto sample_gap = ((old_lp - behaviour).abs() * response).sum(1);  // [N]
  std::map<std::string, double> refusals;
  if (c.max_behaviour_gap > 0) {
    ASSIGN_OR_RETURN(refusals, RefuseMismatchedGroups(group, samples, sample_gap, response, c.group_size,
                                                      c.max_behaviour_gap, full.target_mask));
  }

  // 3. Scores and advantages (on tokens 1..T-1).
  auto mask = full.target_mask.slice(1, 1);            // [N, T-1] trained tokens
  auto resp = response.slice(1, 1);                    // [N, T-1] every response token
  auto old_s = old_lp.slice(1, 1), ref_s = ref_lp.slice(1, 1), val_s = values.slice(1, 1);
  algo::KlOptions klo;
  klo.estimator = kl_estimator_;
  klo.clamp = c.kl_clamp;
  auto kl_tok = use_kl ? algo::KlPenalty(old_s, ref_s, klo) * resp : torch::zeros_like(old_s);  // [N, T-1]
  const double beta = kl_.value();
  const bool kl_in_reward = kl_placement_ == KlPlacement::kReward;
  auto clipped = c.score_clip > 0 ? scores.clamp(-c.score_clip, c.score_clip) : scores;
  torch::Tensor adv, returns;
  if (advantage_ == Advantage::kGae) {
    if (critic_.is_empty()) return absl::InvalidArgumentError("advantage 'gae' needs a critic");
    auto rewards = algo::TokenRewards(scores, kl_in_reward ? kl_tok : torch::Tensor(), resp, beta, c.score_clip);
    auto g = algo::Gae(rewards, val_s, resp, c.gamma, c.lam);
    returns = g.returns;
    if (c.whiten_advantages) {
      ASSIGN_OR_RETURN(adv, GlobalWhiten(group, g.advantages, mask));
    } else {
      adv = g.advantages;
    }
  } else if (advantage_ == Advantage::kReinforcePp || advantage_ == Advantage::kReinforcePpBaseline) {
    auto s = clipped;
    if (advantage_ == Advantage::kReinforcePpBaseline && c.group_size > 1) {
      s = s - s.view({-1, c.group_size}).mean(1, true).expand({-1, c.group_size}).reshape({-1});
    }
    auto rewards = algo::TokenRewards(s, kl_in_reward ? kl_tok : torch::Tensor(), resp, beta);
    ASSIGN_OR_RETURN(adv, GlobalWhiten(group, algo::ReturnToGo(rewards, resp, c.gamma), mask));
  } else if (advantage_ == Advantage::kProcess) {
    // Process supervision: the scorer's step rewards at the tokens that end the steps (completion token
    // indices, moved to row coordinates here); a completion without a scored step counts as one step worth
    // 0 at its last token.
    int64_t steps = 1;
    for (const auto& s : samples) steps = std::max<int64_t>(steps, s.step_rewards_size());
    auto step_rewards = torch::zeros({n, steps}, torch::kFloat32);
    auto step_ends = torch::full({n, steps}, -1, torch::kInt64);
    for (int64_t i = 0; i < n; ++i) {
      const Sample& s = samples[static_cast<size_t>(i)];
      const int64_t p = s.prompt_ids_size(), len = s.completion_ids_size();
      if (s.step_rewards_size() != s.step_ends_size()) {
        return absl::InvalidArgumentError(absl::StrCat("sample ", i, ": advantage 'process' needs step_ends for every "
                                                       "step reward (set reward.tokenizer on the scorer)"));
      }
      if (s.step_rewards_size() == 0) {
        step_ends[i][0] = p + len - 2;  // the last response token, in [N, T-1] coordinates
        continue;
      }
      for (int j = 0; j < s.step_rewards_size(); ++j) {
        const int64_t e = std::clamp<int64_t>(s.step_ends(j), 0, len - 1);
        step_rewards[i][j] = s.step_rewards(j);
        step_ends[i][j] = p + e - 1;
      }
    }
    adv = algo::ProcessAdvantages(step_rewards, step_ends, resp, c.group_size, c.group_eps);
  } else {
    const auto kind = advantage_ == Advantage::kDrGrpo ? algo::GroupAdvantage::kDrGrpo
                      : advantage_ == Advantage::kRloo    ? algo::GroupAdvantage::kRloo
                                                          : algo::GroupAdvantage::kGrpo;
    adv = algo::BroadcastToTokens(algo::GroupAdvantages(clipped, c.group_size, kind, c.group_eps), resp);
  }
  full.fields["old_logprobs"] = old_lp;
  full.fields["advantages"] = Unshift(adv.to(torch::kFloat32));
  full.fields["behaviour"] = behaviour;
  if (kl_placement_ == KlPlacement::kLoss) full.fields["ref_logprobs"] = ref_lp;
  if (!critic_.is_empty()) {
    full.fields["old_values"] = values;
    full.fields["returns"] = Unshift(returns.to(torch::kFloat32));
  }

  // Rollout statistics, global: sums over the ranks, by name.
  std::map<std::string, double> out;
  {
    std::map<std::string, double> sum;
    sum["samples"] = static_cast<double>(n);
    sum["score"] = scores.sum().item<double>();
    sum["score_sq"] = scores.pow(2).sum().item<double>();
    sum["length"] = std::accumulate(lengths.begin(), lengths.end(), 0.0);
    sum["truncated"] = 0;
    for (const auto& s : samples) sum["truncated"] += s.finish_reason() == FINISH_REASON_LENGTH ? 1 : 0;
    sum["response_tokens"] = resp.sum().item<double>();
    sum["kl"] = kl_tok.sum().item<double>();
    sum["kl_k3"] = use_kl ? (algo::KlPenalty(old_s, ref_s, algo::KlOptions{}) * resp).sum().item<double>() : 0.0;  // >= 0
    sum["groups"] = static_cast<double>(n / c.group_size);
    sum["groups_without_signal"] =
        c.group_size > 1
            ? static_cast<double>(n / c.group_size) - algo::GroupsWithSignal(scores, c.group_size).sum().item<double>()
            : 0.0;
    // The behaviour gap (0 up to rounding when strictly on-policy: a check that both sides score the same
    // tokens).
    sum["behaviour_gap"] = sample_gap.sum().item<double>();
    // Reward sources: every rank lists the sources of its samples; the union must agree, so use the names of
    // the first sample (the scorer gives every sample the same sources).
    std::vector<std::string> sources;
    for (const auto& [k, _] : samples[0].reward_parts()) sources.push_back(k);
    std::sort(sources.begin(), sources.end());
    {
      // The per-source sums below only line up if every rank lists the same sources.
      std::string joined;
      for (const auto& k : sources) joined += k + ";";
      const double h = static_cast<double>(std::hash<std::string>{}(joined) % 1000003);
      ASSIGN_OR_RETURN(auto agree, group.SumDoubles({h}));
      if (agree[0] != h * group.size()) {
        spdlog::warn("ranks see different reward sources; per-source reward statistics are left out");
        sources.clear();
      }
    }
    for (const auto& k : sources) {
      double s1 = 0, s2 = 0;
      for (const auto& s : samples) {
        auto it = s.reward_parts().find(k);
        double x = it == s.reward_parts().end() ? 0.0 : it->second;
        s1 += x, s2 += x * x;
      }
      sum["source/" + k] = s1, sum["source_sq/" + k] = s2;
    }
    // Explained variance of the critic's values before the update.
    if (!critic_.is_empty()) {
      auto d = (returns - val_s) * resp;
      auto r = returns * resp;
      sum["return"] = r.sum().item<double>(), sum["return_sq"] = r.pow(2).sum().item<double>();
      sum["residual"] = d.sum().item<double>(), sum["residual_sq"] = d.pow(2).sum().item<double>();
    }
    ASSIGN_OR_RETURN(sum, SumByName(group, std::move(sum)));
    const double N = sum["samples"], T = std::max(sum["response_tokens"], 1.0);
    auto stdev = [&](double s1, double s2, double cnt) {
      const double m = s1 / cnt;
      return std::sqrt(std::max(0.0, s2 / cnt - m * m));
    };
    out["samples"] = N;
    out["reward_mean"] = sum["score"] / N;
    out["reward_std"] = stdev(sum["score"], sum["score_sq"], N);
    out["response_length"] = sum["length"] / N;
    out["truncated_fraction"] = sum["truncated"] / N;
    if (use_kl) {
      out["kl_ref"] = sum["kl"] / T;            // per token, with the configured estimator
      out["kl_ref_k3"] = sum["kl_k3"] / T;
      out["kl_ref_sequence"] = sum["kl"] / N;   // per sequence (what the adaptive controller tracks)
    }
    out["behaviour_logprob_gap"] = sum["behaviour_gap"] / T;  // mean |learner - behaviour| log-prob per response token
    for (const auto& [k, v] : refusals) out[k] = v;
    out["kl_coef"] = beta;
    out["zero_variance_group_fraction"] = c.group_size > 1 ? sum["groups_without_signal"] / sum["groups"] : 0.0;
    for (const auto& k : sources) {
      out["reward_mean/" + k] = sum["source/" + k] / N;
      out["reward_std/" + k] = stdev(sum["source/" + k], sum["source_sq/" + k], N);
    }
    if (!critic_.is_empty()) {
      const double var_r = sum["return_sq"] / T - std::pow(sum["return"] / T, 2);
      const double var_d = sum["residual_sq"] / T - std::pow(sum["residual"] / T, 2);
      out["value_explained_variance"] = 1.0 - var_d / std::max(var_r, 1e-12);
    }
  }

  // 4. Epochs of minibatches.
  PpoLossConfig lc;
  lc.policy.eps_low = c.clip_eps_low;
  lc.policy.eps_high = c.clip_eps_high;
  lc.policy.dual_clip = c.dual_clip;
  lc.policy.ratio_level = c.ratio_level;
  lc.policy.tis_cap = c.tis_cap;
  lc.aggregation = c.loss_aggregation;
  lc.temperature = temperature;
  lc.vf_coef = c.vf_coef;
  lc.value_clip = c.value_clip;
  lc.vclip = c.vclip;
  lc.ent_coef = c.ent_coef;
  lc.kl_in_loss = kl_placement_ == KlPlacement::kLoss && beta > 0;
  lc.kl_beta = beta;
  lc.kl = klo;
  if (lc.aggregation == algo::Aggregation::kSeqMeanTokenSumNorm) {
    double longest = 0;
    for (double l : lengths) longest = std::max(longest, l);
    ASSIGN_OR_RETURN(longest, group.MaxDouble(longest));
    lc.norm_length = c.norm_length > 0 ? c.norm_length : static_cast<int64_t>(longest);
  }
  PpoObjective objective(policy_, critic_, lc);

  ASSIGN_OR_RETURN(auto counts, group.SumDoubles({static_cast<double>(n)}));
  const int64_t global_n = static_cast<int64_t>(counts[0]);
  const int64_t mbs = c.minibatch_size > 0 ? c.minibatch_size : global_n;
  // global_n / mbs optimizer steps per epoch (at least one); each rank cuts its samples into that many
  // near-equal parts, so a batch that does not divide evenly (the end of an epoch) still trains.
  const int64_t num_minibatches = std::max<int64_t>(1, global_n / mbs);
  if (n < num_minibatches) {
    return absl::InvalidArgumentError(absl::StrCat("this rank holds ", n, " samples, fewer than the ", num_minibatches,
                                                   " minibatches of the rollout batch"));
  }
  std::map<std::string, double> sums;
  int64_t steps = 0;
  for (int64_t epoch = 0; epoch < c.ppo_epochs; ++epoch) {
    std::vector<size_t> order(static_cast<size_t>(n));
    std::iota(order.begin(), order.end(), 0);
    if (c.shuffle_minibatches) {
      std::mt19937_64 rng(seed * 1000003ULL + static_cast<uint64_t>(epoch) * 7919ULL + static_cast<uint64_t>(group.rank()));
      std::shuffle(order.begin(), order.end(), rng);
    }
    for (int64_t k = 0; k < num_minibatches; ++k) {
      std::vector<size_t> part(order.begin() + k * n / num_minibatches, order.begin() + (k + 1) * n / num_minibatches);
      std::vector<MicroBatch> micro;
      for (const auto& chunk : Chunks(part, c.micro_batch_size)) {
        micro.push_back(SelectRows(full, std::vector<int64_t>(chunk.begin(), chunk.end())));
      }
      ASSIGN_OR_RETURN(auto r, learner_->Step(micro, objective));
      for (const auto& [name, v] : r.metrics) sums[name] += v;
      if (steps == 0) {
        out["first_minibatch/ratio_mean"] = r.metrics["ratio_mean"];
        out["first_minibatch/clip_fraction"] = r.metrics["clip_fraction"];
      }
      ++steps;
    }
  }
  for (const auto& [name, v] : sums) out[name] = v / static_cast<double>(steps);
  out["skipped_steps"] = static_cast<double>(learner_->skipped_steps());
  out["optimizer_steps"] = static_cast<double>(steps);
  // 5. Adaptive KL.
  if (out.count("kl_ref_sequence")) kl_.Update(out.at("kl_ref_sequence"), static_cast<double>(global_n));
  return out;
}

}  // namespace rlhf::trainer
