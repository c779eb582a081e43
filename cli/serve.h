// The serving roles as functions, for `rlhf serve rollout|scorer` and for `rlhf run`'s ranks.
#pragma once

#include <functional>
#include <string>

#include "common/config/config.h"
#include "common/status.h"

namespace rlhf::cli {

// Serves `model` as a rollout worker (rollout.*, rpc.* keys of `config`) on `address` until SIGINT or SIGTERM;
// `started(port)` once it serves (its error stops the server and is returned).
absl::Status ServeRollout(const config::Config& config, const std::string& model, const std::string& address,
                          const std::function<absl::Status(int port)>& started);
// Serves the scorer (reward.*, scorer.*, rpc.* keys) on `address` until SIGINT or SIGTERM.
absl::Status ServeScorer(const config::Config& config, const std::string& address,
                         const std::function<absl::Status(int port)>& started);

}  // namespace rlhf::cli
