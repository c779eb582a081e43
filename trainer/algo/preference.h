// Preference and reward-model losses (docs/algorithms.md, "Reward model", "Preference losses"). Inputs are
// sequence log-probs summed over completion tokens ([B]) unless the name says avg (mean per token).
// Every function returns the scalar loss plus the metrics TRL reports.
#pragma once

#include <torch/torch.h>

#include <string>

#include "common/status.h"

namespace rlhf::algo {

struct PreferenceOutput {
  torch::Tensor loss;              // scalar
  torch::Tensor rewards_chosen;    // [B] implicit rewards, detached (beta * (lp_c - ref_c) for DPO)
  torch::Tensor rewards_rejected;  // [B]
  torch::Tensor accuracy;          // mean(rewards_chosen > rewards_rejected)
  torch::Tensor margin;            // mean(rewards_chosen - rewards_rejected)
};

// ---- DPO family (with a reference model) ----------------------------------------------------------
enum class DpoLoss {
  kSigmoid,  // -(1-e) logsig(beta D) - e logsig(-beta D)            (e = label_smoothing: cDPO)
  kIpo,      // ((D_c/|y_c| - D_r/|y_r|) - 1/(2 beta))^2            (TRL; sums with ipo_length_normalize=false)
  kHinge,    // relu(1 - beta D)
  kRobust,   // (-(1-e) logsig(beta D) + e logsig(-beta D)) / (1 - 2e)
};
absl::StatusOr<DpoLoss> ParseDpoLoss(const std::string& name);  // sigmoid | ipo | hinge | robust

struct DpoOptions {
  DpoLoss type = DpoLoss::kSigmoid;
  double beta = 0.1;              // strength of the implicit KL to the reference
  double label_smoothing = 0;     // e: probability that a preference label is flipped (cDPO, robust)
  bool ipo_length_normalize = true;  // IPO on per-token means (TRL) instead of sums (OpenRLHF)
};

// D = (lp_c - ref_c) - (lp_r - ref_r). len_c / len_r [B]: completion lengths (IPO).
PreferenceOutput DpoLossFn(const torch::Tensor& lp_c, const torch::Tensor& lp_r, const torch::Tensor& ref_c,
                           const torch::Tensor& ref_r, const DpoOptions& options, const torch::Tensor& len_c = {},
                           const torch::Tensor& len_r = {});

// ---- KTO (unpaired) -------------------------------------------------------------------------------
struct KtoOptions {
  double beta = 0.1;
  double desirable_weight = 1.0;    // lambda_D
  double undesirable_weight = 1.0;  // lambda_U
};
// lp, ref [B] with desirable [B] (bool); kl_lp, kl_ref [B'] log-probs of mismatched (prompt, completion)
// pairs, whose mean log-ratio, clamped at 0 and detached, is the reference point z0. (Under data
// parallelism z0 is a global mean: pass all ranks' pairs, or the all-reduced value as a [1] tensor pair.)
// rewards_chosen / rewards_rejected hold the implicit rewards of the desirable / undesirable rows.
PreferenceOutput KtoLossFn(const torch::Tensor& lp, const torch::Tensor& ref, const torch::Tensor& desirable,
                           const torch::Tensor& kl_lp, const torch::Tensor& kl_ref, const KtoOptions& options);

// ---- reference-free ---------------------------------------------------------------------------------
// ORPO: p = mean completion log-prob; log_odds = (p_c - p_r) - (log1mexp(p_c) - log1mexp(p_r));
// loss = nll_chosen - beta * mean(logsig(log_odds)). rewards_* = beta * p_* (TRL's).
PreferenceOutput OrpoLossFn(const torch::Tensor& avg_c, const torch::Tensor& avg_r, const torch::Tensor& nll_chosen,
                            double beta = 0.1);
// SimPO: -(1-e) logsig(beta (avg_c - avg_r) - gamma) - e logsig(-(beta (avg_c - avg_r) - gamma)).
PreferenceOutput SimpoLossFn(const torch::Tensor& avg_c, const torch::Tensor& avg_r, double beta = 2.0,
                             double gamma = 0.5, double label_smoothing = 0);
// CPO: -(1-e) logsig(beta (lp_c - lp_r)) - e logsig(-beta (lp_c - lp_r)) + alpha * nll_chosen.
PreferenceOutput CpoLossFn(const torch::Tensor& lp_c, const torch::Tensor& lp_r, const torch::Tensor& nll_chosen,
                           double beta = 0.1, double alpha = 1.0, double label_smoothing = 0);
// RRHF: p [B, K] length-normalised log-probs of K responses with rewards [B, K];
// loss = mean_b sum_{i,j: r_i < r_j} max(0, p_i - p_j) + sft_weight * mean_b nll_best[b].
torch::Tensor RrhfLossFn(const torch::Tensor& p, const torch::Tensor& rewards, const torch::Tensor& nll_best,
                         double sft_weight = 1.0);

// ---- reward model (Bradley-Terry) -----------------------------------------------------------------
// mean(-logsig(r_c - r_r - margin)) + centering * mean((r_c + r_r)^2); margin [B] or undefined (0).
PreferenceOutput BradleyTerryLossFn(const torch::Tensor& r_c, const torch::Tensor& r_r,
                                    const torch::Tensor& margin = {}, double centering = 0);

// log(1 - exp(x)) for x < 0, computed stably.
torch::Tensor Log1mExp(const torch::Tensor& x);

}  // namespace rlhf::algo
