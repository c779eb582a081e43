#include "common/model/init.h"

#include <spdlog/spdlog.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "common/model/checkpoint.h"

namespace rlhf::model {

namespace fs = std::filesystem;

const config::Section<ModelInitConfig>& ModelInitConfig::Spec() {
  static const auto* s = [] {
    using M = ModelInitConfig;
    auto* s = new config::Section<M>("model");
    s->Add("arch", &M::arch, "architecture: llama, qwen2 or qwen3", config::OneOf({"llama", "qwen2", "qwen3"}));
    s->Add("hidden_size", &M::hidden_size, "hidden size C", config::AtLeast(2));
    s->Add("num_hidden_layers", &M::num_hidden_layers, "number of decoder layers", config::AtLeast(1));
    s->Add("num_attention_heads", &M::num_attention_heads, "query heads H", config::AtLeast(1));
    s->Add("num_key_value_heads", &M::num_key_value_heads, "key/value heads K (must divide H)", config::AtLeast(1));
    s->Add("intermediate_size", &M::intermediate_size, "SwiGLU MLP width", config::AtLeast(1));
    s->Add("vocab_size", &M::vocab_size, "vocabulary size V (at least the tokenizer's)", config::AtLeast(1));
    s->Add("head_dim", &M::head_dim, "head dimension D; 0 = hidden_size / num_attention_heads", config::AtLeast(0));
    s->Add("tie_word_embeddings", &M::tie_word_embeddings, "lm_head shares the input embedding");
    s->Add("attention_bias", &M::attention_bias, "llama/qwen3: biases on q, k, v, o (qwen2 always has q/k/v biases)");
    s->Add("rope_theta", &M::rope_theta, "rotary embedding base", config::AtLeast(1));
    s->Add("rms_norm_eps", &M::rms_norm_eps, "RMSNorm epsilon", config::InRange(0, 1));
    s->Add("max_position_embeddings", &M::max_position_embeddings, "context length", config::AtLeast(1));
    s->Add("bos_token_id", &M::bos_token_id, "beginning-of-sequence id; -1 = none", config::AtLeast(-1));
    s->Add("eos_token_id", &M::eos_token_id, "end-of-sequence id; -1 = none", config::AtLeast(-1));
    s->Add("pad_token_id", &M::pad_token_id, "padding id; -1 = none", config::AtLeast(-1));
    s->Add("dtype", &M::dtype, "dtype of the saved weights: float32 (f32) or bfloat16 (bf16)",
           config::OneOf({"float32", "bfloat16", "f32", "bf16"}));
    s->Add("tokenizer", &M::tokenizer,
           "folder (or tokenizer.json) whose tokenizer files are copied along; its bos/eos/pad tokens give the ids "
           "left at -1; \"\" = none");
    s->Add("out", &M::out, "output folder for the new model (must not exist or be empty)");
    return s;
  }();
  return *s;
}

ModelInitConfig ModelInitConfig::Small() {
  ModelInitConfig m;
  m.arch = "llama";
  m.hidden_size = 768;
  m.num_hidden_layers = 12;
  m.num_attention_heads = 12;
  m.num_key_value_heads = 4;
  m.intermediate_size = 2048;
  m.vocab_size = 32000;
  m.max_position_embeddings = 4096;
  return m;
}

ModelInitConfig ModelInitConfig::Qwen3_0_6B() {
  ModelInitConfig m;
  m.arch = "qwen3";
  m.hidden_size = 1024;
  m.num_hidden_layers = 28;
  m.num_attention_heads = 16;
  m.num_key_value_heads = 8;
  m.head_dim = 128;
  m.intermediate_size = 3072;
  m.vocab_size = 151936;
  m.tie_word_embeddings = true;
  m.rope_theta = 1000000.0;
  m.max_position_embeddings = 40960;
  return m;
}

absl::StatusOr<HfConfig> ModelInitConfig::ToHfConfig() const {
  // Built as config.json text and parsed, so that a new model passes exactly the checks a loaded one does.
  nlohmann::json j;
  ASSIGN_OR_RETURN(Arch a, ParseArch(arch));
  j["architectures"] = {ArchitectureString(a, Head::kCausalLM)};
  j["model_type"] = ArchName(a);
  j["hidden_size"] = hidden_size;
  j["num_hidden_layers"] = num_hidden_layers;
  j["num_attention_heads"] = num_attention_heads;
  j["num_key_value_heads"] = num_key_value_heads;
  j["intermediate_size"] = intermediate_size;
  j["vocab_size"] = vocab_size;
  if (head_dim > 0) j["head_dim"] = head_dim;
  j["tie_word_embeddings"] = tie_word_embeddings;
  if (a != Arch::kQwen2) j["attention_bias"] = attention_bias;
  j["rope_theta"] = rope_theta;
  j["rms_norm_eps"] = rms_norm_eps;
  j["max_position_embeddings"] = max_position_embeddings;
  if (bos_token_id >= 0) j["bos_token_id"] = bos_token_id;
  if (eos_token_id >= 0) j["eos_token_id"] = eos_token_id;
  if (pad_token_id >= 0) j["pad_token_id"] = pad_token_id;
  ASSIGN_OR_RETURN(auto torch_dtype, ParseTorchDtype(dtype));
  j["torch_dtype"] = TorchDtypeName(torch_dtype);
  for (int64_t id : {bos_token_id, eos_token_id, pad_token_id}) {
    if (id >= vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat("config key 'model.vocab_size' (", vocab_size,
                                                     ") must exceed every special token id (", id, ")"));
    }
  }
  auto c = ParseHfConfig(j.dump(), "model");
  if (!c.ok()) return c.status();
  c->raw_json.clear();
  return c;
}

namespace {
// The id of the special token named by tokenizer_config.json's `key` (bos_token, eos_token, pad_token),
// looked up in tokenizer.json's added tokens; -1 when there is none.
int64_t SpecialTokenId(const fs::path& folder, const char* key) {
  std::ifstream cin(folder / "tokenizer_config.json"), tin(folder / "tokenizer.json");
  if (!cin || !tin) return -1;
  std::stringstream cs, ts;
  cs << cin.rdbuf();
  ts << tin.rdbuf();
  auto cfg = nlohmann::json::parse(cs.str(), nullptr, false);
  auto tok = nlohmann::json::parse(ts.str(), nullptr, false);
  if (cfg.is_discarded() || tok.is_discarded() || !cfg.contains(key)) return -1;
  std::string name = cfg[key].is_string() ? cfg[key].get<std::string>()
                     : cfg[key].is_object() ? cfg[key].value("content", "") : "";
  if (name.empty() || !tok.contains("added_tokens")) return -1;
  for (const auto& t : tok["added_tokens"]) {
    if (t.value("content", "") == name) return t.value("id", int64_t{-1});
  }
  return -1;
}

// Largest id the tokenizer.json in `path` (a folder or the file) uses; -1 when there is none.
absl::StatusOr<int64_t> TokenizerMaxId(const fs::path& path) {
  fs::path file = fs::is_directory(path) ? path / "tokenizer.json" : path;
  if (!fs::exists(file)) return int64_t{-1};
  std::ifstream in(file);
  std::stringstream ss;
  ss << in.rdbuf();
  auto j = nlohmann::json::parse(ss.str(), nullptr, false);
  if (j.is_discarded()) return absl::InvalidArgumentError(absl::StrCat(file.string(), ": not valid JSON"));
  int64_t max_id = -1;
  if (j.contains("model") && j["model"].contains("vocab") && j["model"]["vocab"].is_object()) {
    for (const auto& [k, v] : j["model"]["vocab"].items()) {
      if (v.is_number_integer()) max_id = std::max(max_id, v.get<int64_t>());
    }
  }
  if (j.contains("added_tokens") && j["added_tokens"].is_array()) {
    for (const auto& t : j["added_tokens"]) {
      if (t.contains("id") && t["id"].is_number_integer()) max_id = std::max(max_id, t["id"].get<int64_t>());
    }
  }
  return max_id;
}
}  // namespace

absl::Status InitModelFolder(const ModelInitConfig& given, uint64_t seed) {
  if (given.out.empty()) return absl::InvalidArgumentError("config key 'model.out' is empty: give --out DIR");
  ModelInitConfig init = given;
  if (!init.tokenizer.empty()) {
    // Special token ids not given explicitly come from the tokenizer's config.
    fs::path folder = fs::is_directory(init.tokenizer) ? fs::path(init.tokenizer) : fs::path(init.tokenizer).parent_path();
    if (init.bos_token_id < 0) init.bos_token_id = SpecialTokenId(folder, "bos_token");
    if (init.eos_token_id < 0) init.eos_token_id = SpecialTokenId(folder, "eos_token");
    if (init.pad_token_id < 0) init.pad_token_id = SpecialTokenId(folder, "pad_token");
  }
  ASSIGN_OR_RETURN(HfConfig config, init.ToHfConfig());
  SaveOptions save;
  if (!init.tokenizer.empty()) {
    fs::path t(init.tokenizer);
    if (!fs::exists(t)) {
      return absl::NotFoundError(absl::StrCat("config key 'model.tokenizer': '", init.tokenizer, "' does not exist"));
    }
    ASSIGN_OR_RETURN(int64_t max_id, TokenizerMaxId(t));
    if (max_id >= config.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat("config key 'model.vocab_size' (", config.vocab_size,
                                                     ") is too small for the tokenizer, whose ids reach ", max_id,
                                                     ": use --vocab-size ", max_id + 1, " or more"));
    }
    save.copy_tokenizer_from = fs::is_directory(t) ? t.string() : t.parent_path().string();
  }
  Transformer model(config);
  model->InitWeights(seed);
  ASSIGN_OR_RETURN(save.dtype, ParseTorchDtype(init.dtype));
  model->to(*save.dtype);
  int64_t params = 0;
  for (const auto& p : model->parameters()) params += p.numel();
  RETURN_IF_ERROR(SaveModel(*model, init.out, save));
  spdlog::info("init-model: {} with {:.3f}M parameters ({}), seed {}, written to {}",
               ArchitectureString(config.arch, config.head), params / 1e6, config.torch_dtype, seed, init.out);
  return absl::OkStatus();
}

}  // namespace rlhf::model
