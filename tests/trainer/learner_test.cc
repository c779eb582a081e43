// The learner in one process: AdamW against torch.optim.AdamW, gradient accumulation, the non-finite skip,
// packing, global whitening, the first on-policy minibatch, and checkpoint commit / damage handling.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <limits>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <random>

#include "common/model/transformer.h"
#include "tests/model/test_models.h"
#include "tests/test_util.h"
#include "trainer/algo/masked.h"
#include "trainer/batching.h"
#include "trainer/learner.h"
#include "trainer/memory_estimate.h"
#include "trainer/objectives.h"
#include "trainer/optim.h"
#include "trainer/rl_update.h"
#include "trainer/train_checkpoint.h"

namespace rlhf::trainer {
namespace {

namespace fs = std::filesystem;

model::Transformer TinyModel(uint64_t seed, model::Head head = model::Head::kCausalLM) {
  auto cfg = model::testing::Tiny("llama");
  cfg.head = head;
  model::Transformer net(cfg);
  net->InitWeights(seed);
  return net;
}

std::vector<TokenSeq> Seqs(int n, int64_t vocab, uint64_t seed) {
  std::vector<TokenSeq> out;
  std::mt19937 rng(static_cast<uint32_t>(seed));
  for (int i = 0; i < n; ++i) {
    TokenSeq s;
    const int len = 4 + static_cast<int>(rng() % 7), prompt = 2 + static_cast<int>(rng() % 2);
    for (int t = 0; t < len; ++t) {
      s.ids.push_back(3 + static_cast<int32_t>(rng() % static_cast<uint32_t>(vocab - 3)));
      s.target.push_back(t >= prompt ? 1 : 0);
    }
    out.push_back(s);
  }
  return out;
}

std::vector<const TokenSeq*> Ptrs(const std::vector<TokenSeq>& v, size_t from = 0, size_t to = SIZE_MAX) {
  std::vector<const TokenSeq*> out;
  for (size_t i = from; i < std::min(to, v.size()); ++i) out.push_back(&v[i]);
  return out;
}

std::map<std::string, torch::Tensor> Snapshot(model::TransformerImpl& net) {
  std::map<std::string, torch::Tensor> out;
  for (const auto& p : net.named_parameters(true)) out[p.key()] = p.value().detach().clone();
  return out;
}

TEST(AdamW, MatchesTorchOptimAdamWAndTheCosineSchedule) {
  auto r = testing::RunCommand(std::string(RLHF_PYTHON3) + " " + RLHF_SOURCE_DIR + "/tests/python/adamw_reference.py");
  ASSERT_EQ(r.code, 0) << r.out;
  auto ref = nlohmann::json::parse(r.out);
  auto w = torch::linspace(-1.0, 1.0, 12).reshape({3, 4}).set_requires_grad(true);
  auto b = torch::linspace(0.5, -0.5, 4).set_requires_grad(true);
  OptimConfig c;
  c.lr = 0.01, c.beta1 = 0.9, c.beta2 = 0.95, c.eps = 1e-8, c.weight_decay = 0.1;
  AdamW opt({{"layer.weight", w}, {"layer.bias", b}}, c);
  for (int step = 1; step <= 3; ++step) {
    w.mutable_grad() = torch::sin(torch::arange(12, torch::kFloat32) * step).reshape({3, 4});
    b.mutable_grad() = torch::cos(torch::arange(4, torch::kFloat32) * step);
    opt.Step(c.lr);
  }
  auto wf = w.detach().flatten();
  for (int i = 0; i < 12; ++i) EXPECT_NEAR(wf[i].item<double>(), ref["w"][i].get<double>(), 1e-6) << i;
  for (int i = 0; i < 4; ++i) EXPECT_NEAR(b[i].item<double>(), ref["b"][i].get<double>(), 1e-6) << i;
  OptimConfig s;
  s.lr = 1.0, s.warmup_steps = 3;
  for (int i = 0; i < 10; ++i) EXPECT_NEAR(LearningRate(s, i, 10), ref["lrs"][i].get<double>(), 1e-12) << i;
  EXPECT_FALSE(AdamW::DecayApplies("model.norm.weight"));
  EXPECT_FALSE(AdamW::DecayApplies("model.layers.0.self_attn.q_proj.bias"));
  EXPECT_TRUE(AdamW::DecayApplies("model.layers.0.self_attn.q_proj.weight"));
}

TEST(Learner, AccumulatedMicroBatchesEqualOneBatch) {
  auto seqs = Seqs(6, 50, 1);
  auto run = [&](int micro) {
    auto net = TinyModel(7);
    Learner learner(comm::Group::Single());
    OptimConfig oc;
    oc.lr = 1e-2;
    // Adam's first step is lr * g / (|g| + eps): with a tiny eps, gradients that are 0 up to rounding flip
    // sign between summation orders and move by 2 lr. A larger eps keeps the comparison about the sums.
    oc.eps = 1e-3;
    learner.AddModel("policy", net, oc, 10);
    SftObjective obj(net);
    std::vector<MicroBatch> mbs;
    for (size_t i = 0; i < seqs.size(); i += static_cast<size_t>(micro)) mbs.push_back(PadRows(Ptrs(seqs, i, i + micro), 0));
    auto r = learner.Step(mbs, obj);
    EXPECT_TRUE(r.ok()) << r.status();
    return std::make_pair(Snapshot(*net), r->metrics["loss"]);
  };
  auto [a, loss_a] = run(6);
  auto [b, loss_b] = run(2);
  EXPECT_NEAR(loss_a, loss_b, 1e-5);
  for (const auto& [k, v] : a) EXPECT_TRUE(torch::allclose(v, b[k], 1e-5, 1e-6)) << k;
  // The step changed the weights.
  auto fresh = Snapshot(*TinyModel(7));
  EXPECT_FALSE(torch::equal(fresh["lm_head.weight"], a["lm_head.weight"]));
}

TEST(Learner, PackedRowsGiveThePaddedLoss) {
  auto seqs = Seqs(7, 50, 3);
  auto net = TinyModel(5);
  SftObjective obj(net);
  auto loss_of = [&](const std::vector<MicroBatch>& mbs) {
    torch::NoGradGuard ng;
    double total = 0;
    for (const auto& mb : mbs) total += obj.Normalizers(mb)[0];
    StepMetrics m;
    double loss = 0;
    for (const auto& mb : mbs) loss += obj.Loss(mb, {total}, m).item<double>();
    return std::make_pair(loss, total);
  };
  auto packed = PackRows(Ptrs(seqs), 24, 2, 0);
  EXPECT_LT(packed.size() * 2, seqs.size());  // several examples share rows
  auto [lp, np] = loss_of(packed);
  auto [lr, nr] = loss_of({PadRows(Ptrs(seqs), 0)});
  EXPECT_EQ(np, nr);
  EXPECT_NEAR(lp, lr, 1e-5);
}

// Sequence log-prob (sum over completion tokens) of one sequence by a direct forward of it alone.
double DirectSeqLogProb(model::TransformerImpl& net, const TokenSeq& s, int64_t* tokens) {
  torch::NoGradGuard ng;
  std::vector<int64_t> ids(s.ids.begin(), s.ids.end());
  auto logp = torch::log_softmax(net.Logits(net.Hidden(torch::tensor(ids).unsqueeze(0))).to(torch::kFloat32)[0], -1);
  double l = 0;
  *tokens = 0;
  for (size_t t = 1; t < s.ids.size(); ++t) {
    if (s.target[t]) l += logp[static_cast<int64_t>(t) - 1][s.ids[t]].item<double>(), ++*tokens;
  }
  return l;
}

TEST(PairObjective, EachLossEqualsItsDefinitionOnDirectSequenceLogProbs) {
  auto seqs = Seqs(8, 50, 9);  // pairs (i, i + 4)
  auto net = TinyModel(6);
  std::vector<double> lp(8), len(8);
  for (size_t i = 0; i < 8; ++i) {
    int64_t n = 0;
    lp[i] = DirectSeqLogProb(*net, seqs[i], &n);
    len[i] = static_cast<double>(n);
  }
  auto mb = PadRows(Ptrs(seqs), 0);  // rows 0-3 chosen, 4-7 rejected
  std::vector<double> lc(lp.begin(), lp.begin() + 4), lr(lp.begin() + 4, lp.end());
  std::vector<double> nc(len.begin(), len.begin() + 4), nr(len.begin() + 4, len.end());
  std::vector<double> ac(4), ar(4);
  for (int i = 0; i < 4; ++i) ac[i] = lc[i] / nc[i], ar[i] = lr[i] / nr[i];
  mb.fields["ref_chosen"] = torch::tensor({-20.f, -21.f, -19.f, -22.f});
  mb.fields["ref_rejected"] = torch::tensor({-20.5f, -20.f, -23.f, -18.f});
  std::vector<double> refc = {-20, -21, -19, -22}, refr = {-20.5, -20, -23, -18};
  double dpo = 0, orpo_nll = 0, orpo_or = 0, simpo = 0, cpo = 0, rrhf = 0;
  for (int i = 0; i < 4; ++i) {
    auto logsig = [](double x) { return -std::log1p(std::exp(-x)); };
    auto log1mexp = [](double x) { return std::log(-std::expm1(x)); };
    dpo += -logsig(0.1 * ((lc[i] - refc[i]) - (lr[i] - refr[i])));
    orpo_nll += -ac[i];
    orpo_or += logsig((ac[i] - ar[i]) - (log1mexp(ac[i]) - log1mexp(ar[i])));
    simpo += -logsig(2.0 * (ac[i] - ar[i]) - 0.5);
    cpo += -logsig(0.1 * (lc[i] - lr[i])) - ac[i];
    rrhf += std::max(0.0, ar[i] - ac[i]) - ac[i];
  }
  const std::map<PairLoss, double> want = {{PairLoss::kDpo, dpo / 4},
                                           {PairLoss::kOrpo, orpo_nll / 4 - 0.1 * orpo_or / 4},
                                           {PairLoss::kSimpo, simpo / 4},
                                           {PairLoss::kCpo, cpo / 4},
                                           {PairLoss::kRrhf, rrhf / 4}};
  for (const auto& [kind, value] : want) {
    PairLossConfig c;
    c.loss = kind;
    if (kind == PairLoss::kSimpo) c.beta = 2.0;
    PairObjective obj(net, c);
    StepMetrics m;
    torch::NoGradGuard ng;
    const double got = obj.Loss(mb, obj.Normalizers(mb), m).item<double>();
    EXPECT_NEAR(got, value, 1e-4 * std::max(1.0, std::fabs(value))) << static_cast<int>(kind);
  }
  // DPO with the NLL of chosen (RPO, dpo.alpha): the DPO loss plus alpha times the mean per-token NLL.
  PairLossConfig c;
  c.loss = PairLoss::kDpo;
  c.rpo_alpha = 0.5;
  PairObjective obj(net, c);
  StepMetrics m;
  torch::NoGradGuard ng;
  const double want_rpo = dpo / 4 + 0.5 * orpo_nll / 4;
  EXPECT_NEAR(obj.Loss(mb, obj.Normalizers(mb), m).item<double>(), want_rpo, 1e-4 * std::max(1.0, want_rpo));
}

TEST(MemoryEstimate, ParametersAreThoseOfTheModelBuiltFromTheConfig) {
  // Every architecture (Qwen2's q/k/v biases, Qwen3's q/k norms, tied or untied embeddings): the count from
  // config.json equals the parameters of the model built from it.
  for (const char* arch : {"llama", "qwen2", "qwen3"}) {
    for (bool tied : {false, true}) {
      auto cfg = model::testing::Tiny(arch);
      cfg.tie_word_embeddings = tied;
      model::Transformer net(cfg);
      int64_t n = 0;
      for (const auto& prm : net->parameters()) n += prm.numel();
      EXPECT_EQ(ParameterCount(cfg), n) << arch << " tied " << tied;
    }
  }
  // The Qwen3-0.6B shape: 596,049,920 parameters (440M outside the tied embedding).
  auto q = model::testing::Tiny("qwen3");
  q.vocab_size = 151936, q.hidden_size = 1024, q.num_hidden_layers = 28, q.num_attention_heads = 16;
  q.num_key_value_heads = 8, q.head_dim = 128, q.intermediate_size = 3072, q.tie_word_embeddings = true;
  EXPECT_EQ(ParameterCount(q), 596049920);
  MemoryPlan plan;
  plan.frozen_models = 1;
  plan.micro_batch_rows = 4;
  plan.tokens_per_row = 256;
  const auto e = EstimateMemory(q, plan);
  EXPECT_DOUBLE_EQ(e.weights, 4.0 * 596049920);
  EXPECT_DOUBLE_EQ(e.optimizer, 2 * e.weights);
  EXPECT_DOUBLE_EQ(e.frozen, e.weights);
  EXPECT_DOUBLE_EQ(e.logits, 4.0 * 4 * 256 * 3 * 151936);
  EXPECT_NE(e.Describe().find("for 596M parameters"), std::string::npos) << e.Describe();
}

TEST(Kto, MismatchedPairsTakeTheCompletionOfAnotherExample) {
  // Pairs give two rows per example (chosen, rejected): the partner is never the same example.
  const auto paired = MismatchPartners(6, 2);
  EXPECT_EQ(paired, (std::vector<size_t>{2, 3, 4, 5, 0, 1}));
  for (size_t k = 0; k < paired.size(); ++k) EXPECT_NE(paired[k] / 2, k / 2);
  EXPECT_EQ(MismatchPartners(3, 1), (std::vector<size_t>{1, 2, 0}));
  TokenSeq a{{5, 6, 7, 8}, {0, 0, 1, 1}}, b{{9, 10, 11}, {0, 1, 1}};
  auto m = PromptWithCompletion(a, b);
  EXPECT_EQ(m.ids, (std::vector<int32_t>{5, 6, 10, 11}));
  EXPECT_EQ(m.target, (std::vector<uint8_t>{0, 0, 1, 1}));
}

// An objective whose loss is NaN on demand.
class PoisonObjective : public Objective {
 public:
  PoisonObjective(model::Transformer net, bool poison) : inner_(net), poison_(poison) {}
  std::vector<double> Normalizers(const MicroBatch& mb) const override { return inner_.Normalizers(mb); }
  torch::Tensor Loss(const MicroBatch& mb, const std::vector<double>& t, StepMetrics& m) override {
    auto l = inner_.Loss(mb, t, m);
    return poison_ ? l * std::numeric_limits<float>::quiet_NaN() : l;
  }
  SftObjective inner_;
  bool poison_;
};

TEST(Learner, NonFiniteStepIsSkippedWithWeightsAndMomentsBitwiseUnchanged) {
  auto seqs = Seqs(4, 50, 2);
  auto net = TinyModel(3);
  Learner learner(comm::Group::Single());
  learner.AddModel("policy", net, OptimConfig{}, 10);
  PoisonObjective good(net, false), bad(net, true);
  std::vector<MicroBatch> mbs = {PadRows(Ptrs(seqs), 0)};
  ASSERT_TRUE(learner.Step(mbs, good).ok());
  auto weights = Snapshot(*net);
  std::map<std::string, torch::Tensor> moments;
  for (const auto& [k, v] : learner.models()[0].opt->StateTensors()) moments[k] = v.clone();
  auto r = learner.Step(mbs, bad);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->skipped);
  EXPECT_EQ(learner.skipped_steps(), 1);
  EXPECT_EQ(r->metrics["skipped_steps"], 1);
  for (const auto& [k, v] : Snapshot(*net)) EXPECT_TRUE(torch::equal(v, weights[k])) << k;
  for (const auto& [k, v] : learner.models()[0].opt->StateTensors()) EXPECT_TRUE(torch::equal(v, moments[k])) << k;
  EXPECT_EQ(learner.models()[0].opt->steps(), 1);
  // And training goes on.
  r = learner.Step(mbs, good);
  ASSERT_TRUE(r.ok());
  EXPECT_FALSE(r->skipped);
  EXPECT_EQ(learner.models()[0].opt->steps(), 2);
}

TEST(Learner, GlobalWhitenOnOneRankIsWhiten) {
  auto x = torch::randn({4, 6}, torch::kFloat64);
  auto m = (torch::rand({4, 6}) > 0.3).to(torch::kFloat64);
  auto group = comm::Group::Single();
  auto w = GlobalWhiten(*group, x, m);
  ASSERT_TRUE(w.ok());
  EXPECT_TRUE(torch::allclose(*w, algo::Whiten(x, m), 1e-9, 1e-12));
}

std::vector<Sample> ScoredSamples(int prompts, int group, int64_t vocab, uint64_t seed) {
  std::mt19937 rng(static_cast<uint32_t>(seed));
  std::vector<Sample> out;
  for (int p = 0; p < prompts; ++p) {
    std::vector<int32_t> prompt;
    for (int t = 0; t < 3 + p % 2; ++t) prompt.push_back(3 + static_cast<int32_t>(rng() % (vocab - 3)));
    for (int g = 0; g < group; ++g) {
      Sample s;
      s.set_prompt_id("p" + std::to_string(p));
      s.set_prompt_index(p);
      s.set_sample_index(g);
      for (int32_t id : prompt) s.add_prompt_ids(id);
      const int len = 2 + static_cast<int>(rng() % 5);
      for (int t = 0; t < len; ++t) {
        s.add_completion_ids(3 + static_cast<int32_t>(rng() % (vocab - 3)));
        s.add_logprobs(-2.5f);
      }
      s.set_finish_reason(g % 3 == 0 ? FINISH_REASON_LENGTH : FINISH_REASON_STOP);
      s.set_temperature(1.0f);
      s.set_reward(static_cast<float>(rng() % 5) / 4.f);
      (*s.mutable_reward_parts())["toy"] = s.reward();
      out.push_back(s);
    }
  }
  return out;
}

// One RL update of a fresh TinyModel(11) policy (no critic, reference or KL; groups of 4) on `samples`,
// with `adjust` applied to the config: the update's metrics and the updated policy.
std::pair<std::map<std::string, double>, model::Transformer> UpdateTinyPolicy(const std::vector<Sample>& samples,
                                                                            const std::function<void(RlConfig&)>& adjust) {
  auto policy = TinyModel(11);
  Learner learner(comm::Group::Single());
  learner.AddModel("policy", policy, OptimConfig{}, 10);
  RlConfig rc;
  rc.group_size = 4;
  rc.kl_placement = KlPlacement::kNone;
  adjust(rc);
  RlUpdate update(&learner, policy, model::Transformer(nullptr), model::Transformer(nullptr), rc, 0);
  auto m = update.Update(samples, 1);
  EXPECT_TRUE(m.ok()) << m.status();
  return {m.ok() ? *m : std::map<std::string, double>{}, policy};
}

TEST(RlUpdate, FirstMinibatchOfAFreshBatchHasRatioOneAndNoClipping) {
  for (bool with_critic : {true, false}) {
    auto policy = TinyModel(11);
    auto critic = with_critic ? TinyModel(12, model::Head::kTokenClassification) : model::Transformer(nullptr);
    auto reference = TinyModel(11);
    Learner learner(comm::Group::Single());
    OptimConfig oc;
    oc.lr = 1e-2;
    learner.AddModel("policy", policy, oc, 10);
    if (with_critic) learner.AddModel("critic", critic, oc, 10);
    RlConfig rc;
    rc.group_size = 4;
    rc.ppo_epochs = 2;
    rc.minibatch_size = 8;
    rc.micro_batch_size = 3;
    rc.kl_coef = 0.1;
    RlUpdate update(&learner, policy, critic, reference, rc, 0);
    auto m = update.Update(ScoredSamples(4, 4, 50, 1), 1);
    ASSERT_TRUE(m.ok()) << m.status();
    EXPECT_NEAR((*m)["first_minibatch/ratio_mean"], 1.0, 1e-5);
    EXPECT_EQ((*m)["first_minibatch/clip_fraction"], 0.0);
    EXPECT_EQ((*m)["optimizer_steps"], 4);  // 2 epochs x 2 minibatches
    EXPECT_EQ((*m)["samples"], 16);
    EXPECT_NEAR((*m)["truncated_fraction"], 0.5, 1e-9);  // samples 0 and 3 of each group
    EXPECT_NEAR((*m)["kl_ref"], 0.0, 1e-6);  // the reference is the starting policy
    EXPECT_TRUE(m->count("reward_mean/toy"));
    EXPECT_EQ(m->count("value_explained_variance"), with_critic ? 1u : 0u);
    EXPECT_EQ(update.advantage(), with_critic ? Advantage::kGae : Advantage::kGrpo);
    // Later minibatches are off-policy: the policy moved.
    EXPECT_GT((*m)["approx_kl"], 0.0);
  }
}

TEST(RlUpdate, RejectsUnscoredSamplesAndBrokenGroups) {
  auto policy = TinyModel(1);
  Learner learner(comm::Group::Single());
  learner.AddModel("policy", policy, OptimConfig{}, 10);
  RlConfig rc;
  rc.group_size = 2;
  rc.kl_placement = KlPlacement::kNone;
  RlUpdate update(&learner, policy, model::Transformer(nullptr), model::Transformer(nullptr), rc, 0);
  auto samples = ScoredSamples(2, 2, 50, 1);
  samples[1].clear_reward();
  auto r = update.Update(samples, 0);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("no reward"), std::string::npos);
  samples = ScoredSamples(2, 2, 50, 1);
  std::swap(samples[1], samples[2]);
  r = update.Update(samples, 0);
  EXPECT_NE(r.status().message().find("consecutive"), std::string::npos) << r.status();
  samples = ScoredSamples(2, 2, 50, 1);
  samples[0].set_completion_ids(0, 999);
  r = update.Update(samples, 0);
  EXPECT_NE(r.status().message().find("outside the vocabulary"), std::string::npos) << r.status();
  // What a fuzzed request holds: each refused by the check the learner service runs before its ranks start.
  auto refused = [&](const std::function<void(std::vector<Sample>&)>& spoil, const std::string& why) {
    auto v = ScoredSamples(2, 2, 50, 1);
    ASSERT_TRUE(update.Check(v).ok());
    spoil(v);
    auto st = update.Check(v);
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << why;
    EXPECT_NE(st.message().find(why), std::string::npos) << st;
  };
  refused([](auto& v) { v[0].set_reward(std::nanf("")); }, "finite");
  refused([](auto& v) { v[1].set_temperature(std::numeric_limits<float>::infinity()); }, "temperature");
  refused([](auto& v) { v[0].add_logprobs(0.5f); }, "log-probs");
  refused([](auto& v) { v[0].set_logprobs(0, std::nanf("")); }, "log-probs");
  refused([](auto& v) { v[2].add_prompt_ids(-3); }, "outside the vocabulary");
  refused([](auto& v) { v.pop_back(); }, "whole groups");
  refused([](auto& v) { for (int i = 0; i < 5000; ++i) v[3].add_prompt_ids(1); }, "context");
}

TEST(RlUpdate, GroupsWhoseBehaviourLogProbsAreFarFromTheLearnersAreNotTrained) {
  // A near-uniform tiny model gives every token about -ln(50) = -3.9. Groups 0 and 2 claim -2.5 (a gap of
  // ~1.4 nats, over the bound of 0.5) and come from a rollout worker: refused. Group 1 claims -3.9 (kept);
  // group 3 has no rollout worker (an offline sample file): not checked. The update must equal one on
  // groups 1 and 3 alone, with the check off.
  auto samples = ScoredSamples(4, 4, 50, 3);
  for (size_t i = 0; i < samples.size(); ++i) {
    const size_t group = i / 4;
    if (group < 3) samples[i].set_rollout_worker(static_cast<int32_t>(group));
    if (group == 1) {
      for (int t = 0; t < samples[i].logprobs_size(); ++t) samples[i].set_logprobs(t, -3.9f);
    }
  }
  auto run = [](const std::vector<Sample>& batch, double bound) {
    return UpdateTinyPolicy(batch, [bound](RlConfig& rc) { rc.max_behaviour_gap = bound; });
  };
  auto [checked, p1] = run(samples, 0.5);
  EXPECT_EQ(checked["refused_groups"], 2);
  EXPECT_GT(checked["refused_group/0"], 0.5);
  EXPECT_GT(checked["refused_group/2"], 0.5);
  EXPECT_EQ(checked.count("refused_group/1"), 0u);
  EXPECT_EQ(checked.count("refused_group/3"), 0u);
  std::vector<Sample> kept(samples.begin() + 4, samples.begin() + 8);
  kept.insert(kept.end(), samples.begin() + 12, samples.end());
  auto [alone, p2] = run(kept, 0);
  EXPECT_EQ(alone.count("refused_groups"), 0u);
  EXPECT_NEAR(checked["pg_loss"], alone["pg_loss"], 1e-6);
  auto a = p1->named_parameters(), b = p2->named_parameters();
  for (const auto& item : a) {
    EXPECT_TRUE(torch::allclose(item.value(), b[item.key()], 1e-5, 1e-6)) << item.key();
  }
}

TEST(RlUpdate, MissingEosPenaltyAndMaskingOfTruncatedResponses) {
  auto run = [](double penalty, bool mask) {
    return UpdateTinyPolicy(ScoredSamples(4, 4, 50, 1), [&](RlConfig& rc) {
             rc.missing_eos_penalty = penalty;
             rc.mask_truncated = mask;
           }).first;
  };
  auto base = run(0, false), pen = run(-1, false), masked = run(0, true);
  // Half of the samples are truncated: the penalty moves the mean score by -0.5.
  EXPECT_NEAR(pen["reward_mean"], base["reward_mean"] - 0.5, 1e-6);
  // Masked: the loss covers only the responses that stopped, so fewer tokens enter it.
  EXPECT_EQ(masked["truncated_fraction"], 0.5);
  EXPECT_NE(masked["pg_loss"], base["pg_loss"]);
  EXPECT_NEAR(masked["response_length"], base["response_length"], 1e-9);  // statistics still see every sample
}

TEST(RlUpdate, ProcessAdvantageSumsTheNormalisedStepsEndingAtOrAfterEachToken) {
  // On a fresh batch the ratio is 1, so the token-mean policy loss is -mean(A) over response tokens: with
  // A computed here by hand from the step rewards at their completion-token ends (a sample without steps
  // is one step worth 0 at its last token), normalised by the mean and unbiased std of its group's steps.
  auto samples = ScoredSamples(2, 3, 50, 4);
  std::mt19937 rng(9);
  for (size_t i = 0; i < samples.size(); ++i) {
    auto& s = samples[i];
    if (i == 4) continue;  // no scored step
    const int len = s.completion_ids_size();
    for (int e = 0; e < len; e += 2) {
      s.add_step_rewards(static_cast<float>(rng() % 2));
      s.add_step_ends(std::min(e + 1, len - 1));
    }
  }
  double sum = 0, tokens = 0;
  for (size_t g0 = 0; g0 < samples.size(); g0 += 3) {
    std::vector<double> all;
    for (size_t i = g0; i < g0 + 3; ++i) {
      if (samples[i].step_rewards_size() == 0) all.push_back(0.0);
      for (float r : samples[i].step_rewards()) all.push_back(r);
    }
    double mean = 0, var = 0;
    for (double r : all) mean += r / static_cast<double>(all.size());
    for (double r : all) var += (r - mean) * (r - mean) / static_cast<double>(all.size() - 1);
    const double sd = std::sqrt(var) + 1e-6;
    for (size_t i = g0; i < g0 + 3; ++i) {
      const auto& s = samples[i];
      const int len = s.completion_ids_size();
      std::vector<std::pair<int, double>> steps;
      if (s.step_rewards_size() == 0) steps.push_back({len - 1, 0.0});
      for (int j = 0; j < s.step_rewards_size(); ++j) steps.push_back({s.step_ends(j), s.step_rewards(j)});
      for (int t = 0; t < len; ++t) {
        double a = 0;
        for (const auto& [end, r] : steps) a += end >= t ? (r - mean) / sd : 0.0;
        sum += a;
        tokens += 1;
      }
    }
  }
  auto policy = TinyModel(11);
  Learner learner(comm::Group::Single());
  learner.AddModel("policy", policy, OptimConfig{}, 10);
  RlConfig rc;
  rc.group_size = 3;
  rc.advantage = Advantage::kProcess;
  rc.kl_placement = KlPlacement::kNone;
  RlUpdate update(&learner, policy, model::Transformer(nullptr), model::Transformer(nullptr), rc, 0);
  auto m = update.Update(samples, 1);
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_NEAR((*m)["pg_loss"], -sum / tokens, 1e-5);
  // Step rewards without their ends cannot be placed.
  samples[0].clear_step_ends();
  EXPECT_EQ(update.Update(samples, 1).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(KlController, MovesTowardTheTargetAsZieglerEtAl) {
  KlController fixed(0.1, 0, 100);
  fixed.Update(5.0, 64);
  EXPECT_EQ(fixed.value(), 0.1);
  KlController adaptive(0.1, 6.0, 10000);
  adaptive.Update(12.0, 256);  // error clipped to +0.2
  EXPECT_NEAR(adaptive.value(), 0.1 * (1 + 0.2 * 256 / 10000.0), 1e-12);
  adaptive.Update(3.0, 256);   // kl / target - 1 = -0.5 -> -0.2
  EXPECT_NEAR(adaptive.value(), 0.1 * (1 + 0.2 * 256 / 10000.0) * (1 - 0.2 * 256 / 10000.0), 1e-12);
}

TEST(TrainCheckpoint, CommitsVerifiesAndFallsBackFromADamagedOne) {
  const std::string dir = (fs::temp_directory_path() / ("ckpt-test-" + std::to_string(getpid()))).string();
  fs::remove_all(dir);
  auto net = TinyModel(2);
  Learner learner(comm::Group::Single());
  learner.AddModel("policy", net, OptimConfig{}, 10);
  auto seqs = Seqs(4, 50, 2);
  SftObjective obj(net);
  ASSERT_TRUE(learner.Step({PadRows(Ptrs(seqs), 0)}, obj).ok());
  TrainState st;
  st.stage = "sft";
  st.step = 1;
  st.extra["cursor"] = 42;
  auto first = SaveTrainCheckpoint(dir, learner, st, "", 0);
  ASSERT_TRUE(first.ok()) << first.status();
  auto weights1 = Snapshot(*net);
  ASSERT_TRUE(learner.Step({PadRows(Ptrs(seqs), 0)}, obj).ok());
  st.step = 2;
  auto second = SaveTrainCheckpoint(dir, learner, st, "", 0);
  ASSERT_TRUE(second.ok());
  EXPECT_EQ(*FindLatestCheckpoint(dir), *second);
  EXPECT_EQ(testing::ReadFile(dir + "/checkpoints/latest"), "step-00-00000002\n");
  // Damage the newest: one flipped byte of the optimizer state.
  {
    std::fstream f(*second + "/optimizer-policy.safetensors", std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(200);
    char c = 0;
    f.read(&c, 1);
    f.seekp(200);
    c ^= 0x55;
    f.write(&c, 1);
  }
  auto v = VerifyCheckpoint(*second);
  EXPECT_EQ(v.code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(v.message().find("checksum"), std::string::npos) << v;
  EXPECT_EQ(*FindLatestCheckpoint(dir), *first);
  // A partial one (no manifest) is refused too.
  fs::remove(*first + "/MANIFEST.json");
  EXPECT_EQ(FindLatestCheckpoint(dir).status().code(), absl::StatusCode::kNotFound);
  fs::remove_all(dir);
  // Restoring gives the saved weights, moments and counters.
  ASSERT_TRUE(SaveTrainCheckpoint(dir, learner, st, "", 0).ok());
  auto again = TinyModel(9);
  Learner l2(comm::Group::Single());
  l2.AddModel("policy", again, OptimConfig{}, 10);
  auto state = ReadTrainState(*FindLatestCheckpoint(dir));
  ASSERT_TRUE(state.ok());
  EXPECT_EQ(state->extra["cursor"], 42);
  ASSERT_TRUE(LoadTrainCheckpoint(*FindLatestCheckpoint(dir), l2, *state).ok());
  for (const auto& [k, w] : Snapshot(*again)) EXPECT_TRUE(torch::equal(w, Snapshot(*net)[k])) << k;
  auto m1 = learner.models()[0].opt->StateTensors(), m2 = l2.models()[0].opt->StateTensors();
  for (const auto& [k, t] : m1) EXPECT_TRUE(torch::equal(t, m2[k])) << k;
  EXPECT_EQ(l2.steps(), 2);
  EXPECT_EQ(l2.models()[0].opt->steps(), 2);
  (void)weights1;
  fs::remove_all(dir);
}

// The damage a checkpoint on disk may suffer beyond flipped bits: an edited manifest (files emptied, the model's
// entry removed, a malformed entry), a state.json out of range (with a manifest forged to match). Each is
// refused with its reason, never with an exception, and the resume falls back to the previous checkpoint.
TEST(TrainCheckpoint, AnEditedManifestOrAStateOutOfRangeIsRefusedAndThePreviousOneUsed) {
  const std::string dir = (fs::temp_directory_path() / ("ckpt-damage-" + std::to_string(getpid()))).string();
  fs::remove_all(dir);
  auto net = TinyModel(2);
  Learner learner(comm::Group::Single());
  learner.AddModel("policy", net, OptimConfig{}, 10);
  TrainState st;
  st.stage = "sft";
  st.step = 1;
  auto first = SaveTrainCheckpoint(dir, learner, st, "", 0);
  ASSERT_TRUE(first.ok()) << first.status();
  st.step = 2;
  auto second = SaveTrainCheckpoint(dir, learner, st, "", 0);
  ASSERT_TRUE(second.ok()) << second.status();
  const std::string pristine = dir + "/pristine";
  fs::copy(*second, pristine, fs::copy_options::recursive);
  using json = nlohmann::json;
  auto read = [](const std::string& path) { return json::parse(testing::ReadFile(path)); };
  auto write = [](const std::string& path, const json& j) { std::ofstream(path) << j.dump(2); };
  // forge: the manifest rewritten by `edit`, its own checksum made to match when `reseal`.
  auto damage = [&](const std::function<void(json&)>& edit, bool reseal) {
    fs::remove_all(*second);
    fs::copy(pristine, *second, fs::copy_options::recursive);
    json m = read(*second + "/MANIFEST.json");
    edit(m);
    if (reseal) m["manifest_fnv1a64"] = ManifestChecksum(m);
    write(*second + "/MANIFEST.json", m);
  };
  struct Case {
    std::string name;
    std::function<void(json&)> edit;
    bool reseal;
    std::string reason;
  };
  const std::vector<Case> cases = {
      {"files emptied", [](json& m) { m["files"] = json::object(); }, false, "fails its own checksum"},
      {"files emptied, resealed", [](json& m) { m["files"] = json::object(); }, true, "does not list state.json"},
      {"model entry removed", [](json& m) { m["files"].erase("policy/model.safetensors"); }, true,
       "does not list policy/model.safetensors"},
      {"models emptied", [](json& m) { m["models"] = json::array(); }, true, "no models listed"},
      {"bytes as a string", [](json& m) { m["files"]["state.json"]["bytes"] = "10"; }, true, "malformed entry"},
      {"path outside", [](json& m) { m["files"]["../x"] = m["files"]["state.json"]; }, true, "malformed entry"},
      {"version 1", [](json& m) { m["version"] = 1; }, true, "format version 1"},
      {"state step -5", [&](json& m) {
         json s = read(*second + "/state.json");
         s["step"] = -5;
         write(*second + "/state.json", s);
         m["files"]["state.json"] = {{"bytes", static_cast<int64_t>(fs::file_size(*second + "/state.json"))},
                                     {"fnv1a64", *FileChecksum(*second + "/state.json")}};
       }, true, "'step' = -5 is out of range"},
      {"skipped beyond steps", [&](json& m) {
         json s = read(*second + "/state.json");
         s["skipped_steps"] = 7;
         write(*second + "/state.json", s);
         m["files"]["state.json"] = {{"bytes", static_cast<int64_t>(fs::file_size(*second + "/state.json"))},
                                     {"fnv1a64", *FileChecksum(*second + "/state.json")}};
       }, true, "'skipped_steps' = 7 is out of range"},
  };
  for (const auto& c : cases) {
    damage(c.edit, c.reseal);
    auto v = VerifyCheckpoint(*second);
    EXPECT_EQ(v.code(), absl::StatusCode::kDataLoss) << c.name << ": " << v;
    EXPECT_NE(v.message().find(c.reason), std::string::npos) << c.name << ": " << v;
    auto found = FindLatestCheckpoint(dir);
    ASSERT_TRUE(found.ok()) << c.name << ": " << found.status();
    EXPECT_EQ(*found, *first) << c.name;
  }
  // The pristine copy verifies: the cases above are refused for their damage alone.
  damage([](json&) {}, false);
  EXPECT_TRUE(VerifyCheckpoint(*second).ok());
  EXPECT_EQ(*FindLatestCheckpoint(dir), *second);
  fs::remove_all(dir);
}

}  // namespace
}  // namespace rlhf::trainer
