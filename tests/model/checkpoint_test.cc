#include "common/model/checkpoint.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <cstring>
#include <functional>
#include <set>
#include <sstream>

#include "common/model/safetensors.h"
#include "tests/model/test_models.h"
#include "tests/test_util.h"

namespace rlhf::model {
namespace {

namespace fs = std::filesystem;
using testing::Tiny;

std::string Dir(const std::string& name) {
  auto p = fs::path(::testing::TempDir()) / ("ckpt_" + name);
  fs::remove_all(p);
  return p.string();
}

Transformer Saved(const HfConfig& c, const std::string& dir, SaveOptions opts = {}) {
  Transformer m(c);
  m->InitWeights(11, 0.2);
  EXPECT_TRUE(SaveModel(*m, dir, opts).ok());
  return m;
}

std::string Slurp(const fs::path& p) { return rlhf::testing::ReadFile(p.string()); }

void ExpectSameWeights(TransformerImpl& a, TransformerImpl& b) {
  auto pa = a.named_parameters(), pb = b.named_parameters();
  ASSERT_EQ(pa.size(), pb.size());
  for (const auto& p : pa) {
    ASSERT_TRUE(pb.contains(p.key())) << p.key();
    EXPECT_TRUE(torch::equal(p.value().to(torch::kFloat32), pb[p.key()].to(torch::kFloat32))) << p.key();
  }
}

TEST(Checkpoint, RoundTripF32TiedAndUntied) {
  for (bool tie : {false, true}) {
    std::string dir = Dir(tie ? "tied" : "untied");
    auto m = Saved(Tiny("qwen3", tie), dir);
    EXPECT_TRUE(fs::exists(fs::path(dir) / "model.safetensors"));
    EXPECT_TRUE(fs::exists(fs::path(dir) / "generation_config.json"));
    auto f = SafetensorsFile::Open((fs::path(dir) / "model.safetensors").string());
    ASSERT_TRUE(f.ok());
    EXPECT_EQ((*f)->Find("lm_head.weight") != nullptr, !tie) << "HF omits lm_head.weight when tied";
    auto back = LoadModel(dir);
    ASSERT_TRUE(back.ok()) << back.status();
    ExpectSameWeights(*m, **back);
    EXPECT_EQ((*back)->config().tie_word_embeddings, tie);
  }
}

TEST(Checkpoint, ShardedBf16WithIndex) {
  std::string dir = Dir("sharded");
  SaveOptions o;
  o.dtype = torch::kBFloat16;
  o.max_shard_bytes = 20000;
  auto m = Saved(Tiny("llama"), dir, o);
  auto index = nlohmann::json::parse(Slurp(fs::path(dir) / "model.safetensors.index.json"));
  std::set<std::string> files;
  for (const auto& [k, v] : index["weight_map"].items()) files.insert(v.get<std::string>());
  ASSERT_GT(files.size(), 1u);
  const std::string first = *files.begin();
  EXPECT_EQ(first.substr(0, 12), "model-00001-");
  EXPECT_FALSE(fs::exists(fs::path(dir) / "model.safetensors"));
  EXPECT_EQ(nlohmann::json::parse(Slurp(fs::path(dir) / "config.json"))["torch_dtype"], "bfloat16");
  int64_t total = 0;
  for (const auto& p : m->parameters()) total += p.numel() * 2;
  EXPECT_EQ(index["metadata"]["total_size"].get<int64_t>(), total);
  LoadOptions bf16;
  bf16.dtype = torch::kBFloat16;
  auto back = LoadModel(dir, bf16);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ((*back)->dtype(), torch::kBFloat16);
  // No dtype given: the checkpoint's, on every machine and every load (never a timing race).
  for (int i = 0; i < 3; ++i) {
    auto automatic = LoadModel(dir);
    ASSERT_TRUE(automatic.ok());
    EXPECT_EQ((*automatic)->dtype(), torch::kBFloat16);
  }
  m->to(torch::kBFloat16);
  ExpectSameWeights(*m, **back);
  LoadOptions f32;
  f32.dtype = torch::kFloat32;
  auto up = LoadModel(dir, f32);
  ASSERT_TRUE(up.ok());
  EXPECT_EQ((*up)->dtype(), torch::kFloat32);
}

TEST(Checkpoint, HeadsSaveAndLoad) {
  auto c = Tiny("qwen2");
  c.head = Head::kSequenceClassification;
  std::string dir = Dir("rm");
  auto rm = Saved(c, dir);
  auto cfg = nlohmann::json::parse(Slurp(fs::path(dir) / "config.json"));
  EXPECT_EQ(cfg["architectures"][0], "Qwen2ForSequenceClassification");
  EXPECT_EQ(cfg["id2label"].size(), 1u);
  EXPECT_FALSE(fs::exists(fs::path(dir) / "generation_config.json"));
  auto back = LoadModel(dir);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ((*back)->config().head, Head::kSequenceClassification);
  ExpectSameWeights(*rm, **back);

  // A critic initialised from a policy: backbone loaded, a fresh value head.
  std::string pol = Dir("policy");
  auto policy = Saved(Tiny("qwen2"), pol);
  LoadOptions o;
  o.head = Head::kTokenClassification;
  o.init_seed = 3;
  auto critic = LoadModel(pol, o);
  ASSERT_TRUE(critic.ok()) << critic.status();
  EXPECT_TRUE(torch::equal((*critic)->model->norm->weight, policy->model->norm->weight));
  EXPECT_TRUE((*critic)->named_parameters().contains("score.bias"));
  EXPECT_GT((*critic)->score->weight.abs().sum().item<float>(), 0.f);
}

TEST(Checkpoint, RefusesToOverwrite) {
  std::string dir = Dir("busy");
  fs::create_directories(dir);
  std::ofstream(fs::path(dir) / "keep.txt") << "x";
  Transformer m(Tiny("llama"));
  auto s = SaveModel(*m, dir);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(fs::exists(fs::path(dir) / "keep.txt"));
  SaveOptions o;
  o.overwrite = true;
  ASSERT_TRUE(SaveModel(*m, dir, o).ok());
  EXPECT_FALSE(fs::exists(fs::path(dir) / "keep.txt"));
  EXPECT_TRUE(LoadModel(dir).ok());
}

// Rewrites dir/model.safetensors with `edit` applied to the tensor map.
void EditTensors(const std::string& dir, const std::function<void(std::map<std::string, torch::Tensor>&)>& edit) {
  auto f = SafetensorsFile::Open((fs::path(dir) / "model.safetensors").string());
  ASSERT_TRUE(f.ok());
  std::map<std::string, torch::Tensor> t;
  for (const auto& info : (*f)->tensors()) {
    auto x = torch::empty(info.shape, torch::kFloat32);
    std::memcpy(x.data_ptr(), (*f)->Data(info), info.end - info.begin);
    t[info.name] = x;
  }
  f->reset();
  edit(t);
  std::vector<TensorToWrite> w;
  for (auto& [name, x] : t) w.push_back({name, StDType::kF32, std::vector<int64_t>(x.sizes().begin(), x.sizes().end()), x.data_ptr()});
  ASSERT_TRUE(WriteSafetensors((fs::path(dir) / "model.safetensors").string(), w, {{"format", "pt"}}).ok());
}

void ExpectLoadError(const std::string& dir, absl::StatusCode code, const std::string& needle) {
  auto r = LoadModel(dir);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), code) << r.status();
  EXPECT_NE(r.status().message().find(needle), std::string::npos) << "'" << needle << "' not in: " << r.status().message();
  EXPECT_EQ(r.status().message().find('\n'), std::string::npos);
}

TEST(Checkpoint, MissingTensorIsNamed) {
  std::string dir = Dir("missing");
  Saved(Tiny("llama"), dir);
  EditTensors(dir, [](auto& t) { t.erase("model.layers.1.mlp.up_proj.weight"); });
  ExpectLoadError(dir, absl::StatusCode::kNotFound, "tensor 'model.layers.1.mlp.up_proj.weight' (shape [48, 32]) is missing");
}

TEST(Checkpoint, WrongShapeIsNamed) {
  std::string dir = Dir("shape");
  Saved(Tiny("llama"), dir);
  EditTensors(dir, [](auto& t) { t["model.norm.weight"] = torch::ones({31}); });
  ExpectLoadError(dir, absl::StatusCode::kInvalidArgument, "tensor 'model.norm.weight' has shape [31] but the config needs [32]");
}

TEST(Checkpoint, UnexpectedTensorsAreRefused) {
  std::string dir = Dir("extra");
  Saved(Tiny("llama"), dir);
  EditTensors(dir, [](auto& t) { t["model.layers.9.mlp.up_proj.weight"] = torch::ones({2}); });
  ExpectLoadError(dir, absl::StatusCode::kInvalidArgument, "not part of a LlamaForCausalLM");
}

TEST(Checkpoint, TruncatedShardIsDataLoss) {
  std::string dir = Dir("trunc");
  Saved(Tiny("qwen3"), dir);
  auto p = fs::path(dir) / "model.safetensors";
  fs::resize_file(p, fs::file_size(p) - 100);
  ExpectLoadError(dir, absl::StatusCode::kDataLoss, "outside the data");
}

void WriteConfig(const std::string& dir, const std::function<void(nlohmann::json&)>& edit) {
  auto p = fs::path(dir) / "config.json";
  auto j = nlohmann::json::parse(Slurp(p));
  edit(j);
  std::ofstream(p) << j.dump(2);
}

TEST(Checkpoint, UnsupportedConfigsAreRefusedWithTheKey) {
  std::string dir = Dir("cfg");
  Saved(Tiny("llama"), dir);
  WriteConfig(dir, [](auto& j) { j["architectures"] = {"MistralForCausalLM"}; j["model_type"] = "mistral"; });
  ExpectLoadError(dir, absl::StatusCode::kInvalidArgument, "unsupported architecture 'MistralForCausalLM'; supported: LlamaForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM");
  WriteConfig(dir, [](auto& j) { j["architectures"] = {"LlamaForCausalLM"}; j["model_type"] = "llama"; j["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4.0}}; });
  ExpectLoadError(dir, absl::StatusCode::kInvalidArgument, "'rope_scaling' has type 'yarn', which is not implemented");
  WriteConfig(dir, [](auto& j) { j["rope_scaling"] = nullptr; j["hidden_act"] = "gelu"; });
  ExpectLoadError(dir, absl::StatusCode::kInvalidArgument, "'hidden_act' is 'gelu'");
  WriteConfig(dir, [](auto& j) { j["hidden_act"] = "silu"; j["use_sliding_window"] = true; });
  ExpectLoadError(dir, absl::StatusCode::kInvalidArgument, "sliding-window attention is not implemented");
  WriteConfig(dir, [](auto& j) { j["use_sliding_window"] = false; j["num_key_value_heads"] = 3; });
  ExpectLoadError(dir, absl::StatusCode::kInvalidArgument, "'num_key_value_heads' must divide num_attention_heads");
  WriteConfig(dir, [](auto& j) { j["num_key_value_heads"] = 2; j.erase("hidden_size"); });
  ExpectLoadError(dir, absl::StatusCode::kInvalidArgument, "'hidden_size' is missing");
}

TEST(Checkpoint, MissingFolderOrFiles) {
  ExpectLoadError(Dir("nowhere"), absl::StatusCode::kNotFound, "does not exist");
  std::string dir = Dir("nofiles");
  Saved(Tiny("llama"), dir);
  fs::remove(fs::path(dir) / "model.safetensors");
  ExpectLoadError(dir, absl::StatusCode::kNotFound, "neither model.safetensors nor model.safetensors.index.json");
  fs::remove(fs::path(dir) / "config.json");
  ExpectLoadError(dir, absl::StatusCode::kNotFound, "config.json: missing");
}

TEST(Checkpoint, TokenizerFilesAreCopiedAlong) {
  std::string src = Dir("tok_src");
  fs::create_directories(src);
  std::ofstream(fs::path(src) / "tokenizer.json") << "{\"model\":{\"vocab\":{\"a\":0}}}";
  std::ofstream(fs::path(src) / "tokenizer_config.json") << "{}";
  std::string dir = Dir("tok_dst");
  SaveOptions o;
  o.copy_tokenizer_from = src;
  Saved(Tiny("llama"), dir, o);
  EXPECT_TRUE(fs::exists(fs::path(dir) / "tokenizer.json"));
  EXPECT_TRUE(fs::exists(fs::path(dir) / "tokenizer_config.json"));
}

}  // namespace
}  // namespace rlhf::model
