// Memory a training process will need, estimated from a model's config.json before anything heavy is loaded,
// and the peak it actually reached. Bytes throughout.
//
// Trainable models hold f32 weights, f32 gradients and two f32 AdamW moments (16 bytes per parameter, the
// moments split over the data-parallel ranks only when the optimizer is sharded, which it is not yet); frozen
// models (a reference) f32 weights; an embedded rollout worker its own copy in its dtype. Activations kept for
// the backward pass of one micro-batch: per layer and token about 7 H + 2 q + 3 kv + 4 I floats (norms,
// projections, rotary, the gated MLP) plus the attention scores and probabilities (2 heads x T), and the
// logits with their log-softmax and gradient (3 V floats per token).
#pragma once

#include <cstdint>
#include <string>

#include "common/model/hf_config.h"

namespace rlhf::trainer {

struct MemoryPlan {
  int64_t trainable_models = 1;       // policy, critic
  int64_t frozen_models = 0;          // reference
  int64_t rollout_copies = 0;         // embedded rollout workers' copies of the policy
  int64_t rollout_bytes_per_param = 4;
  int64_t micro_batch_rows = 4;       // rows of one forward/backward
  int64_t tokens_per_row = 512;
};

struct MemoryEstimate {
  int64_t parameters = 0;
  double weights = 0, grads = 0, optimizer = 0, frozen = 0, rollout = 0, activations = 0, logits = 0;
  double total() const { return weights + grads + optimizer + frozen + rollout + activations + logits; }
  // "2.41 GB: weights 0.60, grads 0.60, AdamW 1.19, reference 0.60, rollout copy 0.30, activations 0.09, logits 0.03"
  std::string Describe() const;
};

// Parameters of a causal LM of this config (embedding, layers, final norm, an untied lm_head).
int64_t ParameterCount(const model::HfConfig& config);
MemoryEstimate EstimateMemory(const model::HfConfig& config, const MemoryPlan& plan);

// The process's peak resident memory so far (VmHWM), and the machine's physical and available memory; 0 when
// /proc does not say.
int64_t PeakResidentBytes();
int64_t MachineMemoryBytes(bool available);

}  // namespace rlhf::trainer
