// The one place that builds gRPC servers and client channels, so that limits, deadlines, keepalive and
// (later) TLS and bearer-token auth are set in one spot for every role.
//
// Every server gets the rlhf.Health service (role, serving flag, build version, policy version).
// Thread-safety: RpcServer is safe to use from any thread; Shutdown() is idempotent.
#pragma once

#include <grpcpp/channel.h>
#include <grpcpp/client_context.h>
#include <grpcpp/server.h>
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
  static const config::Section<RpcConfig>& Spec();
};

// Converts between the two status types (the codes are the same numbers).
absl::Status FromGrpc(const grpc::Status& s);
grpc::Status ToGrpc(const absl::Status& s);

// Sets the config's default deadline (or `seconds` when > 0) on a client context.
void SetDeadline(grpc::ClientContext* ctx, const RpcConfig& config, double seconds = 0);

class HealthServiceImpl;

class RpcServer {
 public:
  struct Options {
    std::string address = "127.0.0.1:0";  // host:port; port 0 picks a free port; "" = in-process only
    std::string role;                      // reported by Health
    std::function<int64_t()> policy_version;  // reported by Health; may be empty (-1 then)
  };

  // Builds and starts a server with `services` (not owned; they must outlive the server) plus Health.
  // UNAVAILABLE when the address cannot be bound.
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

// A channel to `target` ("host:port") with the config's limits and keepalive.
std::shared_ptr<grpc::Channel> MakeChannel(const RpcConfig& config, const std::string& target);

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
