#include "common/rpc.h"

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <thread>

#include "rlhf/scoring.grpc.pb.h"

namespace rlhf {
namespace {

// Echoes samples back with reward = number of completion tokens; sleeps when asked (seed = milliseconds).
class EchoScorer final : public Scorer::Service {
 public:
  grpc::Status Score(grpc::ServerContext*, const ScoreRequest* req, ScoreReply* reply) override {
    for (const auto& s : req->samples()) {
      if (s.seed() > 0) std::this_thread::sleep_for(std::chrono::milliseconds(s.seed()));
      auto* r = reply->add_results();
      *r->mutable_sample() = s;
      r->mutable_sample()->set_reward(static_cast<float>(s.completion_ids_size()));
    }
    return grpc::Status::OK;
  }
};

RpcConfig SmallConfig() {
  RpcConfig c;
  c.max_message_bytes = 64 << 10;
  c.deadline_seconds = 5;
  return c;
}

TEST(Rpc, ServesHealthOverTcpAndInProcess) {
  EchoScorer echo;
  RpcServer::Options o;
  o.role = "scorer";
  o.policy_version = [] { return int64_t{12}; };
  auto server = RpcServer::Start(SmallConfig(), o, {&echo});
  ASSERT_TRUE(server.ok()) << server.status();
  ASSERT_GT((*server)->port(), 0);
  auto tcp = MakeChannel(SmallConfig(), "127.0.0.1:" + std::to_string((*server)->port()));
  auto h = CheckHealth(tcp, SmallConfig());
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_EQ(h->role, "scorer");
  EXPECT_TRUE(h->serving);
  EXPECT_EQ(h->policy_version, 12);
  EXPECT_EQ(h->pid, static_cast<int64_t>(getpid())) << "Health says which process answers";
  EXPECT_FALSE(h->host.empty());
  EXPECT_FALSE(h->build_version.empty());
  (*server)->SetServing(false);
  auto in = CheckHealth((*server)->InProcessChannel(), SmallConfig());
  ASSERT_TRUE(in.ok()) << in.status();
  EXPECT_FALSE(in->serving);

  auto stub = Scorer::NewStub((*server)->InProcessChannel());
  ScoreRequest req;
  auto* s = req.add_samples();
  s->add_completion_ids(1);
  s->add_completion_ids(2);
  ScoreReply reply;
  grpc::ClientContext ctx;
  SetDeadline(&ctx, SmallConfig());
  ASSERT_TRUE(stub->Score(&ctx, req, &reply).ok());
  ASSERT_EQ(reply.results_size(), 1);
  EXPECT_EQ(reply.results(0).sample().reward(), 2.0f);
  (*server)->Shutdown();
  (*server)->Shutdown();  // idempotent
}

TEST(Rpc, MessageSizeLimitAndDeadlinesApply) {
  EchoScorer echo;
  auto server = RpcServer::Start(SmallConfig(), {"127.0.0.1:0", "scorer", nullptr}, {&echo});
  ASSERT_TRUE(server.ok()) << server.status();
  auto stub = Scorer::NewStub(MakeChannel(SmallConfig(), "127.0.0.1:" + std::to_string((*server)->port())));
  {
    ScoreRequest big;
    auto* s = big.add_samples();
    for (int i = 0; i < 40000; ++i) s->add_completion_ids(i);  // ~120 KiB > 64 KiB
    ScoreReply reply;
    grpc::ClientContext ctx;
    SetDeadline(&ctx, SmallConfig());
    auto st = FromGrpc(stub->Score(&ctx, big, &reply));
    EXPECT_EQ(st.code(), absl::StatusCode::kResourceExhausted) << st;
  }
  {
    ScoreRequest slow;
    slow.add_samples()->set_seed(800);
    ScoreReply reply;
    grpc::ClientContext ctx;
    SetDeadline(&ctx, SmallConfig(), 0.1);
    auto st = FromGrpc(stub->Score(&ctx, slow, &reply));
    EXPECT_EQ(st.code(), absl::StatusCode::kDeadlineExceeded) << st;
  }
}

TEST(Rpc, BusyPortIsAClearError) {
  EchoScorer echo;
  auto a = RpcServer::Start(SmallConfig(), {"127.0.0.1:0", "a", nullptr}, {&echo});
  ASSERT_TRUE(a.ok());
  EchoScorer echo2;
  auto b = RpcServer::Start(SmallConfig(), {"127.0.0.1:" + std::to_string((*a)->port()), "b", nullptr}, {&echo2});
  ASSERT_FALSE(b.ok());
  EXPECT_EQ(b.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_NE(b.status().message().find("choose another port"), std::string::npos);
}

TEST(Rpc, StatusCodesMapBothWays) {
  for (auto code : {absl::StatusCode::kUnavailable, absl::StatusCode::kAborted, absl::StatusCode::kInvalidArgument,
                    absl::StatusCode::kFailedPrecondition, absl::StatusCode::kResourceExhausted}) {
    absl::Status s(code, "m");
    EXPECT_EQ(FromGrpc(ToGrpc(s)), s);
  }
  EXPECT_TRUE(FromGrpc(grpc::Status::OK).ok());
}

}  // namespace
}  // namespace rlhf
