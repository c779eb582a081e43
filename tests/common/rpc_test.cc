#include "common/rpc.h"

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <thread>

#include "common/metrics.h"
#include "rlhf/scoring.grpc.pb.h"
#include "tests/test_util.h"

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
  auto tcp = MakeChannel(SmallConfig(), "127.0.0.1:" + std::to_string((*server)->port())).value();
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
  auto stub = Scorer::NewStub(MakeChannel(SmallConfig(), "127.0.0.1:" + std::to_string((*server)->port())).value());
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

namespace rlhf {
namespace {

// ---- TLS, mutual TLS and the bearer token --------------------------------------------------------------------

// Counts the calls that reached its handler.
class CountingScorer final : public Scorer::Service {
 public:
  grpc::Status Score(grpc::ServerContext*, const ScoreRequest*, ScoreReply*) override {
    ++calls;
    return grpc::Status::OK;
  }
  std::atomic<int> calls{0};
};

// Certificates made once by tests/make_test_certs.sh (openssl) in a temporary folder.
class RpcSecurity : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    char tmpl[] = "/tmp/rlhf-rpc-certs-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    auto r = testing::RunCommand("bash " RLHF_SOURCE_DIR "/tests/make_test_certs.sh " + dir_);
    ASSERT_EQ(r.code, 0) << r.out;
  }
  static void TearDownTestSuite() { std::filesystem::remove_all(dir_); }

  static std::string F(const std::string& name) { return dir_ + "/" + name; }
  static RpcConfig Tls(bool mutual = false) {
    RpcConfig c = SmallConfig();
    c.tls_cert_file = F("server.pem");
    c.tls_key_file = F("server.key");
    c.tls_ca_file = F("ca.pem");
    c.tls_mutual = mutual;
    c.token_file = F("token");
    return c;
  }
  static RpcConfig TokenOnly(const std::string& token = "token") {
    RpcConfig c = SmallConfig();
    c.token_file = F(token);
    return c;
  }
  // One Score call through a channel made from `client` to `port`.
  static absl::Status Call(const RpcConfig& client, int port, const std::string& host = "127.0.0.1") {
    auto channel = MakeChannel(client, host + ":" + std::to_string(port));
    if (!channel.ok()) return channel.status();
    auto stub = Scorer::NewStub(*channel);
    ScoreRequest req;
    ScoreReply reply;
    grpc::ClientContext ctx;
    SetDeadline(&ctx, client, 5);
    return FromGrpc(stub->Score(&ctx, req, &reply));
  }
  static double Refused() {
    const std::string text = Metrics::Process().Text();
    const std::string name = "rlhf_rpc_unauthenticated_total ";
    auto at = text.find("\n" + name);
    return at == std::string::npos ? 0 : std::stod(text.substr(at + 1 + name.size()));
  }
  static std::string dir_;
};
std::string RpcSecurity::dir_;

TEST_F(RpcSecurity, NoTokenOrAWrongTokenIsUnauthenticatedBeforeAnyHandlerRuns) {
  CountingScorer svc;
  auto server = RpcServer::Start(TokenOnly(), {"127.0.0.1:0", "scorer", nullptr}, {&svc});
  ASSERT_TRUE(server.ok()) << server.status();
  const int port = (*server)->port();
  const double refused = Refused();
  auto none = Call(SmallConfig(), port);
  EXPECT_EQ(none.code(), absl::StatusCode::kUnauthenticated) << none;
  auto wrong = Call(TokenOnly("wrong-token"), port);
  EXPECT_EQ(wrong.code(), absl::StatusCode::kUnauthenticated) << wrong;
  EXPECT_EQ(wrong.message().find(testing::ReadFile(F("token")).substr(0, 16)), std::string::npos)
      << "the error never quotes the token";
  EXPECT_EQ(svc.calls.load(), 0) << "no handler ran";
  EXPECT_EQ(Refused() - refused, 2) << "both refusals counted";
  // Health too: only the right token gets in.
  auto h = CheckHealth(MakeChannel(SmallConfig(), "127.0.0.1:" + std::to_string(port)).value(), SmallConfig());
  EXPECT_EQ(h.status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_TRUE(CheckHealth(MakeChannel(TokenOnly(), "127.0.0.1:" + std::to_string(port)).value(), TokenOnly()).ok());
  ASSERT_TRUE(Call(TokenOnly(), port).ok());
  EXPECT_EQ(svc.calls.load(), 1);
  // The in-process channel of the embedded mode needs no token (same address space).
  auto stub = Scorer::NewStub((*server)->InProcessChannel());
  ScoreRequest req;
  ScoreReply reply;
  grpc::ClientContext ctx;
  EXPECT_TRUE(stub->Score(&ctx, req, &reply).ok());
}

TEST_F(RpcSecurity, ATlsServerRefusesPlaintextClientsAndServesTlsOnes) {
  CountingScorer svc;
  auto server = RpcServer::Start(Tls(), {"127.0.0.1:0", "scorer", nullptr}, {&svc});
  ASSERT_TRUE(server.ok()) << server.status();
  const int port = (*server)->port();
  EXPECT_EQ(Call(TokenOnly(), port).code(), absl::StatusCode::kUnavailable) << "plaintext to a TLS server";
  RpcConfig no_token = Tls();
  no_token.token_file.clear();
  EXPECT_EQ(Call(no_token, port).code(), absl::StatusCode::kUnauthenticated) << "TLS without the token";
  RpcConfig other_ca = Tls();
  other_ca.tls_ca_file = F("other-ca.pem");
  EXPECT_EQ(Call(other_ca, port).code(), absl::StatusCode::kUnavailable) << "a server the client's CA did not sign";
  EXPECT_EQ(svc.calls.load(), 0);
  auto ok = Call(Tls(), port);
  EXPECT_TRUE(ok.ok()) << ok;
  // A certificate for another name is accepted only when the client says which name to expect.
  RpcConfig named = Tls();
  named.tls_server_name = "rlhf.test";
  EXPECT_TRUE(Call(named, port).ok());
  named.tls_server_name = "elsewhere.test";
  EXPECT_EQ(Call(named, port).code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(svc.calls.load(), 2);
}

TEST_F(RpcSecurity, MutualTlsRefusesClientsWithoutACertificateOfItsCa) {
  CountingScorer svc;
  auto server = RpcServer::Start(Tls(/*mutual=*/true), {"127.0.0.1:0", "scorer", nullptr}, {&svc});
  ASSERT_TRUE(server.ok()) << server.status();
  const int port = (*server)->port();
  RpcConfig no_cert = Tls();  // verifies the server but presents nothing
  EXPECT_EQ(Call(no_cert, port).code(), absl::StatusCode::kUnavailable);
  RpcConfig intruder = Tls(true);
  intruder.tls_cert_file = F("other-client.pem");
  intruder.tls_key_file = F("other-client.key");
  EXPECT_EQ(Call(intruder, port).code(), absl::StatusCode::kUnavailable) << "a client certificate of another CA";
  EXPECT_EQ(svc.calls.load(), 0);
  RpcConfig client = Tls(true);
  client.tls_cert_file = F("client.pem");
  client.tls_key_file = F("client.key");
  auto ok = Call(client, port);
  EXPECT_TRUE(ok.ok()) << ok;
  EXPECT_TRUE(Call(Tls(true), port).ok()) << "a node certificate serves and dials";
  EXPECT_EQ(svc.calls.load(), 2);
}

TEST_F(RpcSecurity, BeyondLoopbackNeedsTlsAndATokenUnlessInsecure) {
  CountingScorer svc;
  auto open = RpcServer::Start(SmallConfig(), {"0.0.0.0:0", "scorer", nullptr}, {&svc});
  ASSERT_EQ(open.status().code(), absl::StatusCode::kFailedPrecondition) << open.status();
  EXPECT_NE(open.status().message().find("rpc.insecure"), std::string::npos) << open.status();
  auto token_in_clear = RpcServer::Start(TokenOnly(), {"0.0.0.0:0", "scorer", nullptr}, {&svc});
  EXPECT_EQ(token_in_clear.status().code(), absl::StatusCode::kFailedPrecondition);
  RpcConfig tls_no_token = Tls();
  tls_no_token.token_file.clear();
  EXPECT_EQ(RpcServer::Start(tls_no_token, {"0.0.0.0:0", "scorer", nullptr}, {&svc}).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(RpcServer::Start(Tls(), {"0.0.0.0:0", "scorer", nullptr}, {&svc}).ok());
  RpcConfig mutual = Tls(true);
  mutual.token_file.clear();
  EXPECT_TRUE(RpcServer::Start(mutual, {"0.0.0.0:0", "scorer", nullptr}, {&svc}).ok()) << "mutual TLS authenticates";
  RpcConfig insecure = SmallConfig();
  insecure.insecure = true;
  EXPECT_TRUE(RpcServer::Start(insecure, {"0.0.0.0:0", "scorer", nullptr}, {&svc}).ok());
  // Channels follow the same rule.
  EXPECT_EQ(MakeChannel(SmallConfig(), "10.1.2.3:50051").status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(MakeChannel(insecure, "10.1.2.3:50051").ok());
  EXPECT_TRUE(MakeChannel(Tls(), "10.1.2.3:50051").ok());
  EXPECT_TRUE(MakeChannel(SmallConfig(), "localhost:50051").ok());
}

TEST_F(RpcSecurity, BadMaterialIsAClearErrorThatNeverQuotesTheToken) {
  RpcConfig missing = SmallConfig();
  missing.token_file = F("no-such-file");
  EXPECT_FALSE(MakeChannel(missing, "127.0.0.1:1").ok());
  const std::string secret = "s3cret token with a space";
  std::ofstream(F("spaced")) << secret;
  RpcConfig spaced = SmallConfig();
  spaced.token_file = F("spaced");
  auto bad = MakeChannel(spaced, "127.0.0.1:1");
  ASSERT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(bad.status().message().find("s3cret"), std::string::npos) << bad.status();
  RpcConfig not_pem = Tls();
  not_pem.tls_ca_file = F("token");
  EXPECT_EQ(MakeChannel(not_pem, "127.0.0.1:1").status().code(), absl::StatusCode::kInvalidArgument);
  RpcConfig half = Tls();
  half.tls_key_file.clear();
  EXPECT_EQ(MakeChannel(half, "127.0.0.1:1").status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace rlhf
