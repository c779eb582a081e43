// The Hugging Face config.json of the decoder-only architectures this system computes with.
//
// Supported: LlamaForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM and their ForSequenceClassification
// (reward head "score", no bias) and ForTokenClassification (value head "score", with bias) variants.
// Keys that change the math and are not implemented (another activation, sliding-window attention, an
// unsupported rope_scaling type, soft-capping, partial rotary) are refused with a message naming the key.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "common/status.h"

namespace rlhf::model {

enum class Arch { kLlama, kQwen2, kQwen3 };
// Which head sits on the final hidden states.
enum class Head {
  kCausalLM,                // lm_head -> logits over the vocabulary
  kSequenceClassification,  // score (no bias) on the last non-pad token: reward model
  kTokenClassification,     // score (with bias) on every token: value head of the critic
};

const char* ArchName(Arch arch);  // "llama", "qwen2", "qwen3" (the HF model_type)
absl::StatusOr<Arch> ParseArch(const std::string& name);
std::string ArchitectureString(Arch arch, Head head);  // e.g. "Qwen2ForSequenceClassification"

struct RopeScaling {
  std::string type = "default";  // default | linear | llama3
  double factor = 1.0;
  double low_freq_factor = 1.0;   // llama3
  double high_freq_factor = 4.0;  // llama3
  int64_t original_max_position_embeddings = 8192;  // llama3
};

struct HfConfig {
  Arch arch = Arch::kLlama;
  Head head = Head::kCausalLM;
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;
  int64_t num_key_value_heads = 0;
  int64_t head_dim = 0;  // hidden_size / num_attention_heads unless the file says otherwise
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  int64_t max_position_embeddings = 2048;
  bool tie_word_embeddings = false;
  bool qkv_bias = false;  // q/k/v projections have biases (always for Qwen2; attention_bias for Llama/Qwen3)
  bool o_bias = false;    // o_proj has a bias (attention_bias for Llama/Qwen3)
  bool mlp_bias = false;  // gate/up/down have biases (Llama's mlp_bias)
  bool qk_norm = false;   // per-head RMSNorm on q and k before rotary (Qwen3)
  int64_t num_labels = 1;
  std::optional<int64_t> bos_token_id;
  std::optional<int64_t> pad_token_id;
  std::vector<int64_t> eos_token_ids;
  std::string torch_dtype = "float32";  // float32 | bfloat16 | float16
  std::string raw_json;  // the file as read (other keys survive a save); empty for new models

  int64_t q_dim() const { return num_attention_heads * head_dim; }
  int64_t kv_dim() const { return num_key_value_heads * head_dim; }
};

// Parses config.json text. INVALID_ARGUMENT naming the key (and `origin`, the file) when a key is
// missing, has the wrong type, is inconsistent, or asks for math that is not implemented.
absl::StatusOr<HfConfig> ParseHfConfig(const std::string& json_text, const std::string& origin);
// Serialises as transformers writes it for this architecture and head (keys of raw_json kept).
std::string HfConfigToJson(const HfConfig& config);

}  // namespace rlhf::model
