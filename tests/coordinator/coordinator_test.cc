// The coordinator against real rollout and scorer services (in-process gRPC servers over a small random
// model): every prompt ends in one state, failing workers and stale versions are recovered, an
// unreachable scorer stops the step without losing prompts, and evaluation counts what the scorer says.
#include "services/coordinator/coordinator.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <map>
#include <mutex>
#include <set>

#include "common/model/checkpoint.h"
#include "rollout/service.h"
#include "rollout/weight_client.h"
#include "services/coordinator/eval.h"
#include "services/scoring/scorer.h"
#include "services/scoring/verifiers.h"
#include "services/scoring/service.h"
#include "tests/test_util.h"

namespace rlhf::coordinator {
namespace {

namespace fs = std::filesystem;
const std::string kRlhf = std::string(RLHF_BINARY_DIR) + "/cli/rlhf";

RpcConfig Rpc() {
  RpcConfig r;
  r.deadline_seconds = 30;
  return r;
}

// A model folder with a tokenizer, a rollout service over it and a scorer service with exact match.
class CoordinatorTest : public ::testing::Test {
 public:
  static std::string dir_;
  static void SetUpTestSuite() {
    dir_ = (fs::temp_directory_path() / ("coordinator-" + std::to_string(getpid()))).string();
    fs::create_directories(dir_);
    {
      std::ofstream corpus(dir_ + "/corpus.txt");
      for (int i = 0; i < 300; ++i) corpus << i % 17 << "+" << i % 13 << "=" << i % 17 + i % 13 << "\n";
    }
    const std::string q = " --set run.log_level=warn --run-dir " + dir_ + "/runs/";
    auto r = testing::RunCommand(kRlhf + " train-tokenizer --corpus " + dir_ + "/corpus.txt --merges 20 --out " + dir_ +
                                 "/tok" + q + "tok");
    ASSERT_EQ(r.code, 0) << r.out;
    r = testing::RunCommand(kRlhf + " init-model --hidden-size 32 --layers 2 --heads 4 --kv-heads 2 --intermediate-size 64 "
                            "--vocab-size 300 --tokenizer " + dir_ + "/tok --seed 3 --out " + dir_ + "/m" + q + "init");
    ASSERT_EQ(r.code, 0) << r.out;
  }
  static void TearDownTestSuite() { fs::remove_all(dir_); }

  void SetUp() override {
    rollout::RolloutServerConfig rc;
    rc.slots = 8;
    rc.capacity = 64;
    auto served = rollout::LoadRolloutService(rc, dir_ + "/m");
    ASSERT_TRUE(served.ok()) << served.status();
    served_ = std::move(*served);
    auto* svc = served_->service.get();
    auto rs = RpcServer::Start(Rpc(), {"", "rollout", [svc] { return svc->next_version(); }}, {svc});
    ASSERT_TRUE(rs.ok()) << rs.status();
    rollout_server_ = std::move(*rs);
    scoring::RewardConfig reward;
    reward.exact_match_weight = 1;
    auto scorer = scoring::Scorer::Create(reward);
    ASSERT_TRUE(scorer.ok()) << scorer.status();
    scorer_service_ = std::make_unique<scoring::ScorerService>(std::move(*scorer), scoring::ScorerServiceConfig{});
    auto ss = RpcServer::Start(Rpc(), {"", "scorer", {}}, {scorer_service_.get()});
    ASSERT_TRUE(ss.ok()) << ss.status();
    scorer_server_ = std::move(*ss);
    model::LoadOptions lo;
    lo.dtype = torch::kFloat32;
    auto learner_copy = model::LoadModel(dir_ + "/m", lo);
    ASSERT_TRUE(learner_copy.ok());
    policy_ = *learner_copy;
  }
  void TearDown() override {
    rollout_server_->Shutdown();
    scorer_server_->Shutdown();
  }

  // Prompts "i+j=" with answers; those in `no_answer` lack the answer field (the scorer fails them).
  static std::vector<Prompt> Prompts(int n, const std::set<int>& no_answer = {}) {
    std::vector<Prompt> out;
    for (int i = 0; i < n; ++i) {
      Prompt p;
      p.set_prompt_id("p" + std::to_string(i));
      p.set_prompt_index(i);
      p.set_text(std::to_string(i % 9) + "+" + std::to_string(i / 9) + "=");
      if (!no_answer.count(i)) (*p.mutable_extra())["answer"] = "\"" + std::to_string(i % 9 + i / 9) + "\"";
      out.push_back(p);
    }
    return out;
  }

  RolloutPool::Publisher Publisher(int* pushes) {
    return [this, pushes](Rollout::Stub* stub, int64_t version) -> absl::Status {
      ++*pushes;
      return rollout::PushWeights(stub, *policy_, version, 1 << 16, Rpc()).status();
    };
  }
  // Batches of `batch` prompts x `group` samples.
  static CoordinatorOptions Options(int64_t batch, int32_t group) {
    CoordinatorOptions o;
    o.rollout_batch_size = batch;
    o.group_size = group;
    o.params = Params();
    return o;
  }
  static SamplingParams Params() {
    SamplingParams sp;
    sp.set_temperature(1.0f);
    sp.set_top_p(1.0f);
    sp.set_max_new_tokens(4);
    sp.set_seed(5);
    return sp;
  }

  std::unique_ptr<rollout::ServedRollout> served_;
  std::unique_ptr<RpcServer> rollout_server_, scorer_server_;
  std::unique_ptr<scoring::ScorerService> scorer_service_;
  model::Transformer policy_{nullptr};
};
std::string CoordinatorTest::dir_;

// Runs the coordinator to the end, marking every batch trained; returns how often each prompt was trained.
std::map<int64_t, int> RunToTheEnd(Coordinator& c, int64_t version) {
  std::map<int64_t, int> trained;
  for (int guard = 0; guard < 1000 && !c.Done(); ++guard) {
    auto b = c.NextBatch(version);
    EXPECT_TRUE(b.ok()) << b.status();
    if (!b.ok() || b->empty()) break;
    EXPECT_EQ(b->samples.size(), b->prompts.size() * static_cast<size_t>(c.options().group_size));
    for (int64_t p : b->prompts) ++trained[p];
    EXPECT_TRUE(c.MarkTrained(*b).ok());
  }
  return trained;
}

TEST_F(CoordinatorTest, EveryPromptOfEveryEpochEndsInOneState) {
  int pushes = 0;
  RolloutPool pool({rollout_server_->InProcessChannel()}, Rpc(), {3, 0.01}, Publisher(&pushes));
  ScorerClient scorer(scorer_server_->InProcessChannel(), Rpc(), {3, 0.01});
  auto o = Options(4, 3);
  o.epochs = 2;
  Coordinator c(o, Prompts(14, {2, 9}), 11, &pool, &scorer);
  auto trained = RunToTheEnd(c, 0);
  EXPECT_TRUE(c.Done());
  ASSERT_TRUE(c.ledger().Check().ok());
  const auto t = c.ledger().Totals();
  EXPECT_EQ(t.size, 28);
  EXPECT_EQ(t.trained, 24);
  EXPECT_EQ(t.dropped, 4) << "the two prompts without an answer, in each epoch";
  EXPECT_EQ(t.trained + t.filtered + t.dropped, t.size);
  EXPECT_EQ(t.duplicates, 0);
  EXPECT_EQ(t.reasons.at("scorer INVALID_ARGUMENT"), 4);
  for (int i = 0; i < 14; ++i) EXPECT_EQ(trained[i], i == 2 || i == 9 ? 0 : 2) << "prompt " << i;
  EXPECT_EQ(pushes, 0);
}

TEST_F(CoordinatorTest, DynamicSamplingFiltersGroupsOfEqualRewards) {
  int pushes = 0;
  RolloutPool pool({rollout_server_->InProcessChannel()}, Rpc(), {3, 0.01}, Publisher(&pushes));
  ScorerClient scorer(scorer_server_->InProcessChannel(), Rpc(), {3, 0.01});
  auto o = Options(4, 4);
  o.dynamic_sampling = true;
  Coordinator c(o, Prompts(12), 3, &pool, &scorer);
  // A random model almost never says the sum: most groups are all 0 and filtered. Each accepted group
  // must have two different rewards.
  for (int guard = 0; guard < 100 && !c.Done(); ++guard) {
    auto b = c.NextBatch(0);
    ASSERT_TRUE(b.ok()) << b.status();
    if (b->empty()) break;
    for (size_t k = 0; k < b->samples.size(); k += 4) {
      std::set<float> rs;
      for (size_t i = k; i < k + 4; ++i) rs.insert(b->samples[i].reward());
      EXPECT_GT(rs.size(), 1u);
    }
    ASSERT_TRUE(c.MarkTrained(*b).ok());
  }
  const auto t = c.ledger().Totals();
  EXPECT_GT(t.filtered, 0);
  EXPECT_EQ(t.trained + t.filtered, 12);
  if (t.filtered > 0) EXPECT_EQ(t.reasons.at("equal rewards"), t.filtered);
}

TEST_F(CoordinatorTest, AFailedWorkerAndAStaleVersionAreRecovered) {
  // Worker 0 is a port nobody listens on: its chunk moves to worker 1. Worker 1 holds version 0 and the
  // step needs version 1: it is sent the weights once and the chunk is tried again.
  int pushes = 0;
  auto dead = MakeChannel(Rpc(), "127.0.0.1:1").value();
  RolloutPool pool({dead, rollout_server_->InProcessChannel()}, Rpc(), {4, 0.01}, Publisher(&pushes));
  ScorerClient scorer(scorer_server_->InProcessChannel(), Rpc(), {3, 0.01});
  auto o = Options(6, 2);
  Coordinator c(o, Prompts(6), 1, &pool, &scorer);
  auto b = c.NextBatch(1);
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(b->prompts.size(), 6u);
  for (const auto& s : b->samples) EXPECT_EQ(s.policy_version(), 1);
  EXPECT_EQ(pushes, 1);
  EXPECT_EQ(served_->service->version(), 1);
  EXPECT_GE(c.ledger().Current().released, 3) << "the dead worker's chunk was leased again";
  ASSERT_TRUE(c.MarkTrained(*b).ok());
  EXPECT_EQ(c.ledger().Current().trained, 6);
  EXPECT_TRUE(c.Done());
}

TEST_F(CoordinatorTest, GroupsTooFarBehindTheLearnerAreHandedBackAndCountedStale) {
  // Asynchronous RL with max_staleness 1: a batch generated with version 0 may train at version 1, not at
  // version 2. Its groups go back to pending (counted stale), are leased again first, and each prompt still
  // ends in exactly one state.
  int pushes = 0;
  RolloutPool pool({rollout_server_->InProcessChannel()}, Rpc(), {3, 0.01}, Publisher(&pushes));
  ScorerClient scorer(scorer_server_->InProcessChannel(), Rpc(), {3, 0.01});
  Coordinator c(Options(3, 2), Prompts(6), 5, &pool, &scorer);
  auto b = c.NextBatch(0);
  ASSERT_TRUE(b.ok()) << b.status();
  ASSERT_EQ(b->prompts.size(), 3u);
  for (const auto& smp : b->samples) EXPECT_EQ(smp.policy_version(), 0);
  const std::vector<int64_t> first = b->prompts;
  auto kept = *b;
  auto none = c.DropStale(kept, /*min_version=*/0);
  ASSERT_TRUE(none.ok()) << none.status();
  EXPECT_EQ(*none, 0) << "trained at version 1: one version behind, within the bound";
  EXPECT_EQ(kept.prompts, first);
  auto dropped = c.DropStale(*b, /*min_version=*/1);
  ASSERT_TRUE(dropped.ok()) << dropped.status();
  EXPECT_EQ(*dropped, 3);
  EXPECT_TRUE(b->empty());
  EXPECT_TRUE(b->samples.empty());
  auto n = c.Current();
  EXPECT_EQ(n.pending, 6);
  EXPECT_EQ(n.events.at("stale"), 3);
  // Generated again (the worker now holds version 1): the stale prompts come out first.
  ASSERT_TRUE(served_->service->StageFromFolder(dir_ + "/m", 1).ok());
  auto again = c.NextBatch(1);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->prompts, first);
  for (const auto& smp : again->samples) EXPECT_EQ(smp.policy_version(), 1);
  ASSERT_TRUE(c.MarkTrained(*again).ok());
  auto rest = c.NextBatch(1);
  ASSERT_TRUE(rest.ok());
  ASSERT_TRUE(c.MarkTrained(*rest).ok());
  const auto t = c.Totals();
  EXPECT_TRUE(c.Done());
  EXPECT_EQ(t.trained, 6);
  EXPECT_EQ(t.duplicates, 0);
  EXPECT_EQ(t.events.at("stale"), 3);
  // The count survives a checkpoint.
  auto restored = Ledger::FromJson(c.State(), 6, 5);
  ASSERT_TRUE(restored.ok()) << restored.status();
  EXPECT_EQ(restored->Totals().events.at("stale"), 3);
}

TEST_F(CoordinatorTest, TwoCallsFindingTheSameStaleWorkerPushItsWeightsOnce) {
  // Two Generate calls at once (the asynchronous loop evaluates while it generates): worker 0 is dead, so
  // both calls' leases end up on worker 1, which holds version 0 while they need 1. The push is held until
  // every version-0 sample of both calls has been streamed, so both find the worker stale and ask for the
  // weights. One push is made; the other call finds version 1 there.
  std::mutex mu;
  std::condition_variable cv;
  int stale_samples = 0;
  served_->service->SetStreamHookForTesting([&](const Sample& s) {
    if (s.policy_version() != 0) return;
    std::lock_guard<std::mutex> lock(mu);
    ++stale_samples;
    cv.notify_all();
  });
  int pushes = 0;
  auto publish = Publisher(&pushes);
  auto held = [&](Rollout::Stub* stub, int64_t version) {
    {
      std::unique_lock<std::mutex> lock(mu);
      EXPECT_TRUE(cv.wait_for(lock, std::chrono::seconds(30), [&] { return stale_samples >= 12; }));
    }
    return publish(stub, version);
  };
  RolloutPool pool({MakeChannel(Rpc(), "127.0.0.1:1").value(), rollout_server_->InProcessChannel()}, Rpc(), {4, 0.01}, held);
  pool.SetLeases({/*prompts=*/3, /*seconds=*/0});
  RolloutPool::Result results[2];
  std::thread other([&] { results[1] = pool.Generate(Prompts(3), Params(), 2, 1); });
  results[0] = pool.Generate(Prompts(3), Params(), 2, 1);
  other.join();
  for (const auto& r : results) {
    for (const auto& e : r.errors) EXPECT_TRUE(e.ok()) << e;
    for (const auto& g : r.groups) {
      ASSERT_EQ(g.size(), 2u);
      for (const auto& s : g) EXPECT_EQ(s.policy_version(), 1);
    }
  }
  EXPECT_EQ(stale_samples, 12);
  EXPECT_EQ(pushes, 1);
  served_->service->SetStreamHookForTesting(nullptr);
}

// A second in-process rollout worker over the same model.
struct ExtraWorker {
  std::unique_ptr<rollout::ServedRollout> served;
  std::unique_ptr<RpcServer> server;
};
ExtraWorker StartWorker(const std::string& model_dir, const RpcConfig& rpc) {
  rollout::RolloutServerConfig rc;
  rc.slots = 8;
  rc.capacity = 64;
  ExtraWorker w;
  auto served = rollout::LoadRolloutService(rc, model_dir);
  EXPECT_TRUE(served.ok()) << served.status();
  w.served = std::move(*served);
  auto* svc = w.served->service.get();
  auto rs = RpcServer::Start(rpc, {"", "rollout", [svc] { return svc->next_version(); }}, {svc});
  EXPECT_TRUE(rs.ok()) << rs.status();
  w.server = std::move(*rs);
  return w;
}

TEST_F(CoordinatorTest, FastWorkersTakeMoreLeases) {
  // Worker 0 takes 30 ms per sample it streams; worker 1 is not slowed. With leases of one prompt, the
  // fast worker takes the next lease whenever it is done, so it does most of the work.
  auto fast = StartWorker(dir_ + "/m", Rpc());
  std::atomic<int> slow_samples{0}, fast_samples{0};
  served_->service->SetStreamHookForTesting([&](const Sample&) {
    ++slow_samples;
    std::this_thread::sleep_for(std::chrono::milliseconds(30));
  });
  fast.served->service->SetStreamHookForTesting([&](const Sample&) { ++fast_samples; });
  int pushes = 0;
  RolloutPool pool({rollout_server_->InProcessChannel(), fast.server->InProcessChannel()}, Rpc(), {3, 0.01},
                   Publisher(&pushes));
  pool.SetLeases({/*prompts=*/1, /*seconds=*/0});
  auto r = pool.Generate(Prompts(12), Params(), 2, 0);
  for (const auto& e : r.errors) EXPECT_TRUE(e.ok()) << e;
  EXPECT_EQ(slow_samples + fast_samples, 24);
  EXPECT_GT(fast_samples.load(), 2 * slow_samples.load()) << "slow " << slow_samples << ", fast " << fast_samples;
  EXPECT_EQ(r.expired, 0);
  served_->service->SetStreamHookForTesting(nullptr);
  fast.server->Shutdown();
}

TEST_F(CoordinatorTest, AnExpiredLeaseGoesToAnotherWorkerAndItsLateResultIsRefused) {
  // Worker 0 stops inside its first lease (its stream blocks, as a SIGSTOPped process would) past the
  // lease's deadline of 0.5 s: the lease goes to worker 1 and the call completes from there. Worker 0 is then
  // let go: its result comes in after the batch is done, and is refused and counted.
  auto other = StartWorker(dir_ + "/m", Rpc());
  std::mutex mu;
  std::condition_variable cv;
  bool stopped = true;
  served_->service->SetStreamHookForTesting([&](const Sample&) {
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return !stopped; });
  });
  int pushes = 0;
  RolloutPool pool({rollout_server_->InProcessChannel(), other.server->InProcessChannel()}, Rpc(), {3, 0.01},
                   Publisher(&pushes));
  pool.SetLeases({/*prompts=*/2, /*seconds=*/0.5});
  auto r = pool.Generate(Prompts(4), Params(), 2, 0);
  for (const auto& e : r.errors) EXPECT_TRUE(e.ok()) << e;
  for (const auto& g : r.groups) EXPECT_EQ(g.size(), 2u);
  EXPECT_EQ(r.expired, 1);
  EXPECT_EQ(pool.leases_expired(), 1);
  EXPECT_EQ(r.relets[0] + r.relets[1], 2) << "the expired lease's two prompts were leased again";
  EXPECT_EQ(pool.late_results_refused(), 0);
  {
    std::lock_guard<std::mutex> lock(mu);
    stopped = false;
    cv.notify_all();
  }
  for (int i = 0; i < 200 && pool.late_results_refused() == 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(25));
  EXPECT_EQ(pool.late_results_refused(), 1);
  served_->service->SetStreamHookForTesting(nullptr);
  other.server->Shutdown();
}

TEST_F(CoordinatorTest, AnUnreachableScorerStopsTheStepAndKeepsThePrompts) {
  int pushes = 0;
  RolloutPool pool({rollout_server_->InProcessChannel()}, Rpc(), {2, 0.01}, Publisher(&pushes));
  ScorerClient scorer(MakeChannel(Rpc(), "127.0.0.1:1").value(), Rpc(), {2, 0.01});
  auto o = Options(4, 2);
  Coordinator c(o, Prompts(8), 1, &pool, &scorer);
  auto b = c.NextBatch(0);
  EXPECT_EQ(b.status().code(), absl::StatusCode::kUnavailable) << b.status();
  const auto n = c.ledger().Current();
  EXPECT_EQ(n.pending, 8) << "the leases went back";
  EXPECT_EQ(n.dropped, 0);
  EXPECT_EQ(n.released, 4);
  // The checkpoint form of this state resumes with every prompt still to do.
  auto resumed = Ledger::FromJson(c.State(), 8, 1);
  ASSERT_TRUE(resumed.ok());
  EXPECT_EQ(resumed->Lease(100).size(), 8u);
}

// A scorer replica that counts the calls it answers (forwarding them to a real scorer service).
class CountingScorer : public Scorer::Service {
 public:
  explicit CountingScorer(scoring::ScorerService* inner) : inner_(inner) {}
  grpc::Status Score(grpc::ServerContext* ctx, const ScoreRequest* req, ScoreReply* reply) override {
    ++calls;
    return inner_->Score(ctx, req, reply);
  }
  std::atomic<int> calls{0};

 private:
  scoring::ScorerService* inner_;
};

TEST_F(CoordinatorTest, ScorerReplicasShareTheCallsAndADeadOneIsPassedOver) {
  CountingScorer a(scorer_service_.get()), b(scorer_service_.get());
  auto sa = RpcServer::Start(Rpc(), {"", "scorer", {}}, {&a});
  auto sb = RpcServer::Start(Rpc(), {"", "scorer", {}}, {&b});
  ASSERT_TRUE(sa.ok() && sb.ok());
  int pushes = 0;
  RolloutPool pool({rollout_server_->InProcessChannel()}, Rpc(), {2, 0.01}, Publisher(&pushes));
  {
    // Two live replicas, 8 prompts x 2 samples in calls of at most 4 samples: 4 calls, 2 on each.
    ScorerClient scorer({(*sa)->InProcessChannel(), (*sb)->InProcessChannel()}, Rpc(), {3, 0.01}, 4);
    Coordinator c(Options(8, 2), Prompts(8), 1, &pool, &scorer);
    auto batch = c.NextBatch(0);
    ASSERT_TRUE(batch.ok()) << batch.status();
    EXPECT_EQ(batch->samples.size(), 16u);
    EXPECT_EQ(a.calls.load(), 2);
    EXPECT_EQ(b.calls.load(), 2);
  }
  {
    // The first replica is dead: every call moves to the live one, and nothing is lost.
    const int before = b.calls.load();
    ScorerClient scorer({MakeChannel(Rpc(), "127.0.0.1:1").value(), (*sb)->InProcessChannel()}, Rpc(), {3, 0.01}, 4);
    Coordinator c(Options(8, 2), Prompts(8), 1, &pool, &scorer);
    auto batch = c.NextBatch(0);
    ASSERT_TRUE(batch.ok()) << batch.status();
    EXPECT_EQ(batch->samples.size(), 16u);
    EXPECT_EQ(c.ledger().Current().dropped, 0);
    EXPECT_EQ(b.calls.load() - before, 4);
  }
  (*sa)->Shutdown();
  (*sb)->Shutdown();
}

int RefuseUnshare(int) {
  errno = EPERM;
  return -1;
}

// A scorer that refuses the code reward (no isolation on its machine: the sandbox seam refuses the
// namespaces) keeps running; the coordinator stops with its reason and hands every lease back.
TEST_F(CoordinatorTest, AScorerThatRefusesItsRewardStopsTheStepAndKeepsThePrompts) {
  const auto previous = scoring::SetSandboxUnshareForTesting(&RefuseUnshare);
  scoring::RewardConfig reward;
  reward.code_weight = 1;
  reward.code_command = "true";
  auto refusing = scoring::Scorer::Create(reward);
  scoring::SetSandboxUnshareForTesting(previous);
  ASSERT_TRUE(refusing.ok()) << refusing.status();
  ASSERT_EQ((*refusing)->code_refusal().code(), absl::StatusCode::kFailedPrecondition);
  scoring::ScorerService service(std::move(*refusing), scoring::ScorerServiceConfig{});
  auto server = RpcServer::Start(Rpc(), {"", "scorer", {}}, {&service});
  ASSERT_TRUE(server.ok()) << server.status();
  int pushes = 0;
  RolloutPool pool({rollout_server_->InProcessChannel()}, Rpc(), {2, 0.01}, Publisher(&pushes));
  ScorerClient scorer((*server)->InProcessChannel(), Rpc(), {2, 0.01});
  auto o = Options(4, 2);
  Coordinator c(o, Prompts(8), 1, &pool, &scorer);
  auto b = c.NextBatch(0);
  EXPECT_EQ(b.status().code(), absl::StatusCode::kFailedPrecondition) << b.status();
  EXPECT_NE(b.status().message().find("refusing to run it unconfined"), std::string::npos) << b.status();
  const auto n = c.ledger().Current();
  EXPECT_EQ(n.pending, 8) << "the leases went back";
  EXPECT_EQ(n.dropped, 0);
  auto health = CheckHealth((*server)->InProcessChannel(), Rpc());
  EXPECT_TRUE(health.ok()) << "the scorer still serves";
  (*server)->Shutdown();
}

TEST_F(CoordinatorTest, EvaluationCountsWhatTheScorerSays) {
  int pushes = 0;
  RolloutPool pool({rollout_server_->InProcessChannel()}, Rpc(), {3, 0.01}, Publisher(&pushes));
  ScorerClient scorer(scorer_server_->InProcessChannel(), Rpc(), {3, 0.01});
  // Make the "answer" of even prompts the model's own greedy answer: exactly those are correct.
  auto prompts = Prompts(10);
  SamplingParams greedy = Params();
  greedy.set_temperature(0);
  auto g = pool.Generate(prompts, greedy, 1, 0);
  std::set<size_t> expect_correct;
  for (size_t i = 0; i < prompts.size(); ++i) {
    ASSERT_TRUE(g.errors[i].ok());
    // The random model's text is often not valid UTF-8; an answer that JSON cannot carry is not used.
    const std::string text = g.groups[i][0].completion();
    auto answer = scoring::ExtractAnswer(text);
    std::string json_answer;
    if (answer) {
      try {
        json_answer = nlohmann::json(*answer).dump();
      } catch (const std::exception&) {
        json_answer.clear();
      }
    }
    if (i % 2 == 0 && !json_answer.empty() && scoring::AnswerMatches(text, *answer)) {
      (*prompts[i].mutable_extra())["answer"] = json_answer;
      expect_correct.insert(i);
    } else {
      (*prompts[i].mutable_extra())["answer"] = "\"no such answer\"";
    }
  }
  const int correct = static_cast<int>(expect_correct.size());
  ASSERT_GE(correct, 2);
  EvalConfig ec;
  ec.max_new_tokens = 4;
  ec.k = 2;
  ec.samples = 4;
  auto r = Evaluate(pool, scorer, prompts, ec, 0, 9);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->prompts, 10);
  EXPECT_EQ(r->correct, correct);
  for (size_t i = 0; i < 10; ++i) {
    const auto& s = r->generations[i];
    EXPECT_EQ(s.completion(), g.groups[i][0].completion()) << i;
    EXPECT_EQ(s.reward() >= 1.0f, expect_correct.count(i) == 1) << i << " '" << s.completion() << "' answer " << s.extra().at("answer");
  }
  EXPECT_DOUBLE_EQ(r->accuracy, correct / 10.0);
  EXPECT_EQ(r->errors, 0);
  ASSERT_EQ(r->generations.size(), 10u + 40u);
  // pass@2 from the sampled answers, recomputed from the generations.
  double sum = 0;
  for (size_t i = 0; i < 10; ++i) {
    int c = 0;
    for (size_t j = 0; j < 4; ++j) c += r->generations[10 + i * 4 + j].reward() >= 1.0f;
    sum += PassAtK(4, c, 2);
  }
  EXPECT_DOUBLE_EQ(r->pass_at_k, sum / 10);
  auto j = r->ToJson();
  EXPECT_EQ(j["k"], 2);
  EXPECT_LE(j["accuracy_ci95"][0].get<double>(), r->accuracy);
  EXPECT_GE(j["accuracy_ci95"][1].get<double>(), r->accuracy);
}

}  // namespace
}  // namespace rlhf::coordinator
