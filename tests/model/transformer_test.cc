#include "common/model/transformer.h"

#include <gtest/gtest.h>

#include "tests/model/test_models.h"

namespace rlhf::model {
namespace {

using testing::Tiny;

Transformer MakeModel(const std::string& arch, uint64_t seed = 1, bool tie = false) {
  Transformer m(Tiny(arch, tie));
  m->InitWeights(seed, 0.2);  // larger than HF's 0.02 so that attention patterns matter
  m->eval();
  return m;
}

torch::Tensor Ids(std::vector<int64_t> v) { return torch::tensor(v, torch::kInt64).unsqueeze(0); }

// Logits [T, V] of one unpadded sequence.
torch::Tensor Full(Transformer& m, const std::vector<int64_t>& ids) {
  return m->Logits(m->Hidden(Ids(ids))).squeeze(0);
}

// Left-pads sequences into ids / mask [B, T].
std::pair<torch::Tensor, torch::Tensor> LeftPad(const std::vector<std::vector<int64_t>>& seqs, int64_t T) {
  const int64_t B = static_cast<int64_t>(seqs.size());
  auto ids = torch::zeros({B, T}, torch::kInt64);
  auto mask = torch::zeros({B, T}, torch::kInt64);
  for (int64_t b = 0; b < B; ++b) {
    int64_t off = T - static_cast<int64_t>(seqs[b].size());
    for (size_t t = 0; t < seqs[b].size(); ++t) {
      ids[b][off + static_cast<int64_t>(t)] = seqs[b][t];
      mask[b][off + static_cast<int64_t>(t)] = 1;
    }
  }
  return {ids, mask};
}

class PerArch : public ::testing::TestWithParam<std::string> {};

TEST_P(PerArch, LeftPaddedBatchEqualsSingleSequences) {
  torch::NoGradGuard ng;
  auto m = MakeModel(GetParam());
  std::vector<std::vector<int64_t>> seqs = {{5, 6, 7}, {9, 10, 11, 12, 13}, {3, 4, 8, 20, 21, 22, 23}};
  const int64_t T = 7;
  auto [ids, mask] = LeftPad(seqs, T);
  ForwardOptions o;
  o.attention_mask = mask;
  auto logits = m->Logits(m->Hidden(ids, o));
  EXPECT_FALSE(logits.isnan().any().item<bool>());
  for (int b = 0; b < 3; ++b) {
    int64_t n = static_cast<int64_t>(seqs[b].size());
    auto want = Full(m, seqs[b]);
    EXPECT_TRUE(torch::allclose(logits[b].narrow(0, T - n, n), want, 1e-5, 1e-5)) << "row " << b;
  }
}

TEST_P(PerArch, RightPaddedBatchEqualsSingleSequences) {
  torch::NoGradGuard ng;
  auto m = MakeModel(GetParam());
  auto ids = torch::tensor({{5, 6, 7, 0, 0}, {9, 10, 11, 12, 13}}, torch::kInt64);
  auto mask = torch::tensor({{1, 1, 1, 0, 0}, {1, 1, 1, 1, 1}}, torch::kInt64);
  ForwardOptions o;
  o.attention_mask = mask;
  auto logits = m->Logits(m->Hidden(ids, o));
  EXPECT_TRUE(torch::allclose(logits[0].narrow(0, 0, 3), Full(m, {5, 6, 7}), 1e-5, 1e-5));
  EXPECT_TRUE(torch::allclose(logits[1], Full(m, {9, 10, 11, 12, 13}), 1e-5, 1e-5));
}

TEST_P(PerArch, KvCacheDecodeEqualsFullForward) {
  torch::NoGradGuard ng;
  auto m = MakeModel(GetParam());
  const auto& c = m->config();
  // Prompts of different lengths, left-padded into one prefill, then 4 decode steps.
  std::vector<std::vector<int64_t>> seqs = {{5, 6, 7}, {9, 10, 11, 12, 13}, {30}};
  const int64_t P = 5;
  auto [ids, mask] = LeftPad(seqs, P);
  KVCache cache(c, 3, 16, m->dtype());
  ForwardOptions o;
  o.attention_mask = mask;
  auto last = m->Logits(m->Hidden(ids, o, &cache)).select(1, P - 1);  // [3, V]
  for (int step = 0; step < 4; ++step) {
    for (int b = 0; b < 3; ++b) {
      EXPECT_TRUE(torch::allclose(last[b], Full(m, seqs[b]).select(0, -1), 1e-5, 1e-5))
          << "step " << step << " row " << b;
    }
    auto next = last.argmax(-1);  // [3]
    for (int b = 0; b < 3; ++b) seqs[b].push_back(next[b].item<int64_t>());
    last = m->Logits(m->Hidden(next.unsqueeze(1), {}, &cache)).select(1, 0);
  }
  EXPECT_EQ(cache.length(0), P + 4);
  EXPECT_EQ(cache.next_position(0), 3 + 4);
  EXPECT_EQ(cache.next_position(2), 1 + 4);
}

// Decode steps without autograd run DecodeAttention on the cache in place (and the CPU inference products);
// with autograd they take the generic masked path through LibTorch. Both must agree, in f32 and bf16, on
// left-padded prompts in slots that are not consecutive.
void ExpectDecodeEqualsGenericPath(const HfConfig& config, const std::vector<std::vector<int64_t>>& seqs) {
  int64_t T = 0;
  for (const auto& s : seqs) T = std::max<int64_t>(T, static_cast<int64_t>(s.size()));
  for (auto dt : {torch::kFloat32, torch::kBFloat16}) {
    Transformer m(config);
    m->InitWeights(1, 0.2);
    m->eval();
    m->to(dt);
    auto [ids, mask] = LeftPad(seqs, T);
    const int64_t B = static_cast<int64_t>(seqs.size());
    std::vector<int64_t> slot_ids;
    for (int64_t b = 0; b < B; ++b) slot_ids.push_back((b * 3 + 4) % (B + 2));  // not consecutive, not in order
    auto slots = torch::tensor(slot_ids, torch::kInt64);
    KVCache fast(config, B + 2, T + 8, dt), generic(config, B + 2, T + 8, dt);
    ForwardOptions o;
    o.attention_mask = mask;
    {
      torch::NoGradGuard ng;
      m->Hidden(ids, o, &fast, slots);
      m->Hidden(ids, o, &generic, slots);
    }
    auto next = 20 + torch::arange(B, torch::kInt64).unsqueeze(1);
    for (int step = 0; step < 3; ++step) {
      torch::Tensor a, b;
      {
        torch::NoGradGuard ng;
        a = m->Hidden(next, {}, &fast, slots).to(torch::kFloat32);
      }
      b = m->Hidden(next, {}, &generic, slots).detach().to(torch::kFloat32);
      const double tol = dt == torch::kFloat32 ? 1e-5 : 3e-2;
      EXPECT_TRUE(torch::allclose(a, b, tol, tol)) << "step " << step << " dtype " << dt << " head_dim "
                                                   << config.head_dim << ": max difference "
                                                   << (a - b).abs().max().item<float>();
      next = next + 1;
    }
  }
}

TEST_P(PerArch, DecodeKernelEqualsTheGenericPath) {
  ExpectDecodeEqualsGenericPath(Tiny(GetParam()), {{5, 6, 7}, {9, 10, 11, 12, 13}, {30}});
}

// Head sizes the AVX-512 attention handles (32, 64, 128), query heads per kv head that fill its groups of
// three unevenly, and prompts long enough for its blocks of eight cache rows and their tails.
TEST(Transformer, DecodeKernelEqualsTheGenericPathAcrossHeadShapes) {
  struct Shape {
    int64_t head_dim, heads, kv_heads;
  };
  for (const Shape& sh : {Shape{64, 6, 2}, Shape{32, 8, 2}, Shape{128, 4, 1}, Shape{64, 2, 2}}) {
    ModelInitConfig c;
    c.arch = "llama";
    c.hidden_size = 32;
    c.num_hidden_layers = 2;
    c.num_attention_heads = sh.heads;
    c.num_key_value_heads = sh.kv_heads;
    c.head_dim = sh.head_dim;
    c.intermediate_size = 48;
    c.vocab_size = 50;
    ExpectDecodeEqualsGenericPath(c.ToHfConfig().value(), {{5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}, {30, 31},
                                                           {40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 1, 2, 3, 4, 5, 6, 7}});
  }
}

TEST_P(PerArch, CacheSlotsDecodeIndependently) {
  torch::NoGradGuard ng;
  auto m = MakeModel(GetParam());
  KVCache cache(m->config(), 4, 12, m->dtype());
  // One prefill in slot 1, copied to slots 3 and 0 (a group sharing its prompt), then a decode step on a
  // subset of slots in another order, with a different token per slot.
  std::vector<int64_t> prompt = {7, 8, 9, 10};
  m->Hidden(Ids(prompt), {}, &cache, torch::tensor({1}, torch::kInt64));
  cache.CopySlot(1, 3);
  cache.CopySlot(1, 0);
  auto slots = torch::tensor({3, 0}, torch::kInt64);
  auto next = torch::tensor({{21}, {22}}, torch::kInt64);
  auto logits = m->Logits(m->Hidden(next, {}, &cache, slots)).select(1, 0);
  auto a = prompt, b = prompt;
  a.push_back(21);
  b.push_back(22);
  EXPECT_TRUE(torch::allclose(logits[0], Full(m, a).select(0, -1), 1e-5, 1e-5));
  EXPECT_TRUE(torch::allclose(logits[1], Full(m, b).select(0, -1), 1e-5, 1e-5));
  // A reset slot starts a fresh sequence.
  cache.Reset(3);
  auto fresh = m->Logits(m->Hidden(Ids({40, 41}), {}, &cache, torch::tensor({3}, torch::kInt64))).squeeze(0);
  EXPECT_TRUE(torch::allclose(fresh, Full(m, {40, 41}), 1e-5, 1e-5));
  EXPECT_THROW(m->Hidden(Ids(std::vector<int64_t>(12, 5)), {}, &cache, torch::tensor({3}, torch::kInt64)), c10::Error);
}

TEST_P(PerArch, PackedSegmentsEqualSeparateSequences) {
  torch::NoGradGuard ng;
  auto m = MakeModel(GetParam());
  ForwardOptions o;
  o.segment_ids = torch::tensor({{0, 0, 0, 1, 1}}, torch::kInt64);
  o.position_ids = torch::tensor({{0, 1, 2, 0, 1}}, torch::kInt64);
  auto logits = m->Logits(m->Hidden(Ids({5, 6, 7, 8, 9}), o)).squeeze(0);
  EXPECT_TRUE(torch::allclose(logits.narrow(0, 0, 3), Full(m, {5, 6, 7}), 1e-5, 1e-5));
  EXPECT_TRUE(torch::allclose(logits.narrow(0, 3, 2), Full(m, {8, 9}), 1e-5, 1e-5));
}

INSTANTIATE_TEST_SUITE_P(Arch, PerArch, ::testing::Values("llama", "qwen2", "qwen3"));

TEST(Transformer, TokenLogProbsAndEntropyMatchTheFullSoftmax) {
  torch::NoGradGuard ng;
  auto m = MakeModel("qwen3", 3, /*tie=*/true);
  auto ids = torch::tensor({{5, 6, 7, 8}, {9, 10, 11, 12}}, torch::kInt64);
  auto targets = torch::tensor({{6, 7, 8, 1}, {10, 11, 12, 49}}, torch::kInt64);
  auto hidden = m->Hidden(ids);
  for (double temp : {1.0, 0.7}) {
    auto stats = m->TokenLogProbs(hidden, targets, temp, /*want_entropy=*/true);
    auto logp = torch::log_softmax(m->Logits(hidden).to(torch::kFloat64) / temp, -1);
    auto want = logp.gather(2, targets.unsqueeze(2)).squeeze(2);
    auto want_ent = -(logp.exp() * logp).sum(-1);
    EXPECT_EQ(stats.logprobs.scalar_type(), torch::kFloat32);
    EXPECT_TRUE(torch::allclose(stats.logprobs.to(torch::kFloat64), want, 1e-5, 1e-5)) << temp;
    EXPECT_TRUE(torch::allclose(stats.entropy.to(torch::kFloat64), want_ent, 1e-5, 1e-5)) << temp;
  }
  EXPECT_THROW(m->TokenLogProbs(hidden, targets + 100), c10::Error);
}

TEST(Transformer, Bf16ModelGivesF32LogProbsCloseToF32) {
  torch::NoGradGuard ng;
  auto m = MakeModel("llama", 4);
  auto ids = torch::tensor({{5, 6, 7, 8, 9, 10}}, torch::kInt64);
  auto targets = torch::tensor({{6, 7, 8, 9, 10, 11}}, torch::kInt64);
  auto lp32 = m->TokenLogProbs(m->Hidden(ids), targets).logprobs;
  m->to(torch::kBFloat16);
  EXPECT_EQ(m->dtype(), torch::kBFloat16);
  auto lp16 = m->TokenLogProbs(m->Hidden(ids), targets).logprobs;
  EXPECT_EQ(lp16.scalar_type(), torch::kFloat32);
  EXPECT_LT((lp16 - lp32).abs().max().item<float>(), 0.1f);
}

TEST(Transformer, GradientsReachEveryParameter) {
  auto m = MakeModel("qwen2", 5);
  m->train();
  auto ids = torch::tensor({{5, 6, 7, 8}}, torch::kInt64);
  auto lp = m->TokenLogProbs(m->Hidden(ids), torch::tensor({{6, 7, 8, 9}}, torch::kInt64)).logprobs;
  (-lp.sum()).backward();
  for (const auto& p : m->named_parameters()) {
    ASSERT_TRUE(p.value().grad().defined()) << p.key();
    EXPECT_TRUE(p.value().grad().isfinite().all().item<bool>()) << p.key();
    EXPECT_GT(p.value().grad().abs().sum().item<float>(), 0.f) << p.key();
  }
}

TEST(Transformer, HeadsScoreTheRightTokens) {
  torch::NoGradGuard ng;
  auto cfg = Tiny("llama");
  cfg.head = Head::kSequenceClassification;
  Transformer rm(cfg);
  rm->InitWeights(6, 0.2);
  auto named = rm->named_parameters();
  EXPECT_TRUE(named.contains("score.weight"));
  EXPECT_FALSE(named.contains("score.bias"));
  EXPECT_FALSE(named.contains("lm_head.weight"));
  auto ids = torch::tensor({{5, 6, 7, 0, 0}}, torch::kInt64);
  ForwardOptions o;
  o.attention_mask = torch::tensor({{1, 1, 1, 0, 0}}, torch::kInt64);
  auto r = rm->SequenceScores(rm->Hidden(ids, o), o.attention_mask);
  auto alone = rm->Scores(rm->Hidden(Ids({5, 6, 7}))).select(1, 2).squeeze(-1);
  EXPECT_TRUE(torch::allclose(r, alone, 1e-5, 1e-5));
  EXPECT_THROW(rm->Logits(rm->Hidden(ids)), c10::Error);

  cfg.head = Head::kTokenClassification;
  Transformer critic(cfg);
  EXPECT_TRUE(critic->named_parameters().contains("score.bias"));
  auto v = critic->Scores(critic->Hidden(ids));
  EXPECT_EQ(v.sizes(), (std::vector<int64_t>{1, 5, 1}));
}

TEST(Transformer, RopeFrequenciesFollowTheScalingType) {
  auto c = Tiny("llama", false, 16);
  auto base = RopeInverseFrequencies(c);
  ASSERT_EQ(base.size(0), 8);
  EXPECT_NEAR(base[0].item<float>(), 1.0f, 1e-7);
  EXPECT_NEAR(base[1].item<float>(), std::pow(10000.0, -2.0 / 16), 1e-7);
  c.rope_scaling.type = "linear";
  c.rope_scaling.factor = 4;
  EXPECT_TRUE(torch::allclose(RopeInverseFrequencies(c), base / 4));
  c.rope_scaling.type = "llama3";
  c.rope_scaling.factor = 8;
  c.rope_scaling.original_max_position_embeddings = 64;
  auto l3 = RopeInverseFrequencies(c);
  EXPECT_FLOAT_EQ(l3[0].item<float>(), base[0].item<float>());    // high frequency: unchanged
  EXPECT_FLOAT_EQ(l3[7].item<float>(), base[7].item<float>() / 8);  // low frequency: divided by factor
}

}  // namespace
}  // namespace rlhf::model
