// rlhf init-model: a complete random-initialised HF model folder.
#include "cli/command.h"
#include "common/model/init.h"

namespace rlhf::cli {

Command InitModelCommand() {
  Command c;
  c.name = "init-model";
  c.help = "write a random-initialised Hugging Face model folder (llama, qwen2, qwen3)";
  c.add_sections = [](config::Schema& s) { model::ModelInitConfig::Spec().Register(s); };
  c.flags = {
      {"arch", "model.arch", "llama | qwen2 | qwen3"},
      {"hidden-size", "model.hidden_size", "hidden size"},
      {"layers", "model.num_hidden_layers", "decoder layers"},
      {"heads", "model.num_attention_heads", "attention heads"},
      {"kv-heads", "model.num_key_value_heads", "key/value heads"},
      {"intermediate-size", "model.intermediate_size", "MLP width"},
      {"vocab-size", "model.vocab_size", "vocabulary size"},
      {"head-dim", "model.head_dim", "head dimension (default hidden/heads)"},
      {"tie-embeddings", "model.tie_word_embeddings", "tie lm_head to the embedding", true},
      {"dtype", "model.dtype", "f32 | bf16 (float32 | bfloat16)"},
      {"tokenizer", "model.tokenizer", "tokenizer folder or tokenizer.json to copy along"},
      {"seed", "run.seed", "random seed"},
      {"out", "model.out", "output folder"},
  };
  c.body = [](const Context& ctx) -> absl::Status {
    auto init = model::ModelInitConfig::Spec().Read(ctx.config);
    return model::InitModelFolder(init, static_cast<uint64_t>(ctx.run.seed));
  };
  return c;
}

}  // namespace rlhf::cli
