// The one place that builds gRPC servers and client channels, so that limits, deadlines, keepalive, TLS
// and bearer-token auth are set in one spot for every role.
//
// Security (rpc.* keys, material read from files, never from the config itself):
//   - TLS is on when rpc.tls_cert_file or rpc.tls_ca_file is set: servers present tls_cert_file/tls_key_file,
//     clients verify them against tls_ca_file (the system's roots when empty); with rpc.tls_mutual servers
//     also require a client certificate signed by tls_ca_file, and clients present their own certificate.
//   - rpc.token_file: every call carries "authorization: Bearer <token>" and every server checks it in an
//     AuthMetadataProcessor before any handler runs (UNAUTHENTICATED otherwise, counted in
//     rlhf_rpc_unauthenticated_total). Without TLS the token is checked on loopback servers only.
//   - A server on, or a channel to, a host that is not loopback needs TLS and a token (or mutual TLS),
//     unless rpc.insecure says otherwise (then the log says so).
//   - In-process channels (the embedded single-process mode) carry no credentials: same address space.
//
// Every server gets the rlhf.Health service (role, serving flag, build version, policy version).
// Thread-safety: RpcServer is safe to use from any thread; Shutdown() is idempotent.
#pragma once

#include <grpcpp/channel.h>
#include <grpcpp/client_context.h>
#include <grpcpp/server.h>
#include <grpcpp/server_context.h>
#include <grpcpp/support/status.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "common/config/config.h"
#include "common/status.h"

namespace rlhf {

struct RpcConfig {
  int64_t max_message_bytes = 64 << 20;  // largest message sent or received, bytes (weights go in chunks)
  double deadline_seconds = 60.0;        // default deadline of a client call
  double keepalive_seconds = 30.0;       // interval of keepalive pings on idle connections
  double keepalive_timeout_seconds = 10.0;  // a ping unanswered this long closes the connection
  std::string tls_cert_file;  // PEM certificate (chain) this process presents; "" = no TLS unless tls_ca_file
  std::string tls_key_file;   // PEM private key of tls_cert_file
  std::string tls_ca_file;    // PEM CA bundle that verifies peers' certificates; "" = the system's roots
  bool tls_mutual = false;    // servers require a client certificate signed by tls_ca_file
  std::string tls_server_name;  // name expected in servers' certificates when it differs from the host dialled
  std::string token_file;     // file holding the bearer token every call carries and every server checks
  bool insecure = false;      // allow plaintext / unauthenticated servers and channels beyond loopback
  bool tls() const { return !tls_cert_file.empty() || !tls_ca_file.empty(); }
  static const config::Section<RpcConfig>& Spec();
};

// Converts between the two status types (the codes are the same numbers).
absl::Status FromGrpc(const grpc::Status& s);
grpc::Status ToGrpc(const absl::Status& s);

// Sets the config's default deadline (or `seconds` when > 0) on a client context.
void SetDeadline(grpc::ClientContext* ctx, const RpcConfig& config, double seconds = 0);

// Seconds left before the caller of a server call gives up (at least 0.001); 0 when it set no deadline.
// A handler that waits on something (a group to form) waits no longer than this.
double SecondsLeft(const grpc::ServerContext& ctx);

class HealthServiceImpl;

class RpcServer {
 public:
  struct Options {
    std::string address = "127.0.0.1:0";  // host:port; port 0 picks a free port; "" = in-process only
    std::string role;                      // reported by Health
    std::function<int64_t()> policy_version;  // reported by Health; may be empty (-1 then)
  };

  // Builds and starts a server with `services` (not owned; they must outlive the server) plus Health.
  // UNAVAILABLE when the address cannot be bound; FAILED_PRECONDITION when the address is beyond loopback
  // without TLS and a token (or mutual TLS) and rpc.insecure is not set; file errors for the TLS or token
  // material.
  static absl::StatusOr<std::unique_ptr<RpcServer>> Start(const RpcConfig& config, const Options& options,
                                                          const std::vector<grpc::Service*>& services);
  ~RpcServer();

  // Port it listens on (0 when in-process only).
  int port() const { return port_; }
  // A channel that talks to this server without a socket (the embedded single-process mode).
  std::shared_ptr<grpc::Channel> InProcessChannel() const;
  // Marks the server serving or not (Health reports it).
  void SetServing(bool serving);
  // Stops accepting calls and waits up to `grace` for calls in flight.
  void Shutdown(std::chrono::milliseconds grace = std::chrono::milliseconds(2000));

 private:
  RpcServer() = default;
  RpcConfig config_;
  std::unique_ptr<HealthServiceImpl> health_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
  std::atomic<bool> shut_{false};
};

// A channel to `target` ("host:port") with the config's limits, keepalive, credentials and token.
// INVALID_ARGUMENT / NOT_FOUND when the TLS or token files cannot be read; FAILED_PRECONDITION when the
// target is beyond loopback without TLS and rpc.insecure is not set.
absl::StatusOr<std::shared_ptr<grpc::Channel>> MakeChannel(const RpcConfig& config, const std::string& target);

// Calls rlhf.Health/Check on `channel`.
struct HealthInfo {
  std::string role;
  bool serving = false;
  std::string build_version;
  int64_t policy_version = -1;
  double uptime_seconds = 0;
  int64_t pid = 0;
  std::string host;
  int metrics_port = 0;
};
// With `wait_for_ready` the call waits (up to the deadline) for a channel that is reconnecting instead of
// failing at once. `max_seconds` > 0 shortens the deadline to at most that (a probe).
absl::StatusOr<HealthInfo> CheckHealth(const std::shared_ptr<grpc::Channel>& channel, const RpcConfig& config,
                                       bool wait_for_ready = false, double max_seconds = 0);

}  // namespace rlhf
