// The decoder-only transformer of Llama / Qwen2 / Qwen3, computing what HF transformers computes for
// *ForCausalLM, *ForSequenceClassification and *ForTokenClassification.
//
// Dimension key: B batch rows, T new tokens per row, S cache capacity, L key length attended,
// C hidden_size, H query heads, K kv heads, G = H / K, D head_dim, F intermediate_size, V vocab_size.
//
// Parameter names equal the HF state-dict names ("model.layers.0.self_attn.q_proj.weight", "lm_head.weight",
// "score.weight"), so named_parameters() is the checkpoint layout.
//
// Errors: forward functions check shapes and ranges with TORCH_CHECK and throw c10::Error; callers at a
// module boundary turn that into a Status (GuardExceptions). Thread-safety: a model may run forwards from
// several threads only when no KVCache is shared between them and no parameters are being updated.
#pragma once

#include <torch/torch.h>

#include <vector>

#include "common/model/hf_config.h"

namespace rlhf::model {

// Per-slot key/value cache for batched generation: slot s holds the columns 0..length(s)-1 of one
// sequence; padding columns (e.g. left padding of a prompt) are marked invalid and never attended.
// Not thread-safe.
class KVCache {
 public:
  KVCache(const HfConfig& config, int64_t slots, int64_t capacity, torch::ScalarType dtype,
          torch::Device device = torch::kCPU);

  int64_t slots() const { return static_cast<int64_t>(length_.size()); }
  int64_t capacity() const { return capacity_; }
  int64_t length(int64_t slot) const { return length_.at(slot); }       // columns written
  int64_t next_position(int64_t slot) const { return next_pos_.at(slot); }  // position id of the next token
  // Empties a slot for a new sequence.
  void Reset(int64_t slot);
  // Makes `dst` an exact copy of `src` (G samples of one prompt share one prefill).
  void CopySlot(int64_t src, int64_t dst);

 private:
  friend class TransformerImpl;
  int64_t capacity_;
  std::vector<torch::Tensor> k_, v_;  // per layer [slots, K, S, D]
  torch::Tensor valid_;               // [slots, S] bool: column holds a real token
  std::vector<int64_t> length_, next_pos_;
};

struct ForwardOptions {
  torch::Tensor attention_mask;  // [B, T] 1 = token, 0 = padding (left or right); default all ones
  torch::Tensor position_ids;    // [B, T] int64; default: running count of real tokens (cumsum(mask) - 1)
  torch::Tensor segment_ids;     // [B, T] int64, packed rows: tokens attend only within their segment
                                 // (give position_ids that restart per segment too); not with a cache
};

struct TokenStats {
  torch::Tensor logprobs;  // [B, T] f32: log softmax(logits / temperature)[target]
  torch::Tensor entropy;   // [B, T] f32 entropy of softmax(logits / temperature); undefined if not asked
};

class RMSNormImpl : public torch::nn::Module {
 public:
  RMSNormImpl(int64_t dim, double eps);
  torch::Tensor forward(const torch::Tensor& x);  // HF: normalise in f32, cast back, then * weight
  torch::Tensor weight;

 private:
  double eps_;
};
TORCH_MODULE(RMSNorm);

class AttentionImpl : public torch::nn::Module {
 public:
  explicit AttentionImpl(const HfConfig& c);
  torch::nn::Linear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, o_proj{nullptr};
  RMSNorm q_norm{nullptr}, k_norm{nullptr};  // Qwen3 only
};
TORCH_MODULE(Attention);

class MlpImpl : public torch::nn::Module {
 public:
  explicit MlpImpl(const HfConfig& c);
  torch::Tensor forward(const torch::Tensor& x);  // down(silu(gate(x)) * up(x))
  torch::nn::Linear gate_proj{nullptr}, up_proj{nullptr}, down_proj{nullptr};
};
TORCH_MODULE(Mlp);

class DecoderLayerImpl : public torch::nn::Module {
 public:
  explicit DecoderLayerImpl(const HfConfig& c);
  Attention self_attn{nullptr};
  Mlp mlp{nullptr};
  RMSNorm input_layernorm{nullptr}, post_attention_layernorm{nullptr};
};
TORCH_MODULE(DecoderLayer);

class BackboneImpl : public torch::nn::Module {
 public:
  explicit BackboneImpl(const HfConfig& c);
  torch::nn::Embedding embed_tokens{nullptr};
  torch::nn::ModuleList layers{nullptr};
  RMSNorm norm{nullptr};
};
TORCH_MODULE(Backbone);

class TransformerImpl : public torch::nn::Module {
 public:
  // Parameters are created in f32 with LibTorch's default initialisation; call InitWeights for HF's, or
  // load a checkpoint (common/model/checkpoint.h). to() changes the dtype.
  explicit TransformerImpl(const HfConfig& config);

  const HfConfig& config() const { return config_; }
  torch::ScalarType dtype() const;

  // Re-initialises every parameter as HF's _init_weights does, from a generator seeded with `seed`.
  void InitWeights(uint64_t seed, double std = 0.02);

  // Final hidden states (after the last norm): ids [B, T] int64 -> [B, T, C] in the model dtype.
  // With a cache, the T tokens of row b are appended to slot slots[b] (default: slot b) and attend to
  // everything already in that slot.
  torch::Tensor Hidden(const torch::Tensor& ids, const ForwardOptions& options = {}, KVCache* cache = nullptr,
                       const torch::Tensor& slots = {});

  // Causal LM head: [.., C] -> [.., V] in the model dtype.
  torch::Tensor Logits(const torch::Tensor& hidden);
  // Classification head "score": [B, T, C] -> [B, T, num_labels] (value head: num_labels = 1).
  torch::Tensor Scores(const torch::Tensor& hidden);
  // Reward of each row: the score at its last real token (mask [B, T]; all real when undefined) -> [B].
  torch::Tensor SequenceScores(const torch::Tensor& hidden, const torch::Tensor& attention_mask = {});

  // Log-probs (and entropy) of `targets` [B, T] given hidden [B, T, C] at a temperature, log-softmax in
  // f32, computed over chunks of rows so that at most one chunk of f32 logits exists at a time.
  TokenStats TokenLogProbs(const torch::Tensor& hidden, const torch::Tensor& targets, double temperature = 1.0,
                           bool want_entropy = false);

  // The lm_head weight (the embedding when tied).
  torch::Tensor LmHeadWeight() const;

  Backbone model{nullptr};
  torch::nn::Linear lm_head{nullptr};  // causal LM, untied
  torch::nn::Linear score{nullptr};    // classification heads

 private:
  struct CacheStep;  // where a forward's tokens go in the KV cache (transformer.cc)
  torch::Tensor AttentionForward(AttentionImpl& attn, int64_t layer, const torch::Tensor& x,
                                 const torch::Tensor& cos, const torch::Tensor& sin, const torch::Tensor& allowed,
                                 KVCache* cache, const CacheStep& step);
  HfConfig config_;
  torch::Tensor inv_freq_;  // [D/2] f32, rope frequencies after scaling
};
TORCH_MODULE(Transformer);

// Rope inverse frequencies for a config (default, linear or llama3 scaling), f32 like HF.
torch::Tensor RopeInverseFrequencies(const HfConfig& config);

// x W^T (+ b) as the model's layers compute it: LibTorch's linear, except without autograd on CPU, where one
// f32 row goes through a matrix-vector product and bf16 through AMX tiles where usable (cpu_linear.h).
torch::Tensor Linear(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& b = {});

}  // namespace rlhf::model
