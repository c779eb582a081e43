// trainer/algo against golden values from an independent float64 reference (tests/python/algo_golden.py
// on python3-torch), every option on its own; and gradients against finite differences.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <fstream>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "trainer/algo/advantages.h"
#include "trainer/algo/kl.h"
#include "trainer/algo/masked.h"
#include "trainer/algo/ppo.h"
#include "trainer/algo/preference.h"

namespace rlhf::algo {
namespace {

using nlohmann::json;
using Outputs = std::map<std::string, torch::Tensor>;

torch::Tensor FromJson(const json& j) {
  if (j.is_number()) return torch::tensor(j.get<double>(), torch::kFloat64);
  if (j.is_boolean()) return torch::tensor(j.get<bool>() ? 1.0 : 0.0, torch::kFloat64);
  std::vector<torch::Tensor> rows;
  for (const auto& e : j) rows.push_back(FromJson(e));
  if (rows.empty()) return torch::zeros({0}, torch::kFloat64);
  return torch::stack(rows);
}

json LoadGolden() {
  std::ifstream in(std::string(RLHF_SOURCE_DIR) + "/tests/golden/algo_golden.json");
  std::stringstream ss;
  ss << in.rdbuf();
  return json::parse(ss.str());
}

struct Case {
  std::string fn;
  json options;
  std::map<std::string, torch::Tensor> in;
  std::map<std::string, torch::Tensor> out;
  torch::Tensor I(const std::string& k) const { return in.at(k); }
  double D(const std::string& k) const { return options.at(k).get<double>(); }
  std::string S(const std::string& k) const { return options.at(k).get<std::string>(); }
  bool B(const std::string& k) const { return options.at(k).get<bool>(); }
};

// Differentiable leaf copies of inputs, so that golden gradients can be compared.
torch::Tensor Leaf(const torch::Tensor& t) { return t.clone().requires_grad_(true); }

Aggregation Agg(const Case& c) { return ParseAggregation(c.S("agg")).value(); }

PreferenceOutput Grads(PreferenceOutput o, Outputs* out, const std::vector<std::pair<std::string, torch::Tensor>>& leaves) {
  o.loss.backward();
  for (const auto& [name, leaf] : leaves) (*out)["grad_" + name] = leaf.grad();
  return o;
}

void PutMetrics(const PreferenceOutput& o, Outputs* out) {
  (*out)["loss"] = o.loss.detach();
  (*out)["rewards_chosen"] = o.rewards_chosen;
  (*out)["rewards_rejected"] = o.rewards_rejected;
  (*out)["accuracy"] = o.accuracy;
  (*out)["margin"] = o.margin;
}

// Runs our implementation of a case; returns every output it can produce (compared by name).
Outputs Compute(const Case& c) {
  Outputs o;
  const auto& f = c.fn;
  if (f == "kl") {
    KlOptions k;
    k.estimator = ParseKlEstimator(c.S("estimator")).value();
    k.clamp = c.B("clamp");
    o["kl"] = KlPenalty(c.I("lp"), c.I("ref"), k);
  } else if (f == "aggregate") {
    o["value"] = AggregateLocal(c.I("loss"), c.I("mask"), ParseAggregation(c.S("mode")).value(),
                                c.options["max_len"].get<int64_t>());
  } else if (f == "whiten") {
    o["y"] = Whiten(c.I("x"), c.I("mask"), c.B("shift_mean"), c.B("unbiased"));
  } else if (f == "explained_variance") {
    o["ev"] = ExplainedVariance(c.I("values"), c.I("returns"), c.I("mask"));
  } else if (f == "token_rewards") {
    o["rewards"] = TokenRewards(c.I("score"), c.I("kl"), c.I("mask"), c.D("beta"), c.D("score_clip"));
  } else if (f == "gae") {
    auto g = Gae(c.I("rewards"), c.I("values"), c.I("mask"), c.D("gamma"), c.D("lambda"),
                 c.S("masked") == "skip" ? MaskedGae::kSkip : MaskedGae::kZero);
    o["advantages"] = g.advantages;
    o["returns"] = g.returns;
  } else if (f == "group_advantages") {
    o["advantages"] = GroupAdvantages(c.I("scores"), c.options["group_size"].get<int64_t>(),
                                      ParseGroupAdvantage(c.S("kind")).value(), c.D("eps"));
  } else if (f == "reinforce_pp") {
    o["advantages"] = ReinforcePlusPlus(c.I("scores"), c.I("kl"), c.I("mask"), c.D("beta"), c.D("gamma"),
                                        c.options["group_size"].get<int64_t>());
  } else if (f == "process_advantages") {
    o["advantages"] = ProcessAdvantages(c.I("step_rewards"), c.I("step_ends").to(torch::kInt64), c.I("mask"),
                                        c.options["group_size"].get<int64_t>(), c.D("eps"));
  } else if (f == "groups_with_signal") {
    o["keep"] = GroupsWithSignal(c.I("scores"), c.options["group_size"].get<int64_t>()).to(torch::kFloat64);
  } else if (f == "overlong_penalty") {
    o["penalty"] = OverlongPenalty(c.I("lengths"), c.options["max_len"].get<int64_t>(),
                                   c.options["cache_len"].get<int64_t>());
  } else if (f == "running_mean_std") {
    RunningMeanStd r;
    r.Update(c.I("b0"));
    r.Update(c.I("b1"));
    r.Update(c.I("b2"));
    o["mean"] = torch::tensor(r.mean(), torch::kFloat64);
    o["var"] = torch::tensor(r.var(), torch::kFloat64);
    o["count"] = torch::tensor(r.count(), torch::kFloat64);
    o["normalized"] = r.Normalize(c.I("x"), c.D("clip"));
  } else if (f == "policy_loss") {
    PolicyLossOptions p;
    p.eps_low = c.D("eps_low");
    p.eps_high = c.D("eps_high");
    p.dual_clip = c.D("dual_clip");
    p.ratio_level = ParseRatioLevel(c.S("ratio_level")).value();
    p.tis_cap = c.D("tis_cap");
    auto lp = Leaf(c.I("lp"));
    auto agg = Agg(c);
    auto r = PolicyLoss(lp, c.I("old"), c.I("advantages"), c.I("mask"), p, agg,
                        LocalDenominator(c.I("mask"), agg), c.I("behaviour"));
    r.loss.backward();
    o["loss"] = r.loss.detach();
    o["clip_fraction"] = r.clip_fraction;
    o["approx_kl"] = r.approx_kl;
    o["ratio_mean"] = r.ratio_mean;
    o["grad_lp"] = lp.grad();
  } else if (f == "value_loss") {
    auto V = Leaf(c.I("values"));
    auto agg = Agg(c);
    auto r = ValueLoss(V, c.I("old_values"), c.I("returns"), c.I("mask"), ParseValueClip(c.S("clip")).value(),
                       c.D("vclip"), agg, LocalDenominator(c.I("mask"), agg), c.I("advantages"));
    r.loss.backward();
    o["loss"] = r.loss.detach();
    o["clip_fraction"] = r.clip_fraction;
    o["explained_variance"] = r.explained_variance;
    o["grad_values"] = V.grad();
  } else if (f == "kl_loss") {
    auto lp = Leaf(c.I("lp"));
    KlOptions k;
    k.estimator = ParseKlEstimator(c.S("estimator")).value();
    auto agg = Agg(c);
    auto l = KlLoss(lp, c.I("ref"), c.I("mask"), c.D("beta"), k, agg, LocalDenominator(c.I("mask"), agg));
    l.backward();
    o["loss"] = l.detach();
    o["grad_lp"] = lp.grad();
  } else if (f == "entropy_bonus") {
    auto agg = Agg(c);
    o["loss"] = EntropyBonus(c.I("entropy"), c.I("mask"), c.D("coef"), agg, LocalDenominator(c.I("mask"), agg));
  } else if (f == "dpo") {
    DpoOptions d;
    d.type = ParseDpoLoss(c.S("type")).value();
    d.beta = c.D("beta");
    d.label_smoothing = c.D("label_smoothing");
    d.ipo_length_normalize = c.B("ipo_length_normalize");
    auto lc = Leaf(c.I("lp_c")), lr = Leaf(c.I("lp_r"));
    PutMetrics(Grads(DpoLossFn(lc, lr, c.I("ref_c"), c.I("ref_r"), d, c.I("len_c"), c.I("len_r")), &o,
                     {{"lp_c", lc}, {"lp_r", lr}}),
               &o);
  } else if (f == "kto") {
    KtoOptions k;
    k.beta = c.D("beta");
    k.desirable_weight = c.D("desirable_weight");
    k.undesirable_weight = c.D("undesirable_weight");
    auto lp = Leaf(c.I("lp"));
    auto r = KtoLossFn(lp, c.I("ref"), c.I("desirable").gt(0), c.I("kl_lp"), c.I("kl_ref"), k);
    r.loss.backward();
    o["loss"] = r.loss.detach();
    o["grad_lp"] = lp.grad();
    o["margin"] = r.margin;
    o["accuracy"] = r.accuracy;
  } else if (f == "orpo") {
    auto ac = Leaf(c.I("avg_c")), ar = Leaf(c.I("avg_r"));
    PutMetrics(Grads(OrpoLossFn(ac, ar, c.I("nll_chosen"), c.D("beta")), &o, {{"avg_c", ac}, {"avg_r", ar}}), &o);
  } else if (f == "simpo") {
    auto ac = Leaf(c.I("avg_c")), ar = Leaf(c.I("avg_r"));
    PutMetrics(Grads(SimpoLossFn(ac, ar, c.D("beta"), c.D("gamma"), c.D("label_smoothing")), &o,
                     {{"avg_c", ac}, {"avg_r", ar}}),
               &o);
  } else if (f == "cpo") {
    auto lc = Leaf(c.I("lp_c")), lr = Leaf(c.I("lp_r"));
    PutMetrics(Grads(CpoLossFn(lc, lr, c.I("nll_chosen"), c.D("beta"), c.D("alpha"), c.D("label_smoothing")), &o,
                     {{"lp_c", lc}, {"lp_r", lr}}),
               &o);
  } else if (f == "rrhf") {
    auto p = Leaf(c.I("p"));
    auto l = RrhfLossFn(p, c.I("rewards"), c.I("nll_best"), c.D("sft_weight"));
    l.backward();
    o["loss"] = l.detach();
    o["grad_p"] = p.grad();
  } else if (f == "bradley_terry") {
    auto a = Leaf(c.I("r_c")), b = Leaf(c.I("r_r"));
    auto margin = c.in.count("margin") ? c.I("margin") : torch::Tensor();
    PutMetrics(Grads(BradleyTerryLossFn(a, b, margin, c.D("centering")), &o, {{"r_c", a}, {"r_r", b}}), &o);
  } else {
    ADD_FAILURE() << "golden case for unknown function " << f;
  }
  return o;
}

TEST(Golden, EveryCaseMatchesTheFloat64Reference) {
  json golden = LoadGolden();
  ASSERT_GT(golden["cases"].size(), 50u);
  std::map<std::string, int> per_fn;
  for (const auto& jc : golden["cases"]) {
    Case c;
    c.fn = jc["fn"].get<std::string>();
    c.options = jc["options"];
    for (const auto& [k, v] : jc["inputs"].items()) c.in[k] = FromJson(v);
    for (const auto& [k, v] : jc["outputs"].items()) c.out[k] = FromJson(v);
    Outputs ours = Compute(c);
    ++per_fn[c.fn];
    for (const auto& [name, want] : c.out) {
      ASSERT_TRUE(ours.count(name)) << c.fn << " " << c.options.dump() << ": no output " << name;
      auto got = ours[name].to(torch::kFloat64).reshape(want.sizes());
      EXPECT_TRUE(torch::allclose(got, want, 1e-9, 1e-10))
          << c.fn << " " << c.options.dump() << " output " << name << "\nours:\n" << got << "\nreference:\n" << want;
    }
  }
  for (const char* fn : {"kl", "aggregate", "whiten", "gae", "group_advantages", "reinforce_pp", "process_advantages",
                         "policy_loss", "value_loss", "dpo", "kto", "orpo", "simpo", "cpo", "rrhf", "bradley_terry"}) {
    EXPECT_GT(per_fn[fn], 0) << "no golden case for " << fn;
  }
}

// ---- finite differences --------------------------------------------------------------------------

// Max relative error between autograd's gradient of f at x and central differences.
double GradError(const std::function<torch::Tensor(const torch::Tensor&)>& f, const torch::Tensor& x0) {
  auto x = x0.clone().requires_grad_(true);
  f(x).backward();
  auto g = x.grad();
  auto flat = x0.clone().reshape({-1});
  auto num = torch::zeros_like(flat);
  const double h = 1e-6;
  for (int64_t i = 0; i < flat.numel(); ++i) {
    auto p = flat.clone(), m = flat.clone();
    p[i] += h;
    m[i] -= h;
    num[i] = (f(p.view(x0.sizes())).item<double>() - f(m.view(x0.sizes())).item<double>()) / (2 * h);
  }
  auto diff = (g.reshape({-1}) - num).abs().max().item<double>();
  return diff / std::max(1.0, num.abs().max().item<double>());
}

struct Fixture {
  torch::Tensor mask = torch::tensor({{1, 1, 1, 1, 1}, {1, 1, 1, 0, 0}, {1, 1, 1, 1, 0}}).to(torch::kFloat64);
  torch::Tensor old = torch::randn({3, 5}, torch::kFloat64) * 0.5 - 1;
  torch::Tensor lp = old + torch::randn({3, 5}, torch::kFloat64) * 0.3;
  torch::Tensor adv = torch::randn({3, 5}, torch::kFloat64);
  torch::Tensor behaviour = old + torch::randn({3, 5}, torch::kFloat64) * 0.2;
};

TEST(Gradients, PolicyLossesMatchFiniteDifferences) {
  torch::manual_seed(7);
  Fixture fx;
  for (auto agg : {Aggregation::kTokenMean, Aggregation::kSeqMeanTokenMean, Aggregation::kSeqMeanTokenSumNorm}) {
    for (double dual : {0.0, 3.0}) {
      PolicyLossOptions o;
      o.eps_high = 0.28;
      o.dual_clip = dual;
      o.tis_cap = dual > 0 ? 1.5 : 0;
      double den = LocalDenominator(fx.mask, agg, 7);
      auto f = [&](const torch::Tensor& lp) {
        return PolicyLoss(lp, fx.old, fx.adv, fx.mask, o, agg, den, fx.behaviour).loss;
      };
      EXPECT_LT(GradError(f, fx.lp), 1e-6) << AggregationName(agg) << " dual " << dual;
    }
  }
  // GSPO: the gradient is that of the sequence objective (one advantage per sequence, mean over its
  // tokens), which is what the finite differences of the loss see in that setting.
  auto seq_adv = BroadcastToTokens(torch::tensor({0.7, -1.2, 0.4}, torch::kFloat64), fx.mask);
  for (double eps : {0.2, 4e-4}) {
    PolicyLossOptions o;
    o.ratio_level = RatioLevel::kSequence;
    o.eps_low = o.eps_high = eps;
    auto f = [&](const torch::Tensor& lp) {
      return PolicyLoss(lp, fx.old, seq_adv, fx.mask, o, Aggregation::kSeqMeanTokenMean, 3).loss;
    };
    EXPECT_LT(GradError(f, fx.lp), 1e-6) << "GSPO eps " << eps;
  }
}

TEST(Gradients, ValueKlAndEntropyMatchFiniteDifferences) {
  torch::manual_seed(8);
  Fixture fx;
  auto V_old = torch::randn({3, 5}, torch::kFloat64), R = V_old + torch::randn({3, 5}, torch::kFloat64);
  auto V = V_old + torch::randn({3, 5}, torch::kFloat64) * 0.3;
  for (auto clip : {ValueClip::kNone, ValueClip::kPpo, ValueClip::kStudyNotes}) {
    auto f = [&](const torch::Tensor& v) {
      return ValueLoss(v, V_old, R, fx.mask, clip, 0.2, Aggregation::kTokenMean, 11, fx.adv).loss;
    };
    EXPECT_LT(GradError(f, V), 1e-6);
  }
  for (auto est : {KlEstimator::kK1, KlEstimator::kK2, KlEstimator::kK3}) {
    KlOptions k;
    k.estimator = est;
    auto f = [&](const torch::Tensor& lp) { return KlLoss(lp, fx.old, fx.mask, 0.1, k, Aggregation::kTokenMean, 11); };
    EXPECT_LT(GradError(f, fx.lp), 1e-6);
  }
  auto ent = [&](const torch::Tensor& h) { return EntropyBonus(h, fx.mask, 0.01, Aggregation::kSeqMeanTokenMean, 3); };
  EXPECT_LT(GradError(ent, fx.lp.abs()), 1e-6);
}

TEST(Gradients, PreferenceLossesMatchFiniteDifferences) {
  torch::manual_seed(9);
  auto lc = torch::randn({4}, torch::kFloat64) - 10, lr = torch::randn({4}, torch::kFloat64) - 11;
  auto rc = lc + torch::randn({4}, torch::kFloat64) * 0.5, rr = lr + torch::randn({4}, torch::kFloat64) * 0.5;
  auto len = torch::tensor({5.0, 7.0, 9.0, 3.0}, torch::kFloat64);
  for (auto type : {DpoLoss::kSigmoid, DpoLoss::kIpo, DpoLoss::kHinge, DpoLoss::kRobust}) {
    DpoOptions o;
    o.type = type;
    o.label_smoothing = type == DpoLoss::kHinge || type == DpoLoss::kIpo ? 0 : 0.1;
    o.beta = type == DpoLoss::kHinge ? 0.5 : 0.1;
    auto f = [&](const torch::Tensor& x) { return DpoLossFn(x, lr, rc, rr, o, len, len + 1).loss; };
    EXPECT_LT(GradError(f, lc), 1e-6) << static_cast<int>(type);
  }
  auto nll = torch::rand({4}, torch::kFloat64) + 1;
  auto avg_r = -torch::rand({4}, torch::kFloat64) - 0.1;
  EXPECT_LT(GradError([&](const torch::Tensor& x) { return OrpoLossFn(x, avg_r, nll).loss; },
                      -torch::rand({4}, torch::kFloat64) - 0.01),
            1e-6);
  EXPECT_LT(GradError([&](const torch::Tensor& x) { return SimpoLossFn(x, avg_r, 2.0, 0.5, 0.1).loss; }, avg_r + 0.3),
            1e-6);
  EXPECT_LT(GradError([&](const torch::Tensor& x) { return CpoLossFn(x, lr, nll, 0.1, 1.0, 0.05).loss; }, lc), 1e-6);
  auto desirable = torch::tensor({true, false, true, false});
  EXPECT_LT(GradError([&](const torch::Tensor& x) { return KtoLossFn(x, rc, desirable, lc, rr, {}).loss; }, lc), 1e-6);
  auto rewards = torch::tensor({{1.0, 0.0, 0.5}, {0.1, 0.9, 0.3}}, torch::kFloat64);
  EXPECT_LT(GradError([&](const torch::Tensor& p) { return RrhfLossFn(p, rewards, nll.narrow(0, 0, 2)); },
                      -torch::rand({2, 3}, torch::kFloat64) * 2),
            1e-6);
  auto margin = torch::tensor({0.0, 1.0, 0.5, 0.0}, torch::kFloat64);
  EXPECT_LT(GradError([&](const torch::Tensor& x) { return BradleyTerryLossFn(x, rr, margin, 0.01).loss; }, rc), 1e-6);
}

// ---- properties named in docs/algorithms.md ---------------------------------------------------------------

TEST(Properties, FreshOnPolicyBatchHasRatioOneAndNoClipping) {
  Fixture fx;
  auto r = PolicyLoss(fx.old.clone().requires_grad_(true), fx.old, fx.adv, fx.mask, {}, Aggregation::kTokenMean,
                      LocalDenominator(fx.mask, Aggregation::kTokenMean));
  EXPECT_DOUBLE_EQ(r.ratio_mean.item<double>(), 1.0);
  EXPECT_DOUBLE_EQ(r.clip_fraction.item<double>(), 0.0);
  EXPECT_NEAR(r.approx_kl.item<double>(), 0.0, 1e-15);
  // On-policy, the loss is -mean(A) and its gradient is -A / n per token.
  EXPECT_NEAR(r.loss.item<double>(), -MaskedMean(fx.adv, fx.mask).item<double>(), 1e-12);
}

TEST(Properties, GlobalDenominatorsMakeMicroBatchesAddUp) {
  // Two micro-batches with the global denominator sum to the loss of the whole batch, for every mode.
  Fixture fx;
  for (auto agg : {Aggregation::kTokenMean, Aggregation::kSeqMeanTokenMean, Aggregation::kSeqMeanTokenSumNorm}) {
    double global = LocalDenominator(fx.mask, agg, 5);
    auto whole = PolicyLoss(fx.lp, fx.old, fx.adv, fx.mask, {}, agg, global).loss.item<double>();
    double parts = 0;
    for (auto [s, n] : {std::pair<int64_t, int64_t>{0, 1}, {1, 2}}) {
      double local = LocalDenominator(fx.mask.narrow(0, s, n), agg, 5);
      EXPECT_LE(local, global);
      parts += PolicyLoss(fx.lp.narrow(0, s, n), fx.old.narrow(0, s, n), fx.adv.narrow(0, s, n),
                          fx.mask.narrow(0, s, n), {}, agg, global)
                   .loss.item<double>();
    }
    EXPECT_NEAR(parts, whole, 1e-12) << AggregationName(agg);
  }
}

TEST(Properties, K3IsNonNegativeAndGroupOfOneHasNoAdvantage) {
  auto lp = torch::randn({4, 7}, torch::kFloat64), ref = torch::randn({4, 7}, torch::kFloat64) * 3;
  EXPECT_GE(KlPenalty(lp, ref).min().item<double>(), 0.0);
  auto s = torch::tensor({3.0, -1.0}, torch::kFloat64);
  EXPECT_TRUE(GroupAdvantages(s, 1, GroupAdvantage::kGrpo).eq(0).all().item<bool>());
  EXPECT_TRUE(GroupAdvantages(s, 1, GroupAdvantage::kRloo).eq(0).all().item<bool>());
  EXPECT_FALSE(ParseAggregation("mean").ok());
  EXPECT_FALSE(ParseKlEstimator("k4").ok());
  EXPECT_FALSE(ParseDpoLoss("sppo").ok());
}

}  // namespace
}  // namespace rlhf::algo
