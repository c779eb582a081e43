// Rewards and advantages of the PPO family (docs/algorithms.md: reward placement, GAE, outcome advantages,
// DAPO pieces, process supervision). Dimension key: B sequences, T response tokens, G samples per prompt
// (groups are consecutive: rows g*G .. g*G+G-1), S steps. Everything here is computed without gradient.
#pragma once

#include <torch/torch.h>

#include <string>
#include <vector>

#include "common/status.h"

namespace rlhf::algo {

// ---- reward placement --------------------------------------------------------------------------------
// Per-token rewards [B, T]: -beta * kl_t on every response token, plus the (optionally clipped to
// [-score_clip, score_clip]; 0 = no clip) sequence score on the last response token (the eos, or the last
// token of a truncated response). kl may be undefined (no KL in the reward).
torch::Tensor TokenRewards(const torch::Tensor& score, const torch::Tensor& kl, const torch::Tensor& mask,
                           double beta, double score_clip = 0);

// ---- GAE ------------------------------------------------------------------------------------------------
enum class MaskedGae {
  kZero,  // masked tokens have value 0 and reward 0 (OpenRLHF); identical to kSkip for right padding
  kSkip,  // masked tokens are skipped: the recursion carries over them (verl; interior observation tokens)
};
struct GaeOutput {
  torch::Tensor advantages;  // [B, T], 0 off the mask, before whitening
  torch::Tensor returns;     // [B, T] = advantages + values (taken before whitening)
};
// delta_t = r_t + gamma V_{t+1} - V_t (V after the last token = 0); A_t = delta_t + gamma lambda A_{t+1}.
GaeOutput Gae(const torch::Tensor& rewards, const torch::Tensor& values, const torch::Tensor& mask, double gamma,
              double lambda, MaskedGae masked = MaskedGae::kZero);

// ---- outcome advantages (critic-free) -------------------------------------------------------------------
enum class GroupAdvantage {
  kGrpo,    // (r - mean_group) / (std_group + eps), unbiased std; a group of one gets 0
  kDrGrpo,  // r - mean_group
  kRloo,    // r_i - (sum_j r_j - r_i) / (G - 1); a group of one gets 0
};
absl::StatusOr<GroupAdvantage> ParseGroupAdvantage(const std::string& name);  // "grpo" | "dr_grpo" | "rloo"
// Sequence advantages [N] from scores [N] (N = groups * G).
torch::Tensor GroupAdvantages(const torch::Tensor& scores, int64_t group_size, GroupAdvantage kind, double eps = 1e-6);
// The sequence advantage on every response token: [N] -> [N, T] (0 off the mask).
torch::Tensor BroadcastToTokens(const torch::Tensor& seq_adv, const torch::Tensor& mask);

// REINFORCE++: token rewards (score at the last token - beta * kl per token), return-to-go with `gamma`,
// whitened over the batch. With group_size > 0 (REINFORCE++-baseline) the group mean of the scores is
// subtracted first.
torch::Tensor ReinforcePlusPlus(const torch::Tensor& scores, const torch::Tensor& kl, const torch::Tensor& mask,
                                double beta, double gamma = 1.0, int64_t group_size = 0);

// Return-to-go: R_t = r_t + gamma R_{t+1} over the masked tokens.
torch::Tensor ReturnToGo(const torch::Tensor& rewards, const torch::Tensor& mask, double gamma);

// Process supervision (GRPO): step_rewards [N, S] with step_ends [N, S] (index of the token that ends each
// step, -1 for absent steps). Step rewards are normalised by the mean / std (unbiased) of all present step
// rewards of the sample's group; A_{i,t} = sum of normalised rewards of the steps ending at or after t.
torch::Tensor ProcessAdvantages(const torch::Tensor& step_rewards, const torch::Tensor& step_ends,
                                const torch::Tensor& mask, int64_t group_size, double eps = 1e-6);

// ---- DAPO ---------------------------------------------------------------------------------------------
// Dynamic sampling: keep [N / G] bool, false for groups whose scores are all equal (no learning signal).
torch::Tensor GroupsWithSignal(const torch::Tensor& scores, int64_t group_size);
// Overlong reward shaping: 0 up to max_len - cache_len; then a linear penalty reaching -1 at max_len; -1
// beyond. lengths [N] -> penalties [N] (multiply by a factor and add to the score).
torch::Tensor OverlongPenalty(const torch::Tensor& lengths, int64_t max_len, int64_t cache_len);

// ---- reward normalisation -----------------------------------------------------------------------------
// Running mean / variance of scores (parallel Welford), to normalise rewards across steps. Not thread-safe.
class RunningMeanStd {
 public:
  void Update(const torch::Tensor& x);
  // (x - mean) / sqrt(var + eps), then clipped to [-clip, clip] when clip > 0.
  torch::Tensor Normalize(const torch::Tensor& x, double clip = 0, double eps = 1e-8) const;
  double mean() const { return mean_; }
  double var() const { return var_; }
  double count() const { return count_; }
  void Restore(double mean, double var, double count) { mean_ = mean, var_ = var, count_ = count; }

 private:
  double mean_ = 0, var_ = 1, count_ = 0;
};

}  // namespace rlhf::algo
