#include "common/rpc.h"

#include <grpcpp/create_channel.h>
#include <grpcpp/security/auth_metadata_processor.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/server_builder.h>
#include <grpcpp/support/client_interceptor.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <tuple>

#include "absl/strings/ascii.h"
#include "common/file.h"
#include "common/metrics.h"
#include "common/net.h"
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
    s->Add("tls_cert_file", &RpcConfig::tls_cert_file,
           "PEM certificate (chain) this process presents: every server's, and clients' under tls_mutual; setting it "
           "(or tls_ca_file) turns TLS on for every server and channel; \"\" = no TLS");
    s->Add("tls_key_file", &RpcConfig::tls_key_file, "PEM private key of tls_cert_file");
    s->Add("tls_ca_file", &RpcConfig::tls_ca_file,
           "PEM CA bundle clients verify servers' certificates with (and servers clients' under tls_mutual); "
           "\"\" = the system's roots");
    s->Add("tls_mutual", &RpcConfig::tls_mutual,
           "mutual TLS: servers require a client certificate signed by tls_ca_file, clients present tls_cert_file");
    s->Add("tls_server_name", &RpcConfig::tls_server_name,
           "name clients expect in servers' certificates when it differs from the host they dial (e.g. a certificate "
           "for rlhf.internal reached by IP); \"\" = the host dialled");
    s->Add("token_file", &RpcConfig::token_file,
           "file holding the bearer token: every call carries it, every server checks it before any handler runs "
           "(UNAUTHENTICATED otherwise); without TLS only loopback servers may check one; \"\" = no token. The "
           "token itself never appears in the config, a log line or a process list");
    s->Add("insecure", &RpcConfig::insecure,
           "allow servers on, and channels to, non-loopback hosts without TLS and a token (anyone who reaches them "
           "can push weights and run code rewards); the log says so");
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

double SecondsLeft(const grpc::ServerContext& ctx) {
  const auto deadline = ctx.deadline();
  if (deadline == std::chrono::system_clock::time_point::max()) return 0;
  const double left = std::chrono::duration<double>(deadline - std::chrono::system_clock::now()).count();
  return left > 0.001 ? left : 0.001;
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

// The security material of a config, read from its files.
struct Material {
  std::string cert, key, ca;  // PEM
  std::string token;          // "" = none
};

absl::StatusOr<std::string> ReadPem(const std::string& path, const std::string& key) {
  auto pem = ReadFile(path);
  if (!pem.ok()) return absl::Status(pem.status().code(), absl::StrCat(key, ": ", pem.status().message()));
  if (pem->find("-----BEGIN") == std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat(key, " '", path, "' is not a PEM file (no -----BEGIN line)"));
  }
  return pem;
}

absl::StatusOr<Material> LoadMaterial(const RpcConfig& c) {
  Material m;
  for (auto [path, key, pem] : {std::make_tuple(&c.tls_cert_file, "rpc.tls_cert_file", &m.cert),
                                 std::make_tuple(&c.tls_key_file, "rpc.tls_key_file", &m.key),
                                 std::make_tuple(&c.tls_ca_file, "rpc.tls_ca_file", &m.ca)}) {
    if (path->empty()) continue;
    ASSIGN_OR_RETURN(*pem, ReadPem(*path, key));
  }
  if (m.cert.empty() != m.key.empty()) {
    return absl::InvalidArgumentError("rpc.tls_cert_file and rpc.tls_key_file go together: set both or neither");
  }
  if (c.tls_mutual && (m.ca.empty() || m.cert.empty())) {
    return absl::InvalidArgumentError(
        "rpc.tls_mutual needs rpc.tls_ca_file (to verify peers) and rpc.tls_cert_file / rpc.tls_key_file (to be verified)");
  }
  if (!c.token_file.empty()) {
    auto t = ReadFile(c.token_file);
    if (!t.ok()) return absl::Status(t.status().code(), absl::StrCat("rpc.token_file: ", t.status().message()));
    m.token = std::string(absl::StripAsciiWhitespace(*t));
    // Never quote the file's content in an error: it is the secret.
    if (m.token.empty()) return absl::InvalidArgumentError(absl::StrCat("rpc.token_file '", c.token_file, "' is empty"));
    for (unsigned char ch : m.token) {
      if (ch < 0x21 || ch > 0x7e) {
        return absl::InvalidArgumentError(absl::StrCat(
            "rpc.token_file '", c.token_file, "': the token must be printable ASCII without spaces (e.g. `openssl rand -hex 32`)"));
      }
    }
    struct stat st {};
    static std::atomic<bool> warned{false};
    if (stat(c.token_file.c_str(), &st) == 0 && (st.st_mode & 077) != 0 && !warned.exchange(true)) {
      spdlog::warn("rpc.token_file '{}' can be read by other users of this machine (chmod 600 it)", c.token_file);
    }
  }
  return m;
}

bool SameSecret(const std::string& a, const std::string& b) {  // in time independent of where they differ
  unsigned char diff = a.size() == b.size() ? 0 : 1;
  const size_t n = std::min(a.size(), b.size());
  for (size_t i = 0; i < n; ++i) diff |= static_cast<unsigned char>(a[i] ^ b[i]);
  return diff == 0;
}

constexpr char kAuthorization[] = "authorization";

// Checks the bearer token of every call before any handler runs (the server's auth filter calls it).
class TokenProcessor final : public grpc::AuthMetadataProcessor {
 public:
  explicit TokenProcessor(const std::string& token)
      : expected_("Bearer " + token),
        refused_(Metrics::Process().Counter("rlhf_rpc_unauthenticated_total",
                                            "gRPC calls refused before any handler ran: no or a wrong bearer token")) {}
  bool IsBlocking() const override { return false; }
  grpc::Status Process(const InputMetadata& metadata, grpc::AuthContext*, OutputMetadata* consumed,
                       OutputMetadata*) override {
    auto it = metadata.find(kAuthorization);
    if (it == metadata.end() || !SameSecret(std::string(it->second.data(), it->second.size()), expected_)) {
      refused_.Increment();
      return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                          it == metadata.end() ? "no bearer token (set rpc.token_file)" : "wrong bearer token");
    }
    consumed->insert({kAuthorization, std::string(it->second.data(), it->second.size())});
    return grpc::Status::OK;
  }

 private:
  const std::string expected_;
  prometheus::Counter& refused_;
};

// Adds the bearer token to every call of a channel.
class TokenInterceptor final : public grpc::experimental::Interceptor {
 public:
  explicit TokenInterceptor(const std::string* header) : header_(header) {}
  void Intercept(grpc::experimental::InterceptorBatchMethods* m) override {
    if (m->QueryInterceptionHookPoint(grpc::experimental::InterceptionHookPoints::PRE_SEND_INITIAL_METADATA)) {
      m->GetSendInitialMetadata()->insert({kAuthorization, *header_});
    }
    m->Proceed();
  }

 private:
  const std::string* header_;
};

class TokenInterceptorFactory final : public grpc::experimental::ClientInterceptorFactoryInterface {
 public:
  explicit TokenInterceptorFactory(const std::string& token) : header_("Bearer " + token) {}
  grpc::experimental::Interceptor* CreateClientInterceptor(grpc::experimental::ClientRpcInfo*) override {
    return new TokenInterceptor(&header_);
  }

 private:
  const std::string header_;
};

// A non-loopback `host` needs TLS plus a token or mutual TLS, unless rpc.insecure.
absl::Status CheckExposure(const RpcConfig& c, const Material& m, const std::string& address, bool server) {
  const std::string host = HostOfAddress(address);
  if (IsLoopbackHost(host)) return absl::OkStatus();
  const bool guarded = c.tls() && (!m.token.empty() || c.tls_mutual);
  if (guarded) return absl::OkStatus();
  if (!c.tls() && !m.token.empty()) {  // the token would cross the network in clear, unchecked
    return absl::FailedPreconditionError(absl::StrCat(
        server ? "serving on " : "a channel to ", address,
        ": a bearer token without TLS is only used on loopback (it would travel in clear); set rpc.tls_cert_file, "
        "rpc.tls_key_file and rpc.tls_ca_file, or use a 127.0.0.1 address"));
  }
  if (!c.insecure) {
    return absl::FailedPreconditionError(absl::StrCat(
        server ? "serving on " : "a channel to ", address, " (not loopback) without ",
        c.tls() ? "a token (rpc.token_file) or mutual TLS" : "TLS and a token",
        ": anyone who reaches it could push weights or run code. Set rpc.tls_cert_file, rpc.tls_key_file, "
        "rpc.tls_ca_file and rpc.token_file, bind 127.0.0.1, or say rpc.insecure: true"));
  }
  if (server) {
    spdlog::warn("rpc.insecure: serving {} without {}: anyone who reaches it can push weights and run code rewards",
                 address, c.tls() ? "a token" : "TLS and a token");
  }
  return absl::OkStatus();
}

// Every server takes its credentials from here.
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> ServerCredentialsFor(const RpcConfig& c, const Material& m,
                                                                              const std::string& address) {
  RETURN_IF_ERROR(CheckExposure(c, m, address, true));
  std::shared_ptr<grpc::ServerCredentials> creds;
  if (c.tls()) {
    if (m.cert.empty()) {
      return absl::InvalidArgumentError("a TLS server needs rpc.tls_cert_file and rpc.tls_key_file");
    }
    grpc::SslServerCredentialsOptions o(c.tls_mutual ? GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY
                                                     : GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
    o.pem_root_certs = m.ca;
    o.pem_key_cert_pairs.push_back({m.key, m.cert});
    creds = grpc::SslServerCredentials(o);
  } else if (!m.token.empty()) {
    // Plaintext on loopback; local credentials (only loopback peers) are what lets the token be checked.
    creds = grpc::experimental::LocalServerCredentials(LOCAL_TCP);
  } else {
    return grpc::InsecureServerCredentials();
  }
  if (!m.token.empty()) creds->SetAuthMetadataProcessor(std::make_shared<TokenProcessor>(m.token));
  return creds;
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
    ASSIGN_OR_RETURN(const Material m, LoadMaterial(config));
    ASSIGN_OR_RETURN(auto creds, ServerCredentialsFor(config, m, options.address));
    builder.AddListeningPort(options.address, creds, &port);
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

absl::StatusOr<std::shared_ptr<grpc::Channel>> MakeChannel(const RpcConfig& config, const std::string& target) {
  ASSIGN_OR_RETURN(const Material m, LoadMaterial(config));
  RETURN_IF_ERROR(CheckExposure(config, m, target, false));
  grpc::ChannelArguments args;
  ApplyLimits(config, &args);
  // A peer that comes back (a restarted worker) is reached within a second, not after gRPC's default
  // reconnect backoff of up to two minutes.
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 200);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
  std::shared_ptr<grpc::ChannelCredentials> creds = grpc::InsecureChannelCredentials();
  if (config.tls()) {
    grpc::SslCredentialsOptions o;
    o.pem_root_certs = m.ca;
    if (config.tls_mutual) {
      o.pem_private_key = m.key;
      o.pem_cert_chain = m.cert;
    }
    creds = grpc::SslCredentials(o);
    if (!config.tls_server_name.empty()) args.SetSslTargetNameOverride(config.tls_server_name);
  }
  if (m.token.empty()) return grpc::CreateCustomChannel(target, creds, args);
  std::vector<std::unique_ptr<grpc::experimental::ClientInterceptorFactoryInterface>> interceptors;
  interceptors.push_back(std::make_unique<TokenInterceptorFactory>(m.token));
  return grpc::experimental::CreateCustomChannelWithInterceptors(target, creds, args, std::move(interceptors));
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
