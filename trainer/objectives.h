// The objectives the learner optimises: each reads a micro-batch, runs the model(s) and returns its share
// of the step's loss with GLOBAL denominators (see learner.h). The math itself lives in trainer/algo.
//
// Token alignment: a micro-batch holds whole rows (prompt + completion); target_mask[b, t] = 1 when token
// t is trained on, i.e. scored by the prediction at t - 1. Per-token fields ([B, T]) are aligned with ids
// the same way: field[b, t] belongs to token t. Dimension key: B rows, T tokens, V vocabulary.
#pragma once

#include <torch/torch.h>

#include "common/model/transformer.h"
#include "trainer/algo/kl.h"
#include "trainer/algo/masked.h"
#include "trainer/algo/ppo.h"
#include "trainer/algo/preference.h"
#include "trainer/learner.h"

namespace rlhf::trainer {

// Log-probs (and entropy) of tokens 1..T-1 of each row at a temperature: [B, T-1] each, f32.
model::TokenStats RowTokenStats(model::TransformerImpl& net, const MicroBatch& mb, double temperature,
                                bool want_entropy);

// SFT: cross-entropy on the target tokens, summed and divided by the global number of target tokens.
// Metrics: loss, nll_tokens.
class SftObjective : public Objective {
 public:
  explicit SftObjective(model::Transformer policy) : policy_(std::move(policy)) {}
  std::vector<double> Normalizers(const MicroBatch& mb) const override;
  torch::Tensor Loss(const MicroBatch& mb, const std::vector<double>& totals, StepMetrics& metrics) override;

 private:
  model::Transformer policy_;
};

// Reward model (Bradley-Terry): rows 0..P-1 are the chosen responses, rows P..2P-1 the rejected ones of the
// same prompts; optional field "margin" [P]. Loss mean over the global number of pairs. Metrics: loss,
// accuracy, margin, reward_chosen, reward_rejected.
class RewardObjective : public Objective {
 public:
  RewardObjective(model::Transformer rm, double centering) : rm_(std::move(rm)), centering_(centering) {}
  std::vector<double> Normalizers(const MicroBatch& mb) const override;
  torch::Tensor Loss(const MicroBatch& mb, const std::vector<double>& totals, StepMetrics& metrics) override;

 private:
  model::Transformer rm_;
  double centering_;
};

// Paired preference losses (docs/algorithms.md, "Preference losses") on sequence log-probs: rows as in
// RewardObjective (chosen then rejected), target_mask on the completions. DPO needs fields "ref_chosen" /
// "ref_rejected" [P] (reference sequence log-probs); the others are reference-free. nll_chosen is the
// per-token mean NLL of each chosen completion. Loss mean over the global number of pairs.
// Metrics: loss, accuracy, margin, reward_chosen, reward_rejected (the loss's implicit rewards).
enum class PairLoss {
  kDpo,    // algo::DpoLossFn (sigmoid / cDPO, ipo, hinge, robust)
  kOrpo,   // algo::OrpoLossFn on mean log-probs, + NLL of chosen
  kSimpo,  // algo::SimpoLossFn on mean log-probs
  kCpo,    // algo::CpoLossFn on summed log-probs, + alpha * NLL of chosen
  kRrhf,   // algo::RrhfLossFn with K = 2 (chosen ranked above rejected), + sft_weight * NLL of chosen
};
struct PairLossConfig {
  PairLoss loss = PairLoss::kDpo;
  algo::DpoOptions dpo;        // kDpo
  double beta = 0.1;           // orpo, simpo, cpo
  double gamma = 0.5;          // simpo target margin
  double alpha = 1.0;          // cpo NLL weight
  double rpo_alpha = 0;        // dpo: weight of the NLL of chosen added to the DPO loss (RPO); 0 = plain DPO
  double label_smoothing = 0;  // simpo, cpo
  double sft_weight = 1.0;     // rrhf
};
class PairObjective : public Objective {
 public:
  PairObjective(model::Transformer policy, PairLossConfig config) : policy_(std::move(policy)), config_(config) {}
  std::vector<double> Normalizers(const MicroBatch& mb) const override;
  torch::Tensor Loss(const MicroBatch& mb, const std::vector<double>& totals, StepMetrics& metrics) override;

 private:
  model::Transformer policy_;
  PairLossConfig config_;
};

// KTO on unpaired completions: one row per (prompt, completion), fields "ref" [B] (reference sequence
// log-probs), "desirable" [B] (1 / 0) and "z0" [1] (the reference point: the batch's mean log-ratio on
// mismatched pairs, clamped at 0, computed by the caller without gradient). Loss mean over the global
// number of rows. Metrics: loss, reward_chosen / reward_rejected (desirable / undesirable rows), kl (z0).
class KtoObjective : public Objective {
 public:
  KtoObjective(model::Transformer policy, algo::KtoOptions options) : policy_(std::move(policy)), options_(options) {}
  std::vector<double> Normalizers(const MicroBatch& mb) const override;
  torch::Tensor Loss(const MicroBatch& mb, const std::vector<double>& totals, StepMetrics& metrics) override;

 private:
  model::Transformer policy_;
  algo::KtoOptions options_;
};

// The PPO-family update (PPO with a critic, GRPO and relatives without): per-token fields
//   old_logprobs, advantages (always); ref_logprobs (kl_in_loss); behaviour (tis_cap > 0);
//   returns, old_values (with a critic).
// loss = agg(pg) + vf_coef agg(vf) - ent_coef agg(H) + beta agg(kl), every agg over the global denominator.
// Metrics: loss, pg_loss, vf_loss, entropy, kl_loss, clip_fraction, approx_kl, ratio_mean, vf_clip_fraction,
// value_explained_variance (with a critic).
struct PpoLossConfig {
  algo::PolicyLossOptions policy;
  algo::Aggregation aggregation = algo::Aggregation::kTokenMean;
  int64_t norm_length = 0;       // L_max of seq_mean_token_sum_norm (Dr. GRPO); the caller sets it
  double temperature = 1.0;      // log-probs at the sampling temperature
  double vf_coef = 0.5;
  algo::ValueClip value_clip = algo::ValueClip::kPpo;
  double vclip = 0.2;
  double ent_coef = 0.0;
  bool kl_in_loss = false;       // GRPO style: + beta agg(kl(lp, ref))
  double kl_beta = 0.0;
  algo::KlOptions kl;
};

class PpoObjective : public Objective {
 public:
  // critic may be empty (critic-free update).
  PpoObjective(model::Transformer policy, model::Transformer critic, PpoLossConfig config)
      : policy_(std::move(policy)), critic_(std::move(critic)), config_(config) {}
  std::vector<double> Normalizers(const MicroBatch& mb) const override;
  torch::Tensor Loss(const MicroBatch& mb, const std::vector<double>& totals, StepMetrics& metrics) override;

 private:
  model::Transformer policy_, critic_;
  PpoLossConfig config_;
};

// Values of a critic for tokens 1..T-1 of each row (the value of the state before each token): [B, T-1] f32.
torch::Tensor RowValues(model::TransformerImpl& critic, const MicroBatch& mb);

}  // namespace rlhf::trainer
