#include "trainer/algo/masked.h"

namespace rlhf::algo {

absl::StatusOr<Aggregation> ParseAggregation(const std::string& name) {
  if (name == "token_mean") return Aggregation::kTokenMean;
  if (name == "seq_mean_token_mean") return Aggregation::kSeqMeanTokenMean;
  if (name == "seq_mean_token_sum_norm") return Aggregation::kSeqMeanTokenSumNorm;
  return absl::InvalidArgumentError(absl::StrCat(
      "unknown loss aggregation '", name, "'; use token_mean, seq_mean_token_mean or seq_mean_token_sum_norm"));
}

const char* AggregationName(Aggregation a) {
  switch (a) {
    case Aggregation::kTokenMean: return "token_mean";
    case Aggregation::kSeqMeanTokenMean: return "seq_mean_token_mean";
    case Aggregation::kSeqMeanTokenSumNorm: return "seq_mean_token_sum_norm";
  }
  return "?";
}

double LocalDenominator(const torch::Tensor& mask, Aggregation mode, int64_t max_len) {
  switch (mode) {
    case Aggregation::kTokenMean: return mask.sum().item<double>();
    case Aggregation::kSeqMeanTokenMean: return static_cast<double>(mask.size(0));
    case Aggregation::kSeqMeanTokenSumNorm: {
      const int64_t L = max_len > 0 ? max_len : mask.size(1);
      return static_cast<double>(mask.size(0) * L);
    }
  }
  return 0;
}

torch::Tensor Aggregate(const torch::Tensor& loss, const torch::Tensor& mask, Aggregation mode, double denominator) {
  TORCH_CHECK(loss.sizes() == mask.sizes(), "loss and mask must both be [B, T]");
  if (denominator <= 0) return (loss * 0).sum();  // keeps the graph; no tokens
  auto m = mask.to(loss.scalar_type());
  switch (mode) {
    case Aggregation::kTokenMean:
    case Aggregation::kSeqMeanTokenSumNorm:
      return (loss * m).sum() / denominator;
    case Aggregation::kSeqMeanTokenMean: {
      auto per_seq = (loss * m).sum(1) / m.sum(1).clamp_min(1);  // [B]; empty sequences contribute 0
      return per_seq.sum() / denominator;
    }
  }
  return loss.sum() * 0;
}

torch::Tensor AggregateLocal(const torch::Tensor& loss, const torch::Tensor& mask, Aggregation mode,
                             int64_t max_len) {
  return Aggregate(loss, mask, mode, LocalDenominator(mask, mode, max_len));
}

torch::Tensor MaskedSum(const torch::Tensor& x, const torch::Tensor& mask) { return (x * mask.to(x.scalar_type())).sum(); }

torch::Tensor MaskedMean(const torch::Tensor& x, const torch::Tensor& mask) {
  return MaskedSum(x, mask) / mask.to(x.scalar_type()).sum().clamp_min(1);
}

torch::Tensor MaskedVar(const torch::Tensor& x, const torch::Tensor& mask, bool unbiased) {
  auto m = mask.to(x.scalar_type());
  auto n = m.sum();
  auto mean = MaskedSum(x, m) / n.clamp_min(1);
  auto var = MaskedSum((x - mean).pow(2), m) / n.clamp_min(1);
  if (unbiased) var = var * n / (n - 1).clamp_min(1);
  return var;
}

torch::Tensor Whiten(const torch::Tensor& x, const torch::Tensor& mask, bool shift_mean, bool unbiased) {
  auto m = mask.to(x.scalar_type());
  auto mean = MaskedMean(x, m);
  auto var = MaskedVar(x, m, unbiased);
  auto w = (x - mean) * torch::rsqrt(var + 1e-8);
  if (!shift_mean) w = w + mean;
  return w * m;
}

torch::Tensor ExplainedVariance(const torch::Tensor& values, const torch::Tensor& returns, const torch::Tensor& mask) {
  auto var_r = MaskedVar(returns, mask, /*unbiased=*/false);
  auto var_d = MaskedVar(returns - values, mask, /*unbiased=*/false);
  return 1 - var_d / var_r.clamp_min(1e-12);
}

}  // namespace rlhf::algo
