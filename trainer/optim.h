// AdamW with decoupled weight decay (Loshchilov & Hutter; the update of torch.optim.AdamW), linear warmup
// then cosine decay of the learning rate, and gradient-norm clipping.
//
// Parameters whose names mark them as norms or biases ("norm" in the name, or ending in ".bias") get no
// weight decay, as in TRL / HF Trainer. State (step and both moments per parameter) is exposed as named
// tensors so that training checkpoints store it exactly. Not thread-safe.
#pragma once

#include <torch/torch.h>

#include <map>
#include <string>
#include <vector>

#include "common/config/config.h"
#include "common/status.h"

namespace rlhf::trainer {

struct OptimConfig {
  double lr = 1e-5;             // peak learning rate
  double weight_decay = 0.0;    // decoupled decay (not on norms and biases)
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  int64_t warmup_steps = 0;     // linear warmup from 0 to lr over these optimizer steps
  double min_lr_ratio = 0.0;    // cosine decays to lr * min_lr_ratio at the last step
  enum class Schedule { kCosine, kConstant };
  Schedule schedule = Schedule::kCosine;  // cosine | constant (after warmup)
  double max_grad_norm = 1.0;   // clip the global gradient norm to this; 0 = no clipping
  static void AddTo(config::Section<OptimConfig>& s);  // the keys, under any prefix
};

// Learning rate at optimizer step `step` (0-based) of `total_steps`.
double LearningRate(const OptimConfig& c, int64_t step, int64_t total_steps);

class AdamW {
 public:
  // `params`: the trainable parameters by name (order kept). Parameters with requires_grad = false are left out.
  AdamW(std::vector<std::pair<std::string, torch::Tensor>> params, const OptimConfig& config);

  // One update with learning rate `lr` from the parameters' .grad (a parameter without grad is skipped).
  void Step(double lr);
  void ZeroGrad();
  int64_t steps() const { return step_; }
  const std::vector<std::pair<std::string, torch::Tensor>>& params() const { return params_; }
  static bool DecayApplies(const std::string& name);

  // State as named tensors ("<param>.exp_avg", "<param>.exp_avg_sq") plus the step count, and back.
  std::map<std::string, torch::Tensor> StateTensors() const;
  absl::Status LoadState(const std::map<std::string, torch::Tensor>& tensors, int64_t steps);

 private:
  OptimConfig config_;
  std::vector<std::pair<std::string, torch::Tensor>> params_;
  std::vector<torch::Tensor> exp_avg_, exp_avg_sq_;
  int64_t step_ = 0;
};

// Global L2 norm of `grads` (undefined ones count as zero); not finite when any entry is not finite.
double GradNorm(const std::vector<torch::Tensor>& grads);
// Scales grads in place so that their global norm is at most max_norm (torch.nn.utils.clip_grad_norm_:
// factor max_norm / (norm + 1e-6), applied only when < 1).
void ClipGrads(const std::vector<torch::Tensor>& grads, double norm, double max_norm);

}  // namespace rlhf::trainer
