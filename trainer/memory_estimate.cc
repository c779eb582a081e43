#include "trainer/memory_estimate.h"

#include <fstream>
#include <sstream>

#include "absl/strings/str_format.h"

namespace rlhf::trainer {

int64_t ParameterCount(const model::HfConfig& c) {
  const int64_t h = c.hidden_size, q = c.q_dim(), kv = c.kv_dim(), i = c.intermediate_size;
  int64_t layer = h * q + 2 * h * kv + q * h + 3 * h * i + 2 * h;  // q, k, v, o; gate, up, down; two norms
  if (c.qkv_bias) layer += q + 2 * kv;
  if (c.o_bias) layer += h;
  if (c.mlp_bias) layer += 2 * i + h;
  if (c.qk_norm) layer += 2 * c.head_dim;
  int64_t total = c.vocab_size * h + c.num_hidden_layers * layer + h;
  if (!c.tie_word_embeddings) total += c.vocab_size * h;
  return total;
}

MemoryEstimate EstimateMemory(const model::HfConfig& c, const MemoryPlan& plan) {
  MemoryEstimate e;
  e.parameters = ParameterCount(c);
  const double p = static_cast<double>(e.parameters);
  e.weights = 4 * p * static_cast<double>(plan.trainable_models);
  e.grads = e.weights;
  e.optimizer = 2 * e.weights;
  e.frozen = 4 * p * static_cast<double>(plan.frozen_models);
  e.rollout = static_cast<double>(plan.rollout_bytes_per_param) * p * static_cast<double>(plan.rollout_copies);
  const double t = static_cast<double>(plan.tokens_per_row), rows = static_cast<double>(plan.micro_batch_rows);
  const double per_token_layer = 7.0 * static_cast<double>(c.hidden_size) + 2.0 * static_cast<double>(c.q_dim()) +
                                 3.0 * static_cast<double>(c.kv_dim()) + 4.0 * static_cast<double>(c.intermediate_size) +
                                 2.0 * static_cast<double>(c.num_attention_heads) * t;
  e.activations = 4 * rows * t * per_token_layer * static_cast<double>(c.num_hidden_layers);
  e.logits = 4 * rows * t * 3.0 * static_cast<double>(c.vocab_size);
  return e;
}

std::string MemoryEstimate::Describe() const {
  const double g = 1e9;
  std::string out = absl::StrFormat("%.2f GB for %.0fM parameters: weights %.2f, grads %.2f, AdamW %.2f", total() / g,
                                    static_cast<double>(parameters) / 1e6, weights / g, grads / g, optimizer / g);
  if (frozen > 0) out += absl::StrFormat(", reference %.2f", frozen / g);
  if (rollout > 0) out += absl::StrFormat(", rollout copy %.2f", rollout / g);
  out += absl::StrFormat(", activations %.2f, logits %.2f (one micro-batch)", activations / g, logits / g);
  return out;
}

namespace {
// The value in kB of `key` in a /proc file of "Key:   123 kB" lines, in bytes; 0 when missing.
int64_t ProcKb(const char* path, const std::string& key) {
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(key + ":", 0) != 0) continue;
    std::istringstream s(line.substr(key.size() + 1));
    int64_t kb = 0;
    s >> kb;
    return kb * 1024;
  }
  return 0;
}
}  // namespace

int64_t PeakResidentBytes() { return ProcKb("/proc/self/status", "VmHWM"); }
int64_t MachineMemoryBytes(bool available) { return ProcKb("/proc/meminfo", available ? "MemAvailable" : "MemTotal"); }

}  // namespace rlhf::trainer
