#include "common/rpc.h"

#include <grpcpp/create_channel.h>

#include <algorithm>
#include <unistd.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/server_builder.h>

#include "common/metrics.h"
#include "common/version.h"
#include "rlhf/health.grpc.pb.h"

namespace rlhf {

const config::Section<RpcConfig>& RpcConfig::Spec() {
  static const auto* s = [] {
    auto* s = new config::Section<RpcConfig>("rpc");
    s->Add("max_message_bytes", &RpcConfig::max_message_bytes,
           "largest gRPC message sent or received, bytes (weight updates are chunked below it)",
           config::InRange(4096, 2147483647));
    s->Add("deadline_seconds", &RpcConfig::deadline_seconds, "default deadline of a client call, seconds",
           config::AtLeast(0.001));
    s->Add("keepalive_seconds", &RpcConfig::keepalive_seconds, "keepalive ping interval on idle connections, seconds",
           config::AtLeast(1));
    s->Add("keepalive_timeout_seconds", &RpcConfig::keepalive_timeout_seconds,
           "a keepalive ping unanswered this long closes the connection, seconds", config::AtLeast(0.1));
    return s;
  }();
  return *s;
}

absl::Status FromGrpc(const grpc::Status& s) {
  if (s.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(s.error_code()), s.error_message());
}

grpc::Status ToGrpc(const absl::Status& s) {
  if (s.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(s.code()), std::string(s.message()));
}

void SetDeadline(grpc::ClientContext* ctx, const RpcConfig& config, double seconds) {
  double d = seconds > 0 ? seconds : config.deadline_seconds;
  ctx->set_deadline(std::chrono::system_clock::now() +
                    std::chrono::microseconds(static_cast<int64_t>(d * 1e6)));
}

class HealthServiceImpl final : public Health::Service {
 public:
  HealthServiceImpl(std::string role, std::function<int64_t()> version)
      : role_(std::move(role)), version_(std::move(version)), start_(std::chrono::steady_clock::now()) {}

  grpc::Status Check(grpc::ServerContext*, const HealthRequest*, HealthReply* reply) override {
    reply->set_role(role_);
    reply->set_serving(serving_.load());
    reply->set_build_version(BuildVersion());
    reply->set_policy_version(version_ ? version_() : -1);
    reply->set_uptime_seconds(
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count());
    reply->set_pid(static_cast<int64_t>(getpid()));
    char host[256] = {0};
    if (gethostname(host, sizeof(host) - 1) == 0) reply->set_host(host);
    reply->set_metrics_port(Metrics::Process().port());
    return grpc::Status::OK;
  }
  void SetServing(bool s) { serving_.store(s); }

 private:
  std::string role_;
  std::function<int64_t()> version_;
  std::chrono::steady_clock::time_point start_;
  std::atomic<bool> serving_{true};
};

namespace {
// Channel and server arguments shared by both ends.
void ApplyLimits(const RpcConfig& c, grpc::ChannelArguments* args) {
  args->SetMaxReceiveMessageSize(static_cast<int>(c.max_message_bytes));
  args->SetMaxSendMessageSize(static_cast<int>(c.max_message_bytes));
  args->SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, static_cast<int>(c.keepalive_seconds * 1000));
  args->SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, static_cast<int>(c.keepalive_timeout_seconds * 1000));
  args->SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
}

// Where TLS / token auth will plug in: every server and channel takes its credentials from here.
std::shared_ptr<grpc::ServerCredentials> ServerCredentialsFor(const RpcConfig&) {
  return grpc::InsecureServerCredentials();
}
std::shared_ptr<grpc::ChannelCredentials> ChannelCredentialsFor(const RpcConfig&) {
  return grpc::InsecureChannelCredentials();
}
}  // namespace

absl::StatusOr<std::unique_ptr<RpcServer>> RpcServer::Start(const RpcConfig& config, const Options& options,
                                                            const std::vector<grpc::Service*>& services) {
  std::unique_ptr<RpcServer> s(new RpcServer());
  s->config_ = config;
  s->health_ = std::make_unique<HealthServiceImpl>(options.role, options.policy_version);
  grpc::ServerBuilder builder;
  int port = 0;
  if (!options.address.empty()) {
    builder.AddListeningPort(options.address, ServerCredentialsFor(config), &port);
  }
  builder.SetMaxReceiveMessageSize(static_cast<int>(config.max_message_bytes));
  builder.SetMaxSendMessageSize(static_cast<int>(config.max_message_bytes));
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, static_cast<int>(config.keepalive_seconds * 1000));
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS,
                             static_cast<int>(config.keepalive_timeout_seconds * 1000));
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS,
                             static_cast<int>(config.keepalive_seconds * 500));
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  // gRPC sets SO_REUSEPORT by default: a second server on a busy port would silently share its traffic.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  builder.RegisterService(s->health_.get());
  for (auto* svc : services) builder.RegisterService(svc);
  s->server_ = builder.BuildAndStart();
  if (!s->server_ || (!options.address.empty() && port == 0)) {
    return absl::UnavailableError(absl::StrCat("cannot start gRPC server on '", options.address,
                                               "': address in use or not local? choose another port"));
  }
  s->port_ = port;
  return s;
}

RpcServer::~RpcServer() { Shutdown(std::chrono::milliseconds(0)); }

std::shared_ptr<grpc::Channel> RpcServer::InProcessChannel() const {
  grpc::ChannelArguments args;
  ApplyLimits(config_, &args);
  return server_->InProcessChannel(args);
}

void RpcServer::SetServing(bool serving) { health_->SetServing(serving); }

void RpcServer::Shutdown(std::chrono::milliseconds grace) {
  if (shut_.exchange(true) || !server_) return;
  health_->SetServing(false);
  server_->Shutdown(std::chrono::system_clock::now() + grace);
  server_->Wait();
}

std::shared_ptr<grpc::Channel> MakeChannel(const RpcConfig& config, const std::string& target) {
  grpc::ChannelArguments args;
  ApplyLimits(config, &args);
  // A peer that comes back (a restarted worker) is reached within a second, not after gRPC's default
  // reconnect backoff of up to two minutes.
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 200);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
  return grpc::CreateCustomChannel(target, ChannelCredentialsFor(config), args);
}

absl::StatusOr<HealthInfo> CheckHealth(const std::shared_ptr<grpc::Channel>& channel, const RpcConfig& config,
                                       bool wait_for_ready, double max_seconds) {
  auto stub = Health::NewStub(channel);
  grpc::ClientContext ctx;
  SetDeadline(&ctx, config, max_seconds > 0 ? std::min(config.deadline_seconds, max_seconds) : 0);
  ctx.set_wait_for_ready(wait_for_ready);
  HealthRequest req;
  HealthReply reply;
  RETURN_IF_ERROR(FromGrpc(stub->Check(&ctx, req, &reply)));
  HealthInfo h;
  h.role = reply.role();
  h.serving = reply.serving();
  h.build_version = reply.build_version();
  h.policy_version = reply.policy_version();
  h.uptime_seconds = reply.uptime_seconds();
  h.pid = reply.pid();
  h.host = reply.host();
  h.metrics_port = reply.metrics_port();
  return h;
}

}  // namespace rlhf
