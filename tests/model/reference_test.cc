// The forward pass against an independent implementation (tests/python/hf_reference.py, float64 on
// python3-torch) on checkpoints written by that other software, through the real `rlhf` binary; and the
// folders this system writes against the layout transformers loads.
#include <gtest/gtest.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <string>

#include "common/model/checkpoint.h"
#include "tests/model/test_models.h"
#include "tests/test_util.h"

namespace rlhf::model {
namespace {

namespace fs = std::filesystem;

using rlhf::testing::RunCommand;

const std::string kPy = std::string(RLHF_PYTHON3) + " " + RLHF_SOURCE_DIR + "/tests/python/hf_reference.py";
const std::string kRlhf = std::string(RLHF_BINARY_DIR) + "/cli/rlhf";
const std::string kIds = "1,17,5,99,3,42,42,7,0,63,11,2,88,31,64,19,101,23,5,5";

std::string Tmp(const std::string& name) {
  auto p = fs::path(::testing::TempDir()) / ("ref_" + name);
  fs::remove_all(p);
  return p.string();
}

// rlhf logits on `model` (optionally --dtype), compared to the reference forward of `reference` (default: same).
void ExpectLogitsMatch(const std::string& model, const std::string& dtype, double tol, const std::string& reference = "") {
  std::string out = model + ".logits.safetensors";
  auto r = RunCommand(kRlhf + " logits --model " + model + " --ids " + kIds + " --out " + out + " --run-dir " + model +
               ".run" + (dtype.empty() ? "" : " --dtype " + dtype));
  ASSERT_EQ(r.code, 0) << r.out;
  auto c = RunCommand(kPy + " compare --model " + (reference.empty() ? model : reference) + " --ids " + kIds + " --ours " +
               out + " --tol " + std::to_string(tol));
  EXPECT_EQ(c.code, 0) << model << ": " << c.out;
  std::printf("%s: %s", fs::path(model).filename().c_str(), c.out.c_str());
}

struct Variant {
  std::string name, gen_args, dtype;
  double tol;
};

void PrintTo(const Variant& v, std::ostream* os) { *os << v.name; }

class Reference : public ::testing::TestWithParam<Variant> {};

TEST_P(Reference, LogitsMatchTheIndependentForward) {
  const auto& v = GetParam();
  std::string dir = Tmp(v.name);
  auto g = RunCommand(kPy + " gen --out " + dir + " " + v.gen_args);
  ASSERT_EQ(g.code, 0) << g.out;
  ExpectLogitsMatch(dir, v.dtype, v.tol);
}

INSTANTIATE_TEST_SUITE_P(
    Checkpoints, Reference,
    ::testing::Values(Variant{"llama_untied", "--arch llama", "", 1e-4},
                      Variant{"llama_tied_bias_headdim", "--arch llama --tie --bias --head-dim 24", "", 1e-4},
                      Variant{"llama3_rope_sharded", "--arch llama --llama3-rope --shards 3", "", 1e-4},
                      Variant{"qwen2_untied", "--arch qwen2", "", 1e-4},
                      Variant{"qwen2_tied_sharded", "--arch qwen2 --tie --shards 4", "", 1e-4},
                      Variant{"qwen3_untied", "--arch qwen3", "", 1e-4},
                      Variant{"qwen3_tied_headdim", "--arch qwen3 --tie --head-dim 32", "", 1e-4},
                      Variant{"qwen3_bf16_as_f32", "--arch qwen3 --dtype bf16", "float32", 1e-4},
                      Variant{"qwen2_f16", "--arch qwen2 --dtype f16", "", 1e-4},
                      Variant{"llama_bf16_sharded_as_f32", "--arch llama --dtype bf16 --shards 2", "float32", 1e-4},
                      // bf16 compute: matmuls round to 8 bits of mantissa; logits are O(10).
                      Variant{"qwen2_bf16_compute", "--arch qwen2 --dtype bf16", "bfloat16", 0.25}),
    [](const auto& info) { return info.param.name; });

TEST(Reference, WhatWeSaveLoadsBackAndKeepsTheHfLayout) {
  // Other software's checkpoint -> our loader -> our writer (sharded) -> same logits, HF layout.
  std::string src = Tmp("layout_src");
  ASSERT_EQ(RunCommand(kPy + " gen --arch qwen3 --bias --out " + src).code, 0);
  auto m = LoadModel(src);
  ASSERT_TRUE(m.ok()) << m.status();
  std::string dst = Tmp("layout_dst");
  SaveOptions o;
  o.max_shard_bytes = 30000;
  ASSERT_TRUE(SaveModel(**m, dst, o).ok());
  ASSERT_TRUE(fs::exists(fs::path(dst) / "model.safetensors.index.json"));
  auto layout = RunCommand(kPy + " check-layout --model " + dst);
  EXPECT_EQ(layout.code, 0) << layout.out;
  ExpectLogitsMatch(dst, "", 1e-4, src);
}

TEST(Reference, InitModelFoldersHaveTheHfLayout) {
  for (std::string flags : {"--arch llama --tie-embeddings", "--arch qwen2", "--arch qwen3 --dtype bf16 --head-dim 16"}) {
    std::string dir = Tmp("init_" + std::to_string(std::hash<std::string>{}(flags)));
    auto r = RunCommand(kRlhf + " init-model " + flags +
                 " --hidden-size 48 --layers 2 --heads 4 --kv-heads 2 --intermediate-size 64 --vocab-size 128 --seed 3"
                 " --out " + dir + " --run-dir " + dir + ".run");
    ASSERT_EQ(r.code, 0) << r.out;
    auto layout = RunCommand(kPy + " check-layout --model " + dir);
    EXPECT_EQ(layout.code, 0) << flags << ": " << layout.out;
  }
  // Heads: a reward model and a critic written by SaveModel.
  for (Head h : {Head::kSequenceClassification, Head::kTokenClassification}) {
    auto c = testing::Tiny("llama");
    c.head = h;
    Transformer t(c);
    std::string dir = Tmp(h == Head::kSequenceClassification ? "rm_layout" : "critic_layout");
    ASSERT_TRUE(SaveModel(*t, dir).ok());
    auto layout = RunCommand(kPy + " check-layout --model " + dir);
    EXPECT_EQ(layout.code, 0) << layout.out;
  }
}

TEST(Cli, FailuresExitNonZeroWithOneLine) {
  std::string run = " --run-dir " + Tmp("cli_run");
  auto missing = RunCommand(kRlhf + " logits --model /nonexistent --ids 1 --out /tmp/x.safetensors" + run);
  EXPECT_NE(missing.code, 0);
  EXPECT_NE(missing.out.find("rlhf logits: error: model folder '/nonexistent' does not exist"), std::string::npos)
      << missing.out;
  auto badkey = RunCommand(kRlhf + " init-model --set model.hiden_size=3 --out /tmp/x" + run);
  EXPECT_EQ(badkey.code, 2);
  EXPECT_NE(badkey.out.find("unknown config key 'model.hiden_size' (did you mean 'model.hidden_size'?)"),
            std::string::npos)
      << badkey.out;
  auto range = RunCommand(kRlhf + " init-model --layers 0 --out /tmp/x" + run);
  EXPECT_EQ(range.code, 2);
  EXPECT_NE(range.out.find("config key 'model.num_hidden_layers': must be >= 1"), std::string::npos) << range.out;
  std::string dir = Tmp("cli_model");
  ASSERT_EQ(RunCommand(kRlhf + " init-model --vocab-size 64 --out " + dir + run).code, 0);
  auto vocab = RunCommand(kRlhf + " logits --model " + dir + " --ids 1,64 --out " + dir + "/l.safetensors" + run);
  EXPECT_NE(vocab.code, 0);
  EXPECT_NE(vocab.out.find("token id 64 is outside the vocabulary [0, 64)"), std::string::npos) << vocab.out;
  auto again = RunCommand(kRlhf + " init-model --out " + dir + run);
  EXPECT_NE(again.code, 0);
  EXPECT_NE(again.out.find("exists and is not empty"), std::string::npos) << again.out;
  // The resolved config and the log are saved in the run directory.
  std::string run2 = Tmp("cli_run2");
  auto ok = RunCommand(kRlhf + " init-model --vocab-size 64 --out " + Tmp("cli_model2") + " --run-dir " + run2);
  ASSERT_EQ(ok.code, 0) << ok.out;
  EXPECT_TRUE(fs::exists(fs::path(run2) / "config.yaml"));
  EXPECT_TRUE(fs::exists(fs::path(run2) / "log.txt"));
}

}  // namespace
}  // namespace rlhf::model
