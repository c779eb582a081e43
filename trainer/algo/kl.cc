#include "trainer/algo/kl.h"

namespace rlhf::algo {

absl::StatusOr<KlEstimator> ParseKlEstimator(const std::string& name) {
  if (name == "k1") return KlEstimator::kK1;
  if (name == "k2") return KlEstimator::kK2;
  if (name == "k3" || name == "low_var_kl") return KlEstimator::kK3;
  return absl::InvalidArgumentError(absl::StrCat("unknown KL estimator '", name, "'; use k1, k2 or k3"));
}

torch::Tensor KlPenalty(const torch::Tensor& lp, const torch::Tensor& ref, const KlOptions& o) {
  auto d = ref - lp;  // log(ref / policy)
  if (o.clamp) d = d.clamp(-o.log_ratio_clamp, o.log_ratio_clamp);
  torch::Tensor kl;
  switch (o.estimator) {
    case KlEstimator::kK1: kl = -d; break;
    case KlEstimator::kK2: kl = 0.5 * d.pow(2); break;
    case KlEstimator::kK3: kl = torch::exp(d) - d - 1; break;
  }
  if (o.clamp) kl = kl.clamp(-o.kl_clamp, o.kl_clamp);
  return kl;
}

}  // namespace rlhf::algo
