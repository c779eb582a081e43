// Small model configs for the model tests.
#pragma once

#include "common/model/hf_config.h"
#include "common/model/init.h"

namespace rlhf::model::testing {

inline HfConfig Tiny(const std::string& arch, bool tie = false, int64_t head_dim = 0, int64_t vocab = 50) {
  ModelInitConfig m;
  m.arch = arch;
  m.hidden_size = 32;
  m.num_hidden_layers = 2;
  m.num_attention_heads = 4;
  m.num_key_value_heads = 2;
  m.intermediate_size = 48;
  m.vocab_size = vocab;
  m.head_dim = head_dim;
  m.tie_word_embeddings = tie;
  m.eos_token_id = 2;
  m.pad_token_id = 0;
  return m.ToHfConfig().value();
}

}  // namespace rlhf::model::testing
