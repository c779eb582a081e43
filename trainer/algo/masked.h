// Masked reductions and loss aggregation shared by every token-level loss.
//
// Dimension key: B sequences, T response tokens. mask [B, T] is 1 on response tokens, 0 on prompt and
// padding. All functions work in the dtype of their inputs (float32 in training, float64 in golden tests).
#pragma once

#include <torch/torch.h>

#include <string>

#include "common/status.h"

namespace rlhf::algo {

// How per-token losses l [B, T] become one number (docs/algorithms.md, "Loss aggregation modes").
enum class Aggregation {
  kTokenMean,            // sum(m * l) / (number of response tokens)               [verl, OpenRLHF, DAPO]
  kSeqMeanTokenMean,     // sum_b (sum_t m*l / sum_t m) / (number of sequences)     [original GRPO]
  kSeqMeanTokenSumNorm,  // sum(m * l) / (number of sequences * L_max)              [Dr. GRPO]
};
absl::StatusOr<Aggregation> ParseAggregation(const std::string& name);  // "token_mean", ...
const char* AggregationName(Aggregation a);

// This micro-batch's share of the denominator of `mode`: tokens, sequences, or sequences * max_len. The
// learner sums it over the micro-batches of an optimizer step and over ranks (all-reduce) and passes the
// total to Aggregate(), so that the estimator is the global one whatever the split.
double LocalDenominator(const torch::Tensor& mask, Aggregation mode, int64_t max_len = 0);

// Aggregates l [B, T] under mask with a (global) denominator. A zero denominator gives 0.
torch::Tensor Aggregate(const torch::Tensor& loss, const torch::Tensor& mask, Aggregation mode, double denominator);

// Convenience: Aggregate with this batch's own denominator (single micro-batch, single rank).
torch::Tensor AggregateLocal(const torch::Tensor& loss, const torch::Tensor& mask, Aggregation mode,
                             int64_t max_len = 0);

torch::Tensor MaskedSum(const torch::Tensor& x, const torch::Tensor& mask);
torch::Tensor MaskedMean(const torch::Tensor& x, const torch::Tensor& mask);
// Variance over masked entries; unbiased = Bessel's correction (n / (n - 1)).
torch::Tensor MaskedVar(const torch::Tensor& x, const torch::Tensor& mask, bool unbiased);
// (x - mean) / sqrt(var + 1e-8) over masked entries (mean added back when !shift_mean); 0 off the mask.
torch::Tensor Whiten(const torch::Tensor& x, const torch::Tensor& mask, bool shift_mean = true, bool unbiased = true);
// 1 - Var(returns - values) / Var(returns) over masked entries (a critic diagnostic).
torch::Tensor ExplainedVariance(const torch::Tensor& values, const torch::Tensor& returns, const torch::Tensor& mask);

}  // namespace rlhf::algo
