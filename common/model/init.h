// Random-initialised HF model folders (`rlhf init-model`), for tests, demos and training from scratch.
#pragma once

#include <string>

#include "common/config/config.h"
#include "common/model/hf_config.h"
#include "common/status.h"

namespace rlhf::model {

// The `model.*` keys: the architecture of a new model (HF config.json names).
struct ModelInitConfig {
  std::string arch = "llama";              // llama | qwen2 | qwen3
  int64_t hidden_size = 64;                // C
  int64_t num_hidden_layers = 2;           // decoder layers
  int64_t num_attention_heads = 4;         // H
  int64_t num_key_value_heads = 2;         // K (grouped-query attention); must divide H
  int64_t intermediate_size = 128;         // F of the SwiGLU MLP
  int64_t vocab_size = 256;                // V
  int64_t head_dim = 0;                    // D; 0 = hidden_size / num_attention_heads
  bool tie_word_embeddings = false;        // lm_head shares the embedding
  bool attention_bias = false;             // Llama/Qwen3: biases on q/k/v/o (Qwen2 always has q/k/v biases)
  double rope_theta = 10000.0;             // rotary base
  double rms_norm_eps = 1e-6;
  int64_t max_position_embeddings = 2048;  // context length
  int64_t bos_token_id = -1;               // -1 = none
  int64_t eos_token_id = -1;               // -1 = none
  int64_t pad_token_id = -1;               // -1 = none
  std::string dtype = "float32";           // float32 | bfloat16: dtype of the saved weights
  std::string tokenizer;                   // folder (or tokenizer.json) whose tokenizer files are copied along
  std::string out;                         // output folder (must not exist or be empty)
  static const config::Section<ModelInitConfig>& Spec();
  // The "small" config of the benchmarks: Llama, hidden 768, 12 layers, 12 heads, 4 KV heads,
  // intermediate 2048, vocab 32000 (125M parameters).
  static ModelInitConfig Small();
  // Qwen3-0.6B's shape (hidden 1024, 28 layers, 16 heads, 8 KV heads, head_dim 128, intermediate 3072,
  // vocab 151936, tied embeddings): 0.6B parameters, for scale checks with random weights.
  static ModelInitConfig Qwen3_0_6B();
  // The HF config it describes; INVALID_ARGUMENT naming the key when inconsistent.
  absl::StatusOr<HfConfig> ToHfConfig() const;
};

// Creates the folder `init.out` with random weights (HF initialisation from `seed`).
absl::Status InitModelFolder(const ModelInitConfig& init, uint64_t seed);

}  // namespace rlhf::model
