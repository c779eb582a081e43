#include "rollout/generator.h"

#include <gtest/gtest.h>

#include <cmath>
#include <algorithm>
#include <map>
#include <set>

#include "common/text/tokenizer.h"
#include "rollout/sampler.h"
#include "tests/model/test_models.h"

namespace rlhf::rollout {
namespace {

torch::Tensor Probs4() {  // probabilities 0.5, 0.3, 0.15, 0.05
  return torch::log(torch::tensor({{0.5f, 0.3f, 0.15f, 0.05f}}));
}

std::vector<int64_t> Kept(const torch::Tensor& row) {
  std::vector<int64_t> k;
  for (int64_t i = 0; i < row.size(-1); ++i) {
    if (std::isfinite(row[0][i].item<float>())) k.push_back(i);
  }
  return k;
}

TEST(Sampler, StagesKeepExactlyTheRightTokens) {
  EXPECT_EQ(Kept(TopK(Probs4(), 2)), (std::vector<int64_t>{0, 1}));
  EXPECT_EQ(Kept(TopK(Probs4(), 0)), (std::vector<int64_t>{0, 1, 2, 3}));
  EXPECT_EQ(Kept(TopP(Probs4(), 0.5)), (std::vector<int64_t>{0}));        // 0.5 already reaches 0.5
  EXPECT_EQ(Kept(TopP(Probs4(), 0.0)), (std::vector<int64_t>{0}));        // p = 0: the most probable only
  EXPECT_EQ(Kept(TopP(Probs4(), 0.79)), (std::vector<int64_t>{0, 1}));
  EXPECT_EQ(Kept(TopP(Probs4(), 0.81)), (std::vector<int64_t>{0, 1, 2}));
  EXPECT_EQ(Kept(TopP(Probs4(), 1.0)), (std::vector<int64_t>{0, 1, 2, 3}));
  EXPECT_EQ(Kept(MinP(Probs4(), 0.4)), (std::vector<int64_t>{0, 1}));     // threshold 0.2
  EXPECT_EQ(Kept(MinP(Probs4(), 0.25)), (std::vector<int64_t>{0, 1, 2}));  // threshold 0.125
  // The order in the vocabulary does not matter.
  auto shuffled = torch::log(torch::tensor({{0.15f, 0.05f, 0.5f, 0.3f}}));
  EXPECT_EQ(Kept(TopP(shuffled, 0.79)), (std::vector<int64_t>{2, 3}));
}

// The kept set of TopP by its definition, in double precision: sort descending, keep while the mass before a
// token is below p, then every token at least as probable as the last one kept.
std::vector<int64_t> KeptBySort(const torch::Tensor& logits_row, double p) {
  auto probs = torch::softmax(logits_row.to(torch::kFloat64), -1);
  auto sorted = std::get<0>(probs.sort(-1, /*descending=*/true));
  double before = 0, smallest = 0;
  for (int64_t i = 0; i < sorted.size(0); ++i) {
    if (before >= p) break;
    smallest = sorted[i].item<double>();
    before += smallest;
  }
  std::vector<int64_t> k;
  for (int64_t i = 0; i < probs.size(0); ++i) {
    if (probs[i].item<double>() >= smallest) k.push_back(i);
  }
  return k;
}

bool Includes(const std::vector<int64_t>& big, const std::vector<int64_t>& small) {
  return std::includes(big.begin(), big.end(), small.begin(), small.end());
}

TEST(Sampler, TopPMatchesTheSortOnFlatPeakedAndTiedRows) {
  torch::manual_seed(3);
  const int64_t V = 3000;
  std::vector<torch::Tensor> rows = {
      torch::randn({V}) * 0.01,                           // flat: nearly every token is needed
      torch::randn({V}) * 4,                              // peaked
      torch::randint(0, 3, {V}).to(torch::kFloat32),      // three levels, many ties
      torch::full({V}, 1.f),                              // all equal
      torch::cat({torch::full({1}, 30.f), torch::zeros({V - 1})}),  // one token holds nearly all the mass
  };
  for (double p : {0.05, 0.5, 0.9, 0.999}) {
    for (size_t r = 0; r < rows.size(); ++r) {
      // float32 rounding may move a token whose preceding mass is within 1e-6 of p: such a token may go either
      // way, no other may.
      const auto surely = KeptBySort(rows[r], p - 1e-6), maybe = KeptBySort(rows[r], p + 1e-6);
      // Rows of one batch are independent: the same row inside a batch of others gives the same set.
      auto batch = torch::stack({rows[(r + 1) % rows.size()], rows[r]});
      const auto got = Kept(TopP(batch, p)[1].unsqueeze(0));
      EXPECT_TRUE(Includes(got, surely) && Includes(maybe, got))
          << "row " << r << ", p " << p << ": kept " << got.size() << ", between " << surely.size() << " and "
          << maybe.size();
      if (r != 1 || p < 0.99) EXPECT_EQ(got, surely) << "row " << r << ", p " << p;  // no token near the edge
    }
  }
}

TEST(Sampler, FrequenciesMatchTheTemperedSoftmax) {
  auto logits = torch::tensor({{2.0f, 1.0f, 0.5f, 0.0f, -1.0f, -3.0f}});
  SamplingParams p;
  p.temperature = 0.7;
  const int n = 30000;
  std::vector<uint64_t> seeds(n), steps(n, 3);
  for (int i = 0; i < n; ++i) seeds[i] = StreamSeed(11, "p" + std::to_string(i), i);
  auto draw = Sample(logits.expand({n, 6}), p, seeds, steps);
  auto counts = torch::bincount(draw.tokens, {}, 6).to(torch::kFloat64);
  auto expected = torch::softmax(logits.to(torch::kFloat64) / 0.7, -1).squeeze(0) * n;
  double chi2 = ((counts - expected).pow(2) / expected).sum().item<double>();
  EXPECT_LT(chi2, 20.5) << "chi-square with 5 degrees of freedom, p = 0.001; counts " << counts;
  // Log-probs are those of the full tempered softmax, whatever truncation says.
  auto want = torch::log_softmax(logits / 0.7, -1).squeeze(0).index_select(0, draw.tokens);
  EXPECT_TRUE(torch::allclose(draw.logprobs, want, 1e-5, 1e-6));
  // Truncated sampling draws only kept tokens, with the renormalised frequencies.
  p.top_k = 2;
  auto top2 = Sample(logits.expand({n, 6}), p, seeds, steps);
  EXPECT_TRUE(top2.tokens.le(1).all().item<bool>());
  double frac0 = top2.tokens.eq(0).sum().item<double>() / n;
  double want0 = 1 / (1 + std::exp(-1 / 0.7));
  EXPECT_NEAR(frac0, want0, 0.015);
}

TEST(Sampler, GreedyAndStreamsAreDeterministic) {
  auto logits = torch::randn({5, 9});
  SamplingParams greedy;
  greedy.temperature = 0;
  std::vector<uint64_t> seeds = {1, 2, 3, 4, 5}, steps = {0, 0, 0, 0, 0};
  auto g = Sample(logits, greedy, seeds, steps);
  EXPECT_TRUE(torch::equal(g.tokens, logits.argmax(-1)));
  SamplingParams p;
  auto a = Sample(logits, p, seeds, steps), b = Sample(logits, p, seeds, steps);
  EXPECT_TRUE(torch::equal(a.tokens, b.tokens));
  EXPECT_NE(StreamSeed(0, "x", 0), StreamSeed(0, "x", 1));
  EXPECT_NE(StreamSeed(0, "x", 0), StreamSeed(1, "x", 0));
  EXPECT_NE(StreamUniform(5, 0), StreamUniform(5, 1));
}

model::Transformer TinyModel(int64_t vocab = 61, uint64_t seed = 3) {
  model::Transformer t(model::testing::Tiny("qwen3", /*tie=*/false, /*head_dim=*/0, vocab));
  t->InitWeights(seed, 0.3);
  t->eval();
  return t;
}

// Greedy continuation by full forward passes, one token at a time.
std::vector<int32_t> GreedyReference(model::TransformerImpl& m, std::vector<int32_t> ids, int64_t steps,
                                     const std::vector<int32_t>& eos) {
  torch::NoGradGuard ng;
  std::vector<int32_t> out;
  for (int64_t s = 0; s < steps; ++s) {
    std::vector<int64_t> v(ids.begin(), ids.end());
    auto logits = m.Logits(m.Hidden(torch::tensor(v, torch::kInt64).unsqueeze(0))).squeeze(0);
    int32_t next = static_cast<int32_t>(logits[-1].argmax().item<int64_t>());
    out.push_back(next);
    ids.push_back(next);
    if (std::find(eos.begin(), eos.end(), next) != eos.end()) break;
  }
  return out;
}

std::vector<PromptInput> Prompts() {
  return {{"a", 0, {3, 4, 5}}, {"b", 1, {9, 8, 7, 6, 5, 4, 3}}, {"c", 2, {11}}, {"d", 3, {20, 21, 22, 23}},
          {"e", 4, {30, 31}}};
}

TEST(Generator, GreedyEqualsStepByStepArgmaxWithAndWithoutContinuousBatching) {
  auto m = TinyModel();
  for (bool continuous : {true, false}) {
    // 3 slots for 5 prompts: slots are refilled (continuous) or reused batch by batch (static).
    Generator gen(m.get(), nullptr, {}, {3, 64, continuous});
    SamplingParams p;
    p.temperature = 0;
    p.max_new_tokens = 6;
    auto out = gen.Generate(Prompts(), 1, p);
    ASSERT_TRUE(out.ok()) << out.status();
    ASSERT_EQ(out->size(), 5u);
    for (const auto& g : *out) {
      auto want = GreedyReference(*m, Prompts()[g.prompt_index].ids, 6, {});
      EXPECT_EQ(g.completion_ids, want) << "prompt " << g.prompt_index << " continuous " << continuous;
      EXPECT_FALSE(g.stopped);
    }
  }
}

TEST(Generator, StopsOnEosWithTheFinishReason) {
  auto m = TinyModel();
  auto free_run = GreedyReference(*m, {3, 4, 5}, 6, {});
  Generator gen(m.get(), nullptr, {free_run[2]}, {4, 64, true});  // the third greedy token is an "eos"
  SamplingParams p;
  p.temperature = 0;
  p.max_new_tokens = 6;
  auto out = gen.Generate({{"a", 0, {3, 4, 5}}}, 1, p);
  ASSERT_TRUE(out.ok());
  EXPECT_TRUE((*out)[0].stopped);
  auto cut = std::find(free_run.begin(), free_run.end(), free_run[2]) - free_run.begin();
  EXPECT_EQ((*out)[0].completion_ids, std::vector<int32_t>(free_run.begin(), free_run.begin() + cut + 1));
}

TEST(Generator, GroupSamplesCarryTheirOwnLogProbsAndAreReproducible) {
  auto m = TinyModel();
  SamplingParams p;
  p.temperature = 0.8;
  p.top_p = 0.95;
  p.max_new_tokens = 8;
  p.seed = 42;
  Generator gen(m.get(), nullptr, {}, {6, 64, true});
  auto group = gen.Generate({{"q", 7, {5, 6, 7, 8}}}, 4, p);
  ASSERT_TRUE(group.ok());
  ASSERT_EQ(group->size(), 4u);
  std::set<std::vector<int32_t>> distinct;
  torch::NoGradGuard ng;
  for (const auto& g : *group) {
    distinct.insert(g.completion_ids);
    // Recompute the behaviour log-probs with one full forward at the sampling temperature.
    std::vector<int64_t> all = {5, 6, 7, 8};
    all.insert(all.end(), g.completion_ids.begin(), g.completion_ids.end());
    auto ids = torch::tensor(all, torch::kInt64).unsqueeze(0);
    auto hidden = m->Hidden(ids);
    const int64_t P = 4, T = static_cast<int64_t>(g.completion_ids.size());
    auto lp = m->TokenLogProbs(hidden.narrow(1, P - 1, T), ids.narrow(1, P, T), 0.8).logprobs.squeeze(0);
    EXPECT_TRUE(torch::allclose(lp, torch::tensor(g.logprobs), 1e-4, 1e-5)) << "sample " << g.sample_index;
  }
  EXPECT_GT(distinct.size(), 1u) << "the 4 samples of a group should not all be equal";
  // The same prompt in another batch, with other prompts around it and fewer slots: same samples.
  Generator other(m.get(), nullptr, {}, {3, 64, true});
  auto mixed = other.Generate({{"z", 0, {1, 2}}, {"q", 7, {5, 6, 7, 8}}, {"y", 9, {40, 41, 42}}}, 4, p);
  ASSERT_TRUE(mixed.ok());
  for (const auto& g : *mixed) {
    if (g.prompt_index != 7) continue;
    EXPECT_EQ(g.completion_ids, (*group)[g.sample_index].completion_ids) << "sample " << g.sample_index;
  }
}

TEST(Generator, WeightsSwappedBetweenDecodeStepsTagEveryTokenWithItsVersion) {
  // Interruptible generation: before the 4th decode step the weights of another model are copied in (as the
  // rollout service does with rollout.swap_between_tokens). The first tokens equal those of a run without
  // the swap (same seeds), each token records the version that drew it, and the log-probs of the tokens
  // drawn after the swap are the new model's (given the cache kept from before).
  auto m = TinyModel();
  auto other = TinyModel(61, 99);
  SamplingParams p;
  p.temperature = 1.0;
  p.max_new_tokens = 8;
  p.seed = 5;
  Generator plain(m.get(), nullptr, {}, {4, 64, true});
  auto before = plain.Generate({{"q", 0, {5, 6, 7, 8}}}, 2, p);
  ASSERT_TRUE(before.ok());
  EXPECT_TRUE((*before)[0].token_versions.empty()) << "no version source: nothing recorded";

  auto swapped = TinyModel();
  Generator gen(swapped.get(), nullptr, {}, {4, 64, true});
  int calls = 0;
  gen.SetWeightsVersion([&]() -> int64_t {
    if (++calls == 4) {
      torch::NoGradGuard ng;
      auto dst = swapped->named_parameters(true);
      for (const auto& src : other->named_parameters(true)) dst[src.key()].copy_(src.value());
    }
    return calls >= 4 ? 1 : 0;
  });
  auto after = gen.Generate({{"q", 0, {5, 6, 7, 8}}}, 2, p);
  ASSERT_TRUE(after.ok());
  for (size_t i = 0; i < 2; ++i) {
    const auto& a = (*after)[i];
    const auto& b = (*before)[i];
    ASSERT_EQ(a.token_versions.size(), a.completion_ids.size());
    // Tokens 0 and 1 come from the prefill and the first decode step (after call 1), token k from decode
    // step k (after call k): versions 0 0 0 0 1 1 ...
    for (size_t t = 0; t < a.token_versions.size(); ++t) EXPECT_EQ(a.token_versions[t], t < 4 ? 0 : 1) << t;
    for (size_t t = 0; t < 4; ++t) {
      EXPECT_EQ(a.completion_ids[t], b.completion_ids[t]) << "before the swap, token " << t;
      EXPECT_FLOAT_EQ(a.logprobs[t], b.logprobs[t]);
    }
    EXPECT_NE(a.logprobs, b.logprobs) << "after the swap the log-probs are another model's";
  }
}

TEST(Generator, StopStringsCutTheText) {
  std::vector<std::string> corpus;
  for (int i = 0; i < 50; ++i) corpus.push_back("The answer is " + std::to_string(i) + ". Done.");
  auto tok = text::Tokenizer::FromJson(text::Tokenizer::TrainByteLevelBpe(corpus, 40, {"<|endoftext|>"}), "t").value();
  auto prompt = tok.Encode("The answer is");
  std::vector<int32_t> ids(prompt.begin(), prompt.end());
  SamplingParams p;
  p.temperature = 0;
  p.max_new_tokens = 12;
  // A random model may emit bytes that are not whole UTF-8 characters; take the first model seed whose
  // greedy completion starts with plain ASCII, so that every prefix decodes to a prefix of the text.
  for (uint64_t seed = 1; seed < 200; ++seed) {
    auto m = TinyModel(tok.vocab_size(), seed);
    Generator gen(m.get(), &tok, {}, {2, 64, true});
    auto free_run = gen.Generate({{"s", 0, ids}}, 1, p);
    ASSERT_TRUE(free_run.ok());
    const std::string text = (*free_run)[0].completion;
    if (text.size() < 4 || !std::all_of(text.begin(), text.begin() + 4, [](char c) { return c > 0x20 && c < 0x7f; })) {
      continue;
    }
    p.stop = {text.substr(2, 1)};
    auto stopped = gen.Generate({{"s", 0, ids}}, 1, p);
    ASSERT_TRUE(stopped.ok());
    EXPECT_TRUE((*stopped)[0].stopped);
    EXPECT_EQ((*stopped)[0].completion, text.substr(0, text.find(p.stop[0])));
    EXPECT_LT((*stopped)[0].completion_ids.size(), (*free_run)[0].completion_ids.size());
    return;
  }
  FAIL() << "no model seed gave an ASCII completion";
}

TEST(Generator, BadRequestsAreInvalidArguments) {
  auto m = TinyModel();
  Generator gen(m.get(), nullptr, {}, {2, 8, true});
  SamplingParams p;
  EXPECT_EQ(gen.Generate({{"x", 0, {}}}, 1, p).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(gen.Generate({{"x", 0, {61}}}, 1, p).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(gen.Generate({{"x", 0, {1, 2, 3, 4, 5, 6, 7, 8}}}, 1, p).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(gen.Generate({{"x", 0, {1}}}, 0, p).status().code(), absl::StatusCode::kInvalidArgument);
  // The cache capacity ends a sequence with finish "length".
  p.max_new_tokens = 100;
  auto out = gen.Generate({{"x", 0, {1, 2, 3}}}, 1, p);
  ASSERT_TRUE(out.ok());
  EXPECT_FALSE((*out)[0].stopped);
  EXPECT_EQ((*out)[0].completion_ids.size(), 6u);  // 3 prompt + 5 cached completion tokens + the last draw
}

}  // namespace
}  // namespace rlhf::rollout
