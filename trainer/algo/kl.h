// KL estimators per token (docs/algorithms.md, "KL estimators"), with d = ref - lp:
//   k1 = lp - ref = -d        k2 = (lp - ref)^2 / 2        k3 = exp(d) - d - 1  (>= 0; GRPO's default)
// Optional clamping as verl / OpenRLHF do: d to [-20, 20] before, the estimate to [-10, 10] after; TRL
// does not clamp (the default here).
#pragma once

#include <torch/torch.h>

#include <string>

#include "common/status.h"

namespace rlhf::algo {

enum class KlEstimator { kK1, kK2, kK3 };
absl::StatusOr<KlEstimator> ParseKlEstimator(const std::string& name);  // "k1" | "k2" | "k3" (alias low_var_kl)

struct KlOptions {
  KlEstimator estimator = KlEstimator::kK3;  // which estimator
  bool clamp = false;                        // clamp d to [-log_ratio_clamp, +] and the result to [-kl_clamp, +]
  double log_ratio_clamp = 20.0;
  double kl_clamp = 10.0;
};

// Per-token KL estimate [B, T] of the policy `lp` from the reference `ref` (both log-probs [B, T]).
// Differentiable in lp (KL in the loss); detach it for KL in the reward.
torch::Tensor KlPenalty(const torch::Tensor& lp, const torch::Tensor& ref, const KlOptions& options = {});

}  // namespace rlhf::algo
