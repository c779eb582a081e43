#include "services/coordinator/weight_plane.h"

#include <spdlog/spdlog.h>

#include <chrono>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/metrics.h"
#include "common/net.h"

namespace rlhf::coordinator {

namespace {

double Seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Runs every call at once (members of one collective must all be in it) and gathers the failures.
// calls[0] is the learner's, calls[i] that of rollout worker members[i - 1].
absl::Status All(std::vector<std::function<absl::Status()>> calls, const std::vector<size_t>& members,
                 const std::string& what) {
  std::vector<absl::Status> results(calls.size());
  std::vector<std::thread> threads;
  for (size_t i = 0; i < calls.size(); ++i) threads.emplace_back([&, i] { results[i] = calls[i](); });
  for (auto& t : threads) t.join();
  std::vector<std::string> failed;
  absl::StatusCode code = absl::StatusCode::kOk;
  for (size_t i = 0; i < results.size(); ++i) {
    if (results[i].ok()) continue;
    // The first cause wins: a member that timed out because another failed says less.
    if (code == absl::StatusCode::kOk) code = results[i].code();
    failed.push_back(absl::StrCat(i == 0 ? "learner" : absl::StrCat("rollout worker ", members[i - 1]), ": ",
                                  results[i].message()));
  }
  if (failed.empty()) return absl::OkStatus();
  return absl::Status(code, absl::StrCat(what, " failed; ", absl::StrJoin(failed, "; ")));
}

}  // namespace

const config::Section<WeightsConfig>& WeightsConfig::Spec() {
  static const auto* s = [] {
    using W = WeightsConfig;
    auto* s = new config::Section<W>("weights");
    s->Add("transport", &W::transport,
           "how rollout workers get the learner's weights: auto (collective when the workers are other processes, "
           "else grpc) | grpc (chunks relayed through the coordinator) | collective (a c10d broadcast group)",
           config::OneOf({"auto", "grpc", "collective"}));
    s->Add("bucket_bytes", &W::bucket_bytes, "collective: tensors are flattened into buckets of at most this many bytes",
           config::AtLeast(1024));
    s->Add("checksum", &W::checksum, "collective: a checksum per bucket, verified before the new weights swap in");
    s->Add("timeout_seconds", &W::timeout_seconds,
           "collective: forming the weight group and each sync end within this (a hung worker fails the sync); at most an hour",
           config::InRange(1, 3600));
    s->Add("store_host", &W::store_host,
           "collective: the rendezvous store's address as the learner and workers reach it; \"\" = loopback when "
           "every role is on loopback, else this host's name");
    s->Add("store_port", &W::store_port, "collective: the rendezvous store's port; 0 = a free port",
           config::InRange(0, 65535));
    s->Add("backend", &W::backend, "collective: auto (nccl with CUDA builds, else gloo) | gloo | nccl",
           config::OneOf({"auto", "gloo", "nccl"}));
    return s;
  }();
  return *s;
}

std::string AdvertisedStoreHost(const WeightsConfig& config, const std::vector<std::string>& addresses) {
  if (!config.store_host.empty()) return config.store_host;
  for (const auto& a : addresses) {
    const auto colon = a.rfind(':');
    const std::string host = colon == std::string::npos ? a : a.substr(0, colon);
    if (!host.empty() && !IsLoopbackHost(host)) return comm::HostName();
  }
  return "127.0.0.1";
}

absl::StatusOr<std::unique_ptr<CollectiveWeights>> CollectiveWeights::Start(
    const WeightsConfig& config, const std::string& advertise, LearnerClient& learner,
    std::vector<std::shared_ptr<grpc::Channel>> workers, RpcConfig rpc, RetryPolicy retry) {
  std::unique_ptr<CollectiveWeights> c(new CollectiveWeights(config, learner, rpc, retry));
  c->channels_ = workers;
  ASSIGN_OR_RETURN(c->store_, comm::Store::Host(advertise.empty() ? "127.0.0.1" : advertise,
                                                static_cast<int>(config.store_port), config.timeout_seconds));
  for (const auto& ch : workers) c->workers_.push_back(Rollout::NewStub(ch));
  spdlog::info("weights: collective, rendezvous store {}:{}, {} rollout worker{}, buckets of {} bytes, checksums {}",
               c->store_->host(), c->store_->port(), workers.size(), workers.size() == 1 ? "" : "s",
               config.bucket_bytes, config.checksum ? "on" : "off");
  return c;
}

CollectiveWeights::~CollectiveWeights() {
  if (generation_ == 0) return;
  (void)learner_.LeaveWeightGroup(generation_, 2);
  for (size_t w : members_) {
    WeightSyncRequest req;
    req.set_generation(generation_);
    grpc::ClientContext ctx;
    SetDeadline(&ctx, rpc_, 2);
    UpdateWeightsReply reply;
    (void)workers_[w]->LeaveWeightGroup(&ctx, req, &reply);
  }
}

absl::Status CollectiveWeights::Form(const std::vector<size_t>& members) {
  formed_ = false;
  // Every worker must answer before any member starts waiting for the others in the group. A worker that
  // is still starting refuses connections at once (tried again with the retries); one that does not answer
  // within a few seconds is hung.
  for (size_t w : members) {
    absl::Status last;
    for (int64_t attempt = 0; attempt < std::max<int64_t>(1, retry_.max_attempts); ++attempt) {
      if (attempt > 0) Backoff(retry_, attempt - 1);
      last = CheckHealth(channels_[w], rpc_, /*wait_for_ready=*/true, /*max_seconds=*/5).status();
      if (last.ok() || last.code() == absl::StatusCode::kDeadlineExceeded) break;
    }
    if (!last.ok()) {
      return absl::Status(last.code(), absl::StrCat("weight group: rollout worker ", w, " does not answer: ", last.message()));
    }
  }
  ++generation_;
  WeightGroupSpec spec;
  spec.set_store_host(store_->host());
  spec.set_store_port(store_->port());
  spec.set_generation(generation_);
  spec.set_size(static_cast<int32_t>(members.size() + 1));
  spec.set_timeout_seconds(config_.timeout_seconds);
  spec.set_bucket_bytes(config_.bucket_bytes);
  spec.set_checksum(config_.checksum);
  spec.set_backend(config_.backend == "auto" ? comm::DefaultBackend() : config_.backend);
  const double deadline = CallDeadline();
  std::vector<std::function<absl::Status()>> calls;
  calls.push_back([&, spec]() mutable {
    spec.set_rank(0);
    return learner_.JoinWeightGroup(spec, deadline).status();
  });
  for (size_t i = 0; i < members.size(); ++i) {
    const size_t w = members[i];
    calls.push_back([&, spec, i, w]() mutable {
      spec.set_rank(static_cast<int32_t>(i + 1));
      grpc::ClientContext ctx;
      SetDeadline(&ctx, rpc_, deadline);
      WeightGroupReply reply;
      return FromGrpc(workers_[w]->JoinWeightGroup(&ctx, spec, &reply));
    });
  }
  RETURN_IF_ERROR(All(std::move(calls), members, absl::StrCat("forming weight group generation ", generation_)));
  formed_ = true;
  members_ = members;
  spdlog::info("weights: group generation {} formed: the learner and rollout worker{} {}", generation_,
               members.size() == 1 ? "" : "s", absl::StrJoin(members, ", "));
  return absl::OkStatus();
}

absl::Status CollectiveWeights::Sync(int64_t version, const std::vector<size_t>& members) {
  auto& reg = Metrics::Process();
  auto failed = [&reg](absl::Status s) {
    reg.Counter("rlhf_weight_sync_failures_total", "weight syncs that failed").Increment();
    return s;
  };
  if (!formed_ || members != members_) {
    if (auto s = Form(members); !s.ok()) return failed(s);
  }
  const double t0 = Seconds();
  const double deadline = CallDeadline();
  int64_t bytes = 0;
  std::vector<std::function<absl::Status()>> calls;
  calls.push_back([&]() -> absl::Status {
    ASSIGN_OR_RETURN(auto r, learner_.BroadcastWeights(version, generation_, deadline));
    bytes = r.bytes();
    return absl::OkStatus();
  });
  for (size_t w : members) {
    calls.push_back([&, w]() -> absl::Status {
      WeightSyncRequest req;
      req.set_version(version);
      req.set_generation(generation_);
      grpc::ClientContext ctx;
      SetDeadline(&ctx, rpc_, deadline);
      UpdateWeightsReply reply;
      return FromGrpc(workers_[w]->ReceiveWeights(&ctx, req, &reply));
    });
  }
  auto s = All(std::move(calls), members, absl::StrCat("weight sync of version ", version, " (group generation ", generation_, ")"));
  if (!s.ok()) {
    formed_ = false;  // out of step: the next sync forms a new generation
    return failed(s);
  }
  const double seconds = Seconds() - t0;
  reg.Histogram("rlhf_weight_sync_duration_seconds", "time of one weight sync (grpc: to one worker; collective: to all)", {0.01, 0.1, 1, 10, 100}).Observe(seconds);
  reg.Counter("rlhf_weight_sync_bytes_total", "bytes sent to each rollout worker by weight syncs")
      .Increment(static_cast<double>(bytes));
  spdlog::debug("weights: version {} to {} workers, {} bytes each, {:.3f} s", version, members.size(), bytes, seconds);
  return absl::OkStatus();
}

}  // namespace rlhf::coordinator
