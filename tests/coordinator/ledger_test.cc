// The ledger's invariant, its checkpoint form, and the evaluation statistics (pass@k, Wilson interval).
#include "services/coordinator/ledger.h"

#include <gtest/gtest.h>

#include <cmath>
#include <set>

#include "services/coordinator/eval.h"

namespace rlhf::coordinator {
namespace {

TEST(Ledger, EveryPromptEndsInExactlyOneStatePerEpoch) {
  Ledger l(10, 7);
  auto a = l.Lease(4);
  ASSERT_EQ(a.size(), 4u);
  for (int64_t p : a) EXPECT_EQ(l.state(p), PromptState::kLeased);
  // A failed worker hands two back; they come out first on the next lease.
  ASSERT_TRUE(l.Release(a[0]).ok());
  ASSERT_TRUE(l.Release(a[1]).ok());
  EXPECT_FALSE(l.Release(a[0]).ok()) << "released twice";
  auto b = l.Lease(3);
  ASSERT_EQ(b.size(), 3u);
  EXPECT_EQ(b[0], a[0]);
  EXPECT_EQ(b[1], a[1]);
  ASSERT_TRUE(l.Relet(b[2]).ok());
  ASSERT_TRUE(l.Settle(a[2], PromptState::kTrained).ok());
  ASSERT_TRUE(l.Settle(a[3], PromptState::kFiltered, "equal rewards").ok());
  for (int64_t p : b) ASSERT_TRUE(l.Settle(p, PromptState::kTrained).ok());
  // Nothing is trained twice: a second settle is refused and counted.
  auto again = l.Settle(a[2], PromptState::kTrained);
  EXPECT_EQ(again.code(), absl::StatusCode::kFailedPrecondition);
  auto c = l.Lease(100);
  EXPECT_EQ(c.size(), 5u) << "10 prompts, 5 leased before";
  ASSERT_TRUE(l.Settle(c[0], PromptState::kDropped, "scorer INVALID_ARGUMENT").ok());
  EXPECT_FALSE(l.EpochFinished());
  EXPECT_EQ(l.NextEpoch().code(), absl::StatusCode::kFailedPrecondition);
  for (size_t i = 1; i < c.size(); ++i) ASSERT_TRUE(l.Settle(c[i], PromptState::kTrained).ok());
  ASSERT_TRUE(l.Check().ok());
  EXPECT_TRUE(l.EpochFinished());
  EXPECT_TRUE(l.Lease(5).empty());
  auto n = l.Current();
  EXPECT_EQ(n.trained, 8);
  EXPECT_EQ(n.filtered, 1);
  EXPECT_EQ(n.dropped, 1);
  EXPECT_EQ(n.trained + n.filtered + n.dropped, n.size);
  EXPECT_EQ(n.released, 3);  // two releases and one relet
  EXPECT_EQ(n.duplicates, 1);
  EXPECT_EQ(n.reasons.at("equal rewards"), 1);
  EXPECT_EQ(n.reasons.at("scorer INVALID_ARGUMENT"), 1);
}

TEST(Ledger, OrderIsASeededShuffleThatChangesPerEpoch) {
  auto order = [](uint64_t seed, int epochs) {
    Ledger l(50, seed);
    std::vector<int64_t> all;
    for (int e = 0; e < epochs; ++e) {
      if (e > 0) EXPECT_TRUE(l.NextEpoch().ok());
      for (int64_t p : l.Lease(50)) {
        all.push_back(p);
        EXPECT_TRUE(l.Settle(p, PromptState::kTrained).ok());
      }
    }
    return all;
  };
  auto a = order(3, 2), b = order(3, 2), c = order(4, 2);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
  std::vector<int64_t> e0(a.begin(), a.begin() + 50), e1(a.begin() + 50, a.end());
  EXPECT_NE(e0, e1);
  std::set<int64_t> s0(e0.begin(), e0.end()), s1(e1.begin(), e1.end());
  EXPECT_EQ(s0.size(), 50u);
  EXPECT_EQ(s1.size(), 50u);
}

TEST(Ledger, CheckpointKeepsSettledPromptsAndReturnsLeasesToPending) {
  Ledger l(12, 1);
  auto first = l.Lease(6);
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(l.Settle(first[static_cast<size_t>(i)], PromptState::kTrained).ok());
  ASSERT_TRUE(l.Settle(first[4], PromptState::kFiltered, "equal rewards").ok());
  // first[5] is leased when the checkpoint is taken: in flight, not settled.
  const auto j = l.ToJson();
  auto r = Ledger::FromJson(j, 12, 1);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->state(first[5]), PromptState::kPending);
  EXPECT_EQ(r->state(first[0]), PromptState::kTrained);
  EXPECT_EQ(r->Current().filtered, 1);
  // The resumed ledger hands out exactly the prompts not settled before, each once.
  std::set<int64_t> rest;
  for (int64_t p : r->Lease(100)) {
    EXPECT_TRUE(rest.insert(p).second);
    ASSERT_TRUE(r->Settle(p, PromptState::kTrained).ok());
  }
  EXPECT_EQ(rest.size(), 7u);
  EXPECT_TRUE(rest.count(first[5]));
  for (int i = 0; i < 5; ++i) EXPECT_FALSE(rest.count(first[static_cast<size_t>(i)]));
  EXPECT_TRUE(r->EpochFinished());
  // Another dataset or seed is refused with a hint.
  auto bad = Ledger::FromJson(j, 13, 1);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(bad.status().message()).find("same data and seed"), std::string::npos);
  EXPECT_FALSE(Ledger::FromJson(j, 12, 2).ok());
  auto broken = j;
  broken["states"] = "000";
  EXPECT_FALSE(Ledger::FromJson(broken, 12, 1).ok());
}

TEST(Ledger, TotalsAddUpOverEpochs) {
  Ledger l(5, 9);
  for (int e = 0; e < 3; ++e) {
    if (e > 0) ASSERT_TRUE(l.NextEpoch().ok());
    auto ps = l.Lease(5);
    ASSERT_TRUE(l.Settle(ps[0], PromptState::kDropped, "x").ok());
    for (size_t i = 1; i < ps.size(); ++i) ASSERT_TRUE(l.Settle(ps[i], PromptState::kTrained).ok());
  }
  auto j = l.ToJson();
  auto r = Ledger::FromJson(j, 5, 9);
  ASSERT_TRUE(r.ok()) << r.status();
  for (const auto& t : {l.Totals(), r->Totals()}) {
    EXPECT_EQ(t.size, 15);
    EXPECT_EQ(t.trained, 12);
    EXPECT_EQ(t.dropped, 3);
    EXPECT_EQ(t.reasons.at("x"), 3);
  }
  EXPECT_EQ(r->epoch(), 2);
}

// pass@k against its definition: the share of k-subsets of the n answers that hold a correct one.
double PassAtKBrute(int n, int c, int k) {
  int64_t hit = 0, all = 0;
  for (uint32_t mask = 0; mask < (1u << n); ++mask) {
    if (__builtin_popcount(mask) != k) continue;
    ++all;
    hit += (mask & ((1u << c) - 1)) != 0;  // answers 0..c-1 are the correct ones
  }
  return static_cast<double>(hit) / static_cast<double>(all);
}

TEST(EvalStatistics, PassAtKIsTheUnbiasedEstimator) {
  for (int n : {1, 4, 10}) {
    for (int c = 0; c <= n; ++c) {
      for (int k = 1; k <= n; ++k) {
        EXPECT_NEAR(PassAtK(n, c, k), PassAtKBrute(n, c, k), 1e-12) << n << " " << c << " " << k;
      }
    }
  }
  EXPECT_DOUBLE_EQ(PassAtK(10, 3, 1), 0.3);
}

TEST(EvalStatistics, WilsonIntervalMatchesTheClosedForm) {
  // Values of the closed form (p + z²/2n ± z sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n), z = 1.96.
  auto [lo, hi] = WilsonInterval(5, 10);
  EXPECT_NEAR(lo, 0.236590, 1e-6);
  EXPECT_NEAR(hi, 0.763410, 1e-6);
  std::tie(lo, hi) = WilsonInterval(0, 20);
  EXPECT_NEAR(lo, 0.0, 1e-12);
  EXPECT_NEAR(hi, 0.161130, 1e-6);
  std::tie(lo, hi) = WilsonInterval(200, 200);
  EXPECT_NEAR(lo, 0.981154, 1e-6);
  EXPECT_DOUBLE_EQ(hi, 1.0);
}

}  // namespace
}  // namespace rlhf::coordinator
