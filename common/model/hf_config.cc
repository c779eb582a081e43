#include "common/model/hf_config.h"

#include <nlohmann/json.hpp>

namespace rlhf::model {

using nlohmann::json;

const char* ArchName(Arch arch) {
  switch (arch) {
    case Arch::kLlama: return "llama";
    case Arch::kQwen2: return "qwen2";
    case Arch::kQwen3: return "qwen3";
  }
  return "?";
}

absl::StatusOr<Arch> ParseArch(const std::string& name) {
  if (name == "llama") return Arch::kLlama;
  if (name == "qwen2") return Arch::kQwen2;
  if (name == "qwen3") return Arch::kQwen3;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown architecture '", name, "'; supported: llama, qwen2, qwen3"));
}

namespace {
const char* Prefix(Arch arch) {
  switch (arch) {
    case Arch::kLlama: return "Llama";
    case Arch::kQwen2: return "Qwen2";
    case Arch::kQwen3: return "Qwen3";
  }
  return "?";
}
const char* HeadSuffix(Head head) {
  switch (head) {
    case Head::kCausalLM: return "ForCausalLM";
    case Head::kSequenceClassification: return "ForSequenceClassification";
    case Head::kTokenClassification: return "ForTokenClassification";
  }
  return "?";
}
constexpr const char* kSupported =
    "LlamaForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM (and their ForSequenceClassification / "
    "ForTokenClassification variants)";

absl::Status Bad(const std::string& origin, const std::string& key, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat(origin, ": config key '", key, "' ", what));
}

absl::StatusOr<int64_t> GetInt(const json& j, const std::string& origin, const char* key,
                               std::optional<int64_t> fallback = std::nullopt) {
  if (!j.contains(key) || j[key].is_null()) {
    if (fallback) return *fallback;
    return Bad(origin, key, "is missing");
  }
  if (!j[key].is_number_integer()) return Bad(origin, key, "must be an integer");
  return j[key].get<int64_t>();
}

absl::StatusOr<double> GetNum(const json& j, const std::string& origin, const char* key, double fallback) {
  if (!j.contains(key) || j[key].is_null()) return fallback;
  if (!j[key].is_number()) return Bad(origin, key, "must be a number");
  return j[key].get<double>();
}

absl::StatusOr<bool> GetBool(const json& j, const std::string& origin, const char* key, bool fallback) {
  if (!j.contains(key) || j[key].is_null()) return fallback;
  if (!j[key].is_boolean()) return Bad(origin, key, "must be true or false");
  return j[key].get<bool>();
}

absl::Status ParseRopeScaling(const json& j, const std::string& origin, RopeScaling* out) {
  if (!j.contains("rope_scaling") || j["rope_scaling"].is_null()) return absl::OkStatus();
  const json& r = j["rope_scaling"];
  if (!r.is_object()) return Bad(origin, "rope_scaling", "must be an object or null");
  std::string type = r.value("rope_type", r.value("type", std::string("default")));
  if (type != "default" && type != "linear" && type != "llama3") {
    return Bad(origin, "rope_scaling",
               absl::StrCat("has type '", type, "', which is not implemented (supported: default, linear, llama3)"));
  }
  out->type = type;
  if (type == "default") return absl::OkStatus();
  ASSIGN_OR_RETURN(out->factor, GetNum(r, origin + " rope_scaling", "factor", 1.0));
  if (out->factor <= 0) return Bad(origin, "rope_scaling.factor", "must be > 0");
  if (type == "llama3") {
    ASSIGN_OR_RETURN(out->low_freq_factor, GetNum(r, origin + " rope_scaling", "low_freq_factor", 1.0));
    ASSIGN_OR_RETURN(out->high_freq_factor, GetNum(r, origin + " rope_scaling", "high_freq_factor", 4.0));
    ASSIGN_OR_RETURN(out->original_max_position_embeddings,
                     GetInt(r, origin + " rope_scaling", "original_max_position_embeddings", 8192));
    if (out->high_freq_factor <= out->low_freq_factor) {
      return Bad(origin, "rope_scaling.high_freq_factor", "must be > low_freq_factor");
    }
  }
  return absl::OkStatus();
}

std::vector<int64_t> IdList(const json& v) {
  std::vector<int64_t> ids;
  if (v.is_number_integer()) ids.push_back(v.get<int64_t>());
  if (v.is_array()) {
    for (const auto& x : v) {
      if (x.is_number_integer()) ids.push_back(x.get<int64_t>());
    }
  }
  return ids;
}

}  // namespace

std::string ArchitectureString(Arch arch, Head head) { return std::string(Prefix(arch)) + HeadSuffix(head); }

absl::StatusOr<HfConfig> ParseHfConfig(const std::string& text, const std::string& origin) {
  json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(origin, ": not a JSON object; is this a config.json?"));
  }
  HfConfig c;
  c.raw_json = text;
  // Architecture: from "architectures" when present, else from model_type (+ causal LM head).
  std::string arch_name;
  if (j.contains("architectures") && j["architectures"].is_array() && !j["architectures"].empty()) {
    arch_name = j["architectures"][0].get<std::string>();
    bool found = false;
    for (Arch a : {Arch::kLlama, Arch::kQwen2, Arch::kQwen3}) {
      for (Head h : {Head::kCausalLM, Head::kSequenceClassification, Head::kTokenClassification}) {
        if (arch_name == ArchitectureString(a, h)) {
          c.arch = a;
          c.head = h;
          found = true;
        }
      }
    }
    if (!found) {
      return absl::InvalidArgumentError(
          absl::StrCat(origin, ": unsupported architecture '", arch_name, "'; supported: ", kSupported));
    }
  } else if (j.contains("model_type") && j["model_type"].is_string()) {
    auto a = ParseArch(j["model_type"].get<std::string>());
    if (!a.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(origin, ": unsupported model_type '",
                                                     j["model_type"].get<std::string>(), "'; supported: ", kSupported));
    }
    c.arch = *a;
  } else {
    return Bad(origin, "architectures", absl::StrCat("is missing (and no model_type); supported: ", kSupported));
  }
  if (j.contains("model_type") && j["model_type"].is_string() && j["model_type"] != ArchName(c.arch)) {
    return Bad(origin, "model_type",
               absl::StrCat("is '", j["model_type"].get<std::string>(), "' but architectures says ", arch_name));
  }

  ASSIGN_OR_RETURN(c.vocab_size, GetInt(j, origin, "vocab_size"));
  ASSIGN_OR_RETURN(c.hidden_size, GetInt(j, origin, "hidden_size"));
  ASSIGN_OR_RETURN(c.intermediate_size, GetInt(j, origin, "intermediate_size"));
  ASSIGN_OR_RETURN(c.num_hidden_layers, GetInt(j, origin, "num_hidden_layers"));
  ASSIGN_OR_RETURN(c.num_attention_heads, GetInt(j, origin, "num_attention_heads"));
  ASSIGN_OR_RETURN(c.num_key_value_heads, GetInt(j, origin, "num_key_value_heads", c.num_attention_heads));
  for (auto [k, v] : {std::pair<const char*, int64_t>{"vocab_size", c.vocab_size},
                      {"hidden_size", c.hidden_size},
                      {"intermediate_size", c.intermediate_size},
                      {"num_hidden_layers", c.num_hidden_layers},
                      {"num_attention_heads", c.num_attention_heads},
                      {"num_key_value_heads", c.num_key_value_heads}}) {
    if (v <= 0) return Bad(origin, k, "must be > 0");
  }
  if (c.num_attention_heads % c.num_key_value_heads != 0) {
    return Bad(origin, "num_key_value_heads", "must divide num_attention_heads");
  }
  const int64_t default_head_dim = c.hidden_size / c.num_attention_heads;
  ASSIGN_OR_RETURN(c.head_dim, GetInt(j, origin, "head_dim", default_head_dim));
  if (c.head_dim <= 0 || c.head_dim % 2 != 0) return Bad(origin, "head_dim", "must be a positive even number");
  if (!j.contains("head_dim") && c.hidden_size % c.num_attention_heads != 0) {
    return Bad(origin, "hidden_size", "must be divisible by num_attention_heads (or set head_dim)");
  }
  ASSIGN_OR_RETURN(c.rms_norm_eps, GetNum(j, origin, "rms_norm_eps", 1e-6));
  ASSIGN_OR_RETURN(c.rope_theta, GetNum(j, origin, "rope_theta", 10000.0));
  ASSIGN_OR_RETURN(c.max_position_embeddings, GetInt(j, origin, "max_position_embeddings", 2048));
  ASSIGN_OR_RETURN(c.tie_word_embeddings, GetBool(j, origin, "tie_word_embeddings", false));
  RETURN_IF_ERROR(ParseRopeScaling(j, origin, &c.rope_scaling));

  // Math that is not implemented is refused, never ignored.
  std::string act = j.value("hidden_act", std::string("silu"));
  if (act != "silu") return Bad(origin, "hidden_act", absl::StrCat("is '", act, "'; only silu is implemented"));
  ASSIGN_OR_RETURN(bool sliding, GetBool(j, origin, "use_sliding_window", false));
  if (sliding) return Bad(origin, "use_sliding_window", "is true; sliding-window attention is not implemented");
  if (j.contains("layer_types") && j["layer_types"].is_array()) {
    for (const auto& t : j["layer_types"]) {
      if (t != "full_attention") return Bad(origin, "layer_types", "holds a layer type other than full_attention");
    }
  }
  ASSIGN_OR_RETURN(double partial, GetNum(j, origin, "partial_rotary_factor", 1.0));
  if (partial != 1.0) return Bad(origin, "partial_rotary_factor", "must be 1 (partial rotary is not implemented)");
  for (const char* k : {"attn_logit_softcapping", "final_logit_softcapping"}) {
    if (j.contains(k) && !j[k].is_null()) return Bad(origin, k, "is set; logit soft-capping is not implemented");
  }

  ASSIGN_OR_RETURN(bool attention_bias, GetBool(j, origin, "attention_bias", false));
  switch (c.arch) {
    case Arch::kLlama: {
      c.qkv_bias = c.o_bias = attention_bias;
      ASSIGN_OR_RETURN(c.mlp_bias, GetBool(j, origin, "mlp_bias", false));
      break;
    }
    case Arch::kQwen2:
      c.qkv_bias = true;
      c.o_bias = false;
      break;
    case Arch::kQwen3:
      c.qkv_bias = c.o_bias = attention_bias;
      c.qk_norm = true;
      break;
  }

  if (j.contains("id2label") && j["id2label"].is_object()) c.num_labels = static_cast<int64_t>(j["id2label"].size());
  ASSIGN_OR_RETURN(c.num_labels, GetInt(j, origin, "num_labels", c.num_labels));
  if (c.head == Head::kTokenClassification && c.num_labels != 1) {
    return Bad(origin, "id2label", "must have one label for a value head");
  }
  if (j.contains("bos_token_id") && j["bos_token_id"].is_number_integer()) c.bos_token_id = j["bos_token_id"].get<int64_t>();
  if (j.contains("pad_token_id") && j["pad_token_id"].is_number_integer()) c.pad_token_id = j["pad_token_id"].get<int64_t>();
  if (j.contains("eos_token_id")) c.eos_token_ids = IdList(j["eos_token_id"]);
  std::string dtype_key = j.contains("torch_dtype") ? "torch_dtype" : "dtype";
  if (j.contains(dtype_key) && j[dtype_key].is_string()) c.torch_dtype = j[dtype_key].get<std::string>();
  if (c.torch_dtype != "float32" && c.torch_dtype != "bfloat16" && c.torch_dtype != "float16") {
    return Bad(origin, dtype_key, absl::StrCat("is '", c.torch_dtype, "'; supported: float32, bfloat16, float16"));
  }
  return c;
}

std::string HfConfigToJson(const HfConfig& c) {
  json j = c.raw_json.empty() ? json::object() : json::parse(c.raw_json, nullptr, false);
  if (j.is_discarded()) j = json::object();
  j["architectures"] = json::array({ArchitectureString(c.arch, c.head)});
  j["model_type"] = ArchName(c.arch);
  j["vocab_size"] = c.vocab_size;
  j["hidden_size"] = c.hidden_size;
  j["intermediate_size"] = c.intermediate_size;
  j["num_hidden_layers"] = c.num_hidden_layers;
  j["num_attention_heads"] = c.num_attention_heads;
  j["num_key_value_heads"] = c.num_key_value_heads;
  if (c.arch != Arch::kQwen2 || c.head_dim != c.hidden_size / c.num_attention_heads) j["head_dim"] = c.head_dim;
  j["hidden_act"] = "silu";
  j["rms_norm_eps"] = c.rms_norm_eps;
  j["rope_theta"] = c.rope_theta;
  if (c.rope_scaling.type == "default") {
    j["rope_scaling"] = nullptr;
  } else {
    json r = {{"rope_type", c.rope_scaling.type}, {"factor", c.rope_scaling.factor}};
    if (c.rope_scaling.type == "llama3") {
      r["low_freq_factor"] = c.rope_scaling.low_freq_factor;
      r["high_freq_factor"] = c.rope_scaling.high_freq_factor;
      r["original_max_position_embeddings"] = c.rope_scaling.original_max_position_embeddings;
    }
    j["rope_scaling"] = r;
  }
  j["max_position_embeddings"] = c.max_position_embeddings;
  j["tie_word_embeddings"] = c.tie_word_embeddings;
  j["initializer_range"] = j.value("initializer_range", 0.02);
  j["attention_dropout"] = j.value("attention_dropout", 0.0);
  j["use_cache"] = j.value("use_cache", true);
  switch (c.arch) {
    case Arch::kLlama:
      j["attention_bias"] = c.o_bias;
      j["mlp_bias"] = c.mlp_bias;
      j["pretraining_tp"] = j.value("pretraining_tp", 1);
      break;
    case Arch::kQwen2:
      j["use_sliding_window"] = false;
      j["sliding_window"] = j.value("sliding_window", c.max_position_embeddings);
      j["max_window_layers"] = j.value("max_window_layers", c.num_hidden_layers);
      break;
    case Arch::kQwen3:
      j["attention_bias"] = c.o_bias;
      j["use_sliding_window"] = false;
      if (!j.contains("sliding_window")) j["sliding_window"] = nullptr;
      j["max_window_layers"] = j.value("max_window_layers", c.num_hidden_layers);
      break;
  }
  if (c.head != Head::kCausalLM) {
    json id2label = json::object(), label2id = json::object();
    for (int64_t i = 0; i < c.num_labels; ++i) {
      id2label[std::to_string(i)] = "LABEL_" + std::to_string(i);
      label2id["LABEL_" + std::to_string(i)] = i;
    }
    j["id2label"] = id2label;
    j["label2id"] = label2id;
  }
  if (c.bos_token_id) j["bos_token_id"] = *c.bos_token_id;
  if (c.pad_token_id) j["pad_token_id"] = *c.pad_token_id;
  if (c.eos_token_ids.size() == 1) j["eos_token_id"] = c.eos_token_ids[0];
  if (c.eos_token_ids.size() > 1) j["eos_token_id"] = c.eos_token_ids;
  j.erase("dtype");
  j["torch_dtype"] = c.torch_dtype;
  if (!j.contains("transformers_version")) j["transformers_version"] = "4.51.3";
  return j.dump(2) + "\n";
}

}  // namespace rlhf::model
