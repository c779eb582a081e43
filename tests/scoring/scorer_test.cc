// The scorer in process and behind gRPC: composition of sources, per-sample failures, reward-model and
// reference scores equal to a direct forward of the same model on the same tokens, batching by tokens,
// 16 concurrent clients, overload and deadlines.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <future>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>

#include "common/metrics.h"
#include "common/model/checkpoint.h"
#include "common/rpc.h"
#include "rlhf/scoring.grpc.pb.h"
#include "services/scoring/scorer.h"
#include "services/scoring/service.h"
#include "tests/model/test_models.h"

namespace rlhf::scoring {
namespace {

namespace fs = std::filesystem;

// A tiny reward model and policy saved as HF folders, once per process.
struct Models {
  std::string dir, rm, policy;
  Models() {
    dir = (fs::temp_directory_path() / ("scorer-test-" + std::to_string(getpid()))).string();
    auto cfg = model::testing::Tiny("qwen2", false, 0, 60);
    cfg.head = model::Head::kSequenceClassification;
    model::Transformer r(cfg);
    r->InitWeights(4);
    rm = dir + "/rm";
    EXPECT_TRUE(model::SaveModel(*r, rm).ok());
    auto pc = model::testing::Tiny("qwen2", false, 0, 60);
    model::Transformer p(pc);
    p->InitWeights(5);
    policy = dir + "/policy";
    EXPECT_TRUE(model::SaveModel(*p, policy).ok());
  }
  ~Models() { fs::remove_all(dir); }
};
const Models& M() {
  static Models m;
  return m;
}

Sample MakeSample(int i, uint32_t seed, const std::string& completion, const std::string& answer) {
  std::mt19937 rng(seed + static_cast<uint32_t>(i));
  Sample s;
  s.set_prompt_id("p" + std::to_string(i));
  s.set_prompt_index(i);
  for (int t = 0; t < 3 + i % 5; ++t) s.add_prompt_ids(static_cast<int32_t>(3 + rng() % 50));
  for (int t = 0; t < 2 + i % 7; ++t) {
    s.add_completion_ids(static_cast<int32_t>(3 + rng() % 50));
    s.add_logprobs(-1.f - 0.1f * static_cast<float>(t));
  }
  s.set_completion(completion);
  s.set_temperature(i % 2 ? 0.7f : 1.0f);
  s.set_finish_reason(i % 3 == 0 ? FINISH_REASON_LENGTH : FINISH_REASON_STOP);
  if (!answer.empty()) (*s.mutable_extra())["answer"] = "\"" + answer + "\"";
  return s;
}

RewardConfig AllSources() {
  RewardConfig c;
  c.exact_match_weight = 1.0;
  c.format_weight = 0.5;
  c.format_pattern = R"(\\boxed\{.*\})";
  c.length_weight = 0.25;
  c.length_free_tokens = 4;
  c.length_scale_tokens = 2;
  c.missing_eos_weight = 2.0;
  c.reward_model_weight = 0.1;
  c.reward_model = M().rm;
  c.reference_model = M().policy;
  return c;
}

TEST(Scorer, ComposesSourcesWithWeights) {
  auto scorer = Scorer::Create(AllSources());
  ASSERT_TRUE(scorer.ok()) << scorer.status();
  std::vector<Sample> v = {MakeSample(0, 1, "\\boxed{12}", "12"), MakeSample(1, 1, "it is 13", "12"),
                           MakeSample(2, 1, "\\boxed{-4}", "\u22124")};
  auto out = (*scorer)->Score(v, false);
  ASSERT_TRUE(out.ok()) << out.status();
  for (size_t i = 0; i < v.size(); ++i) {
    ASSERT_TRUE((*out)[i].status.ok()) << (*out)[i].status;
    const auto& p = v[i].reward_parts();
    const double len = -std::max(0, v[i].completion_ids_size() - 4) / 2.0;
    EXPECT_FLOAT_EQ(p.at("length"), static_cast<float>(len));
    EXPECT_EQ(p.at("missing_eos"), v[i].finish_reason() == FINISH_REASON_LENGTH ? -1.f : 0.f);
    const double total = 1.0 * p.at("exact_match") + 0.5 * p.at("format") + 0.25 * p.at("length") +
                         2.0 * p.at("missing_eos") + 0.1 * p.at("reward_model");
    EXPECT_NEAR(v[i].reward(), total, 1e-5);
    EXPECT_EQ(v[i].ref_logprobs_size(), 0);  // not asked for
  }
  EXPECT_EQ(v[0].reward_parts().at("exact_match"), 1.f);
  EXPECT_EQ(v[1].reward_parts().at("exact_match"), 0.f);
  EXPECT_EQ(v[2].reward_parts().at("exact_match"), 1.f);
  EXPECT_EQ(v[0].reward_parts().at("format"), 1.f);
  EXPECT_EQ(v[1].reward_parts().at("format"), 0.f);
}

TEST(Scorer, AFailingSourceLeavesThatSampleWithoutARewardAndCountsIt) {
  auto scorer = Scorer::Create(AllSources());
  ASSERT_TRUE(scorer.ok());
  auto& failures = Metrics::Process().Counter("rlhf_reward_failures_total", "", {{"source", "exact_match"}});
  const double before = failures.Value();
  std::vector<Sample> v = {MakeSample(0, 2, "7", "7"), MakeSample(1, 2, "7", "")};  // the second has no answer
  auto out = (*scorer)->Score(v, true);
  ASSERT_TRUE(out.ok());
  EXPECT_TRUE((*out)[0].status.ok());
  EXPECT_TRUE(v[0].has_reward());
  EXPECT_EQ((*out)[1].status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE((*out)[1].status.message().find("no 'answer' field"), std::string::npos);
  EXPECT_FALSE(v[1].has_reward());
  EXPECT_TRUE(v[1].reward_parts().empty());
  EXPECT_EQ(failures.Value(), before + 1);
  // Ids outside the vocabulary: an input error for that sample.
  std::vector<Sample> w = {MakeSample(0, 2, "7", "7")};
  w[0].set_completion_ids(0, 999);
  EXPECT_EQ((*scorer)->Validate(w[0], true).code(), absl::StatusCode::kInvalidArgument);
  out = (*scorer)->Score(w, true);
  ASSERT_TRUE(out.ok());
  EXPECT_NE((*out)[0].status.message().find("outside the vocabulary"), std::string::npos);
}

TEST(Scorer, ModelScoresEqualADirectForwardOnTheSameTokens) {
  auto cfg = AllSources();
  cfg.batch_tokens = 40;  // several batches of mixed lengths and temperatures
  auto scorer = Scorer::Create(cfg);
  ASSERT_TRUE(scorer.ok());
  std::vector<Sample> v;
  for (int i = 0; i < 12; ++i) v.push_back(MakeSample(i, 3, "1", "1"));
  auto out = (*scorer)->Score(v, true);
  ASSERT_TRUE(out.ok());
  model::LoadOptions rlo;
  rlo.head = model::Head::kSequenceClassification;
  auto rm = model::LoadModel(M().rm, rlo);
  auto ref = model::LoadModel(M().policy);
  ASSERT_TRUE(rm.ok() && ref.ok());
  torch::NoGradGuard ng;
  for (const auto& s : v) {
    std::vector<int64_t> ids(s.prompt_ids().begin(), s.prompt_ids().end());
    ids.insert(ids.end(), s.completion_ids().begin(), s.completion_ids().end());
    auto t = torch::tensor(ids).unsqueeze(0);
    auto score = (*rm)->SequenceScores((*rm)->Hidden(t)).item<float>();
    EXPECT_NEAR(s.reward_parts().at("reward_model"), score, 1e-4);
    auto logits = (*ref)->Logits((*ref)->Hidden(t)).to(torch::kFloat32)[0] / s.temperature();
    auto logp = torch::log_softmax(logits, -1);
    ASSERT_EQ(s.ref_logprobs_size(), s.completion_ids_size());
    double kl = 0;
    for (int j = 0; j < s.completion_ids_size(); ++j) {
      const int64_t pos = s.prompt_ids_size() + j;
      const float want = logp[pos - 1][s.completion_ids(j)].item<float>();
      EXPECT_NEAR(s.ref_logprobs(j), want, 1e-4) << j;
      kl += s.logprobs(j) - s.ref_logprobs(j);
    }
    (void)kl;
  }
  // kl_behaviour is the mean behaviour - reference log-prob.
  double kl0 = 0;
  for (int j = 0; j < v[0].completion_ids_size(); ++j) kl0 += v[0].logprobs(j) - v[0].ref_logprobs(j);
  EXPECT_NEAR((*out)[0].kl_behaviour, kl0 / v[0].completion_ids_size(), 1e-5);
}

TEST(Scorer, RefusesConfigsWithoutSourcesOrWithBadRegexes) {
  EXPECT_EQ(Scorer::Create(RewardConfig{}).status().code(), absl::StatusCode::kInvalidArgument);
  RewardConfig c;
  c.format_weight = 1;
  c.format_pattern = "([unclosed";
  auto s = Scorer::Create(c);
  EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.status().message().find("does not compile"), std::string::npos);
}

RpcConfig Rpc() {
  RpcConfig r;
  r.deadline_seconds = 30;
  return r;
}

TEST(ScorerService, SixteenConcurrentClientsGetTheirOwnResults) {
  auto scorer = Scorer::Create(AllSources());
  ASSERT_TRUE(scorer.ok());
  ScorerServiceConfig sc;
  sc.max_wait_ms = 20;
  sc.max_batch_tokens = 400;  // merges several requests per batch
  ScorerService svc(std::move(*scorer), sc);
  auto server = RpcServer::Start(Rpc(), {"127.0.0.1:0", "scorer", nullptr}, {&svc});
  ASSERT_TRUE(server.ok()) << server.status();
  auto channel = MakeChannel(Rpc(), "127.0.0.1:" + std::to_string((*server)->port())).value();
  // The expected reply of each request, from the scorer used directly.
  auto direct = Scorer::Create(AllSources());
  ASSERT_TRUE(direct.ok());
  std::vector<std::future<std::string>> clients;
  for (int c = 0; c < 16; ++c) {
    clients.push_back(std::async(std::launch::async, [&, c]() -> std::string {
      auto stub = ::rlhf::Scorer::NewStub(channel);
      for (int round = 0; round < 3; ++round) {
        ScoreRequest req;
        req.set_want_ref_logprobs(c % 2 == 0);
        for (int i = 0; i < 1 + (c + round) % 4; ++i) {
          const int id = c * 100 + round * 10 + i;
          *req.add_samples() = MakeSample(id, 9, std::to_string(id % 7), std::to_string((id + c) % 7));
        }
        grpc::ClientContext ctx;
        SetDeadline(&ctx, Rpc());
        ScoreReply reply;
        auto st = stub->Score(&ctx, req, &reply);
        if (!st.ok()) return "client " + std::to_string(c) + ": " + st.error_message();
        if (reply.results_size() != req.samples_size()) return "wrong count";
        for (int i = 0; i < req.samples_size(); ++i) {
          const auto& got = reply.results(i).sample();
          if (got.prompt_id() != req.samples(i).prompt_id()) return "results out of order or mixed";
          if (reply.results(i).has_error()) return "unexpected error " + reply.results(i).error().message();
          const bool right = req.samples(i).completion() == nlohmann::json::parse(req.samples(i).extra().at("answer")).get<std::string>();
          if (got.reward_parts().at("exact_match") != (right ? 1.f : 0.f)) return "wrong exact match";
          if ((got.ref_logprobs_size() > 0) != req.want_ref_logprobs()) return "ref log-probs not as asked";
        }
      }
      return "";
    }));
  }
  for (auto& f : clients) EXPECT_EQ(f.get(), "");
  (*server)->Shutdown();
}

TEST(ScorerService, OverloadAnswersResourceExhaustedAndDeadlinesAreHonoured) {
  RewardConfig rc;
  rc.missing_eos_weight = 1;
  auto scorer = Scorer::Create(rc);
  ASSERT_TRUE(scorer.ok());
  ScorerServiceConfig sc;
  sc.max_queue_samples = 4;
  sc.max_wait_ms = 400;           // the first request waits for company: the queue stays full meanwhile
  sc.max_batch_tokens = 1 << 20;
  ScorerService svc(std::move(*scorer), sc);
  auto server = RpcServer::Start(Rpc(), {"127.0.0.1:0", "scorer", nullptr}, {&svc});
  ASSERT_TRUE(server.ok());
  auto stub = ::rlhf::Scorer::NewStub(MakeChannel(Rpc(), "127.0.0.1:" + std::to_string((*server)->port())).value());
  auto call = [&](int n, double deadline_s) {
    ScoreRequest req;
    for (int i = 0; i < n; ++i) *req.add_samples() = MakeSample(i, 1, "x", "");
    grpc::ClientContext ctx;
    SetDeadline(&ctx, Rpc(), deadline_s);
    ScoreReply reply;
    return stub->Score(&ctx, req, &reply).error_code();
  };
  auto first = std::async(std::launch::async, [&] { return call(4, 10); });
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  const auto start = std::chrono::steady_clock::now();
  EXPECT_EQ(call(2, 10), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::milliseconds(250));  // refused at once, no hang
  EXPECT_EQ(first.get(), grpc::StatusCode::OK);
  // A deadline shorter than the batching wait: DEADLINE_EXCEEDED, and the scorer keeps serving.
  EXPECT_EQ(call(1, 0.1), grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_EQ(call(1, 10), grpc::StatusCode::OK);
  // Bad input: INVALID_ARGUMENT.
  ScoreRequest bad;
  *bad.add_samples() = MakeSample(0, 1, "x", "");
  bad.set_want_ref_logprobs(true);  // no reference model configured
  grpc::ClientContext ctx;
  ScoreReply reply;
  EXPECT_EQ(stub->Score(&ctx, bad, &reply).error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  (*server)->Shutdown();
}

}  // namespace
}  // namespace rlhf::scoring
