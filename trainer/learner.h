// The learner: one optimizer step over a minibatch, on one rank or many. Every trainer (SFT, reward model,
// DPO family, the PPO / GRPO update, the online RL driver) calls Learner::Step, so there is one training
// loop.
//
// A step, on every rank alike:
//   1. each micro-batch reports its share of the step's normalisers (tokens, sequences, ...); they are
//      summed over micro-batches and all-reduced, so every loss is divided by GLOBAL counts;
//   2. forward + backward per micro-batch (gradients accumulate);
//   3. gradients are all-reduced (summed) in flattened buckets; since each rank's loss already carries the
//      global denominator, the sum is the gradient of the global loss;
//   4. if any gradient or loss is not finite on any rank (the flag is all-reduced), the step is skipped on
//      all ranks: weights and optimizer moments stay bitwise unchanged, and the skip is counted;
//   5. otherwise per model: clip the gradient norm, AdamW step at the scheduled learning rate.
//
// Dimension key: B rows of a micro-batch, T tokens per row.
// Thread-safety: not thread-safe; one thread drives a Learner.
#pragma once

#include <torch/torch.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "common/comm/group.h"
#include "common/model/transformer.h"
#include "common/status.h"
#include "trainer/optim.h"

namespace rlhf::trainer {

// Rows of tokens plus whatever per-row or per-token fields an objective needs.
struct MicroBatch {
  torch::Tensor ids;             // [B, T] int64
  torch::Tensor attention_mask;  // [B, T] int64, 1 = token, 0 = padding
  torch::Tensor position_ids;    // [B, T] int64 or undefined (packed rows restart per segment)
  torch::Tensor segment_ids;     // [B, T] int64 or undefined (packed rows)
  torch::Tensor target_mask;     // [B, T] f32: 1 where token t is trained on (predicted from t - 1)
  std::map<std::string, torch::Tensor> fields;  // objective-specific ([B] or [B, T] aligned with ids)
  int64_t rows() const { return ids.size(0); }
  const torch::Tensor& field(const std::string& name) const;  // throws when absent
};

// Metrics of a step, summed over micro-batches and ranks before they are reported.
class StepMetrics {
 public:
  // A mean: reported as (sum of `sum`) / (sum of `count`) over micro-batches and ranks.
  void AddMean(const std::string& name, double sum, double count);
  // A total: reported as the sum over micro-batches and ranks (e.g. a loss share with a global denominator).
  void AddSum(const std::string& name, double value);
  // Sums over ranks (names must be the same on every rank) and returns name -> value.
  absl::StatusOr<std::map<std::string, double>> Reduce(comm::Group& group) const;

 private:
  std::map<std::string, std::pair<double, double>> means_;
  std::map<std::string, double> sums_;
};

// What a training objective computes; the learner owns the loop.
class Objective {
 public:
  virtual ~Objective() = default;
  // This micro-batch's share of each normaliser the loss divides by (e.g. {response tokens}). The learner
  // sums them over the step's micro-batches and all ranks and passes the totals to Loss().
  virtual std::vector<double> Normalizers(const MicroBatch& mb) const = 0;
  // Forward pass and this micro-batch's share of the step's loss (the shares of all micro-batches on all
  // ranks add up to the loss). Adds its metrics. Must add the same metric names for every micro-batch.
  virtual torch::Tensor Loss(const MicroBatch& mb, const std::vector<double>& totals, StepMetrics& metrics) = 0;
};

struct StepResult {
  bool skipped = false;                   // gradients were not finite: nothing was updated
  std::map<std::string, double> metrics;  // objective metrics, grad_norm/<model>, lr/<model>, tokens, seconds
};

class Learner {
 public:
  Learner(std::shared_ptr<comm::Group> group, int64_t bucket_bytes = 25 << 20);

  // Registers a model to train with its optimizer; `total_steps` sizes the learning-rate schedule. The
  // model must be identical on every rank (same init or the same checkpoint). Parameters with
  // requires_grad = false (a frozen backbone) are not updated.
  void AddModel(const std::string& name, model::Transformer net, const OptimConfig& optim, int64_t total_steps);
  // Sets the schedule length of every model (e.g. once the data size is known).
  void SetTotalSteps(int64_t total_steps);

  // One optimizer step of every model over `micro` (this rank's micro-batches; at least one). Returns the
  // globally reduced metrics. Errors: a collective failing (UNAVAILABLE / DEADLINE_EXCEEDED), a LibTorch
  // error in the objective (INTERNAL / INVALID_ARGUMENT).
  absl::StatusOr<StepResult> Step(const std::vector<MicroBatch>& micro, Objective& objective);

  comm::Group& group() { return *group_; }
  std::shared_ptr<comm::Group> group_ptr() const { return group_; }
  int64_t steps() const { return steps_; }          // optimizer steps taken (skipped ones included)
  int64_t skipped_steps() const { return skipped_; }
  void RestoreCounters(int64_t steps, int64_t skipped) { steps_ = steps, skipped_ = skipped; }

  struct Trained {
    std::string name;
    model::Transformer net{nullptr};
    OptimConfig optim;
    int64_t total_steps = 0;
    std::unique_ptr<AdamW> opt;
  };
  std::vector<Trained>& models() { return models_; }
  Trained* Find(const std::string& name);

 private:
  std::shared_ptr<comm::Group> group_;
  int64_t bucket_bytes_;
  std::vector<Trained> models_;
  int64_t steps_ = 0, skipped_ = 0;
};

// Masked mean / unbiased-variance whitening over the masked entries of every rank (the global batch):
// (x - mean) / sqrt(var + 1e-8). Equal to algo::Whiten on one rank.
absl::StatusOr<torch::Tensor> GlobalWhiten(comm::Group& group, const torch::Tensor& x, const torch::Tensor& mask);

}  // namespace rlhf::trainer
