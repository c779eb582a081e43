// The PPO-family update losses, top to bottom (docs/algorithms.md, "PPO losses"):
//   ratio  = exp(lp - old)                       (token level), or GSPO's sequence-level ratio
//   pg_t   = max(-A_t ratio_t, -A_t clip(ratio_t, 1 - eps_low, 1 + eps_high))
//   dual clip (c > 1): for A_t < 0, pg_t = min(pg_t, -c A_t)
//   truncated importance sampling: pg_t *= min(exp(old - behaviour), tis_cap)   (off-policy correction)
//   value  = 0.5 max((V - R)^2, (V_old + clip(V - V_old, -vclip, vclip) - R)^2)
//   total  = agg(pg) + vf_coef agg(vf) - ent_coef agg(H) [+ beta agg(kl)]
// Dimension key: B sequences, T response tokens; every tensor is [B, T] unless said otherwise.
#pragma once

#include <torch/torch.h>

#include <string>

#include "common/status.h"
#include "trainer/algo/kl.h"
#include "trainer/algo/masked.h"

namespace rlhf::algo {

enum class RatioLevel {
  kToken,     // PPO / GRPO: one ratio per token
  kSequence,  // GSPO: exp(mean_t (lp - old)) for the whole sequence, gradient through every token
};
absl::StatusOr<RatioLevel> ParseRatioLevel(const std::string& name);  // "token" | "sequence"

struct PolicyLossOptions {
  double eps_low = 0.2;           // lower clip: ratio >= 1 - eps_low
  double eps_high = 0.2;          // upper clip: ratio <= 1 + eps_high (DAPO's clip-higher: 0.28)
  double dual_clip = 0;           // c > 1 enables dual clip for negative advantages (3 is usual); 0 = off
  double log_ratio_clamp = 20;    // clamp lp - old to [-x, x] before exp; 0 = no clamp
  RatioLevel ratio_level = RatioLevel::kToken;
  double tis_cap = 0;             // truncated importance weights min(exp(old - behaviour), cap); 0 = off
};

struct PolicyLossOutput {
  torch::Tensor loss;           // scalar, aggregated
  torch::Tensor per_token;      // [B, T] pg_t (after dual clip and importance weights)
  // Diagnostics (detached scalars, over response tokens):
  torch::Tensor clip_fraction;  // fraction of tokens where the clipped branch is the active one
  torch::Tensor approx_kl;      // mean of (ratio - 1) - log ratio: KL(old || current), k3 estimate
  torch::Tensor ratio_mean;     // mean ratio (1 on a fresh on-policy batch)
  // With tis_cap: mean importance weight min(exp(old - behaviour), cap), and the fraction of tokens at the cap.
  torch::Tensor tis_weight_mean, tis_truncated_fraction;
};

// lp: current log-probs (with gradient); old: log-probs of the policy that produced the batch (detached);
// advantages: per token; behaviour: rollout-engine log-probs, used only when tis_cap > 0.
PolicyLossOutput PolicyLoss(const torch::Tensor& lp, const torch::Tensor& old, const torch::Tensor& advantages,
                            const torch::Tensor& mask, const PolicyLossOptions& options, Aggregation agg,
                            double denominator, const torch::Tensor& behaviour = {});

enum class ValueClip {
  kNone,        // 0.5 (V - R)^2
  kPpo,         // 0.5 max((V - R)^2, (V_old + clip(V - V_old, -vclip, vclip) - R)^2)
  kStudyNotes,  // 0.5 max((V - R)^2, clip(R - V, A - vclip, A + vclip)^2), A the advantage given;
                // equal to kPpo when A = R - V_old (unwhitened)
};
absl::StatusOr<ValueClip> ParseValueClip(const std::string& name);  // "none" | "ppo" | "study_notes"

struct ValueLossOutput {
  torch::Tensor loss;                // scalar, aggregated
  torch::Tensor clip_fraction;       // fraction of tokens where the clipped term is the larger one
  torch::Tensor explained_variance;  // 1 - Var(R - V) / Var(R)
};
ValueLossOutput ValueLoss(const torch::Tensor& values, const torch::Tensor& old_values, const torch::Tensor& returns,
                          const torch::Tensor& mask, ValueClip clip, double vclip, Aggregation agg, double denominator,
                          const torch::Tensor& advantages = {});

// Per-token entropy bonus term: -coef * H_t, aggregated (add it to the loss).
torch::Tensor EntropyBonus(const torch::Tensor& entropy, const torch::Tensor& mask, double coef, Aggregation agg,
                           double denominator);

// KL-in-loss term (GRPO style): beta * agg(KlPenalty(lp, ref)).
torch::Tensor KlLoss(const torch::Tensor& lp, const torch::Tensor& ref, const torch::Tensor& mask, double beta,
                     const KlOptions& kl, Aggregation agg, double denominator);

}  // namespace rlhf::algo
