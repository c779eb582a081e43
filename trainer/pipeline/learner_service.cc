#include "trainer/pipeline/learner_service.h"

#include <spdlog/spdlog.h>

#include <nlohmann/json.hpp>

#include <atomic>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "trainer/batching.h"
#include "trainer/pipeline/stage.h"

namespace rlhf::trainer {

namespace {
// What rank 0 tells the other ranks: one byte, then the payload.
constexpr char kKeepAlive = 'K', kTrain = 'T', kCheckpoint = 'C', kFinish = 'F', kAbort = 'A';
constexpr absl::Duration kKeepAliveEvery = absl::Seconds(5);
}  // namespace

class LearnerServer final : public rlhf::Learner::Service {
 public:
  LearnerServer(comm::Group& group, LearnerHooks hooks) : group_(group), hooks_(std::move(hooks)) {
    version_ = hooks_.version;
    checkpoint_step_ = hooks_.version;  // a resumed learner is at its checkpoint; a fresh one at 0
    extra_json_ = hooks_.extra_json;
  }

  int64_t version() const { return version_.load(); }

  // Rank 0: blocks until Finish has been answered, the learner failed or Stop; sends keep-alives meanwhile.
  absl::Status Wait() {
    absl::MutexLock lock(&mu_);
    while (!finished_ && error_.ok()) {
      if (cv_.WaitWithTimeout(&mu_, kKeepAliveEvery)) {
        auto s = comm::BroadcastBytes(group_, std::string(1, kKeepAlive));
        if (!s.ok()) error_ = s.status();
      }
    }
    return error_;
  }

  void Stop(const absl::Status& why) {
    absl::MutexLock lock(&mu_);
    if (finished_ || !error_.ok()) return;
    error_ = why;
    (void)comm::BroadcastBytes(group_, std::string(1, kAbort) + std::string(why.message()));
    cv_.SignalAll();
  }

  grpc::Status State(grpc::ServerContext*, const LearnerStateRequest*, LearnerStateReply* reply) override {
    reply->set_stage(hooks_.stage);
    reply->set_version(version_.load());
    reply->set_group_size(hooks_.group_size);
    reply->set_ranks(group_.size());
    absl::MutexLock lock(&mu_);
    reply->set_extra_json(extra_json_);
    reply->set_checkpoint_step(checkpoint_step_);
    return grpc::Status::OK;
  }

  grpc::Status Train(grpc::ServerContext*, const TrainRequest* req, TrainReply* reply) override {
    absl::MutexLock lock(&mu_);
    if (auto closed = Closed(); !closed.ok()) return ToGrpc(closed);
    if (req->step() != version_.load()) {
      return ToGrpc(absl::FailedPreconditionError(absl::StrCat("the learner is at version ", version_.load(),
                                                               "; this batch is for step ", req->step())));
    }
    const int64_t g = hooks_.group_size;
    const int64_t groups = req->samples_size() / g;
    if (req->samples_size() == 0 || req->samples_size() % g != 0 || groups < group_.size()) {
      return ToGrpc(absl::InvalidArgumentError(absl::StrCat(
          "a batch must hold whole groups of ", g, " samples, at least one group per learner rank (", group_.size(),
          "); got ", req->samples_size(), " samples")));
    }
    // A batch the update cannot use is refused here, before the ranks start: the learner serves on.
    if (hooks_.check) {
      if (auto ok = hooks_.check({req->samples().begin(), req->samples().end()}); !ok.ok()) return ToGrpc(ok);
    }
    MaybeSlowTrain();
    auto m = Run(std::string(1, kTrain) + req->SerializeAsString());
    if (!m.ok()) return ToGrpc(m.status());
    version_.fetch_add(1);
    reply->set_version(version_.load());
    for (const auto& [k, v] : *m) (*reply->mutable_metrics())[k] = v;
    return grpc::Status::OK;
  }

  grpc::Status Weights(grpc::ServerContext*, const WeightsRequest* req, grpc::ServerWriter<WeightChunk>* writer) override {
    absl::MutexLock lock(&mu_);
    if (auto closed = Closed(); !closed.ok()) return ToGrpc(closed);
    const int64_t chunk = req->chunk_bytes() > 0 ? req->chunk_bytes() : (4 << 20);
    if (chunk < 4096) {  // a stream of tiny chunks would hold the learner for as long as it takes
      return ToGrpc(absl::InvalidArgumentError("chunk_bytes must be 0 (4 MiB) or at least 4096"));
    }
    if (!hooks_.weights(version_.load(), chunk, [&](const WeightChunk& c) { return writer->Write(c); })) {
      return ToGrpc(absl::UnavailableError("the weight stream to the coordinator broke"));
    }
    return grpc::Status::OK;
  }

  grpc::Status JoinWeightGroup(grpc::ServerContext* ctx, const WeightGroupSpec* spec, WeightGroupReply* reply) override {
    if (auto ok = rollout::CheckWeightGroupSpec(*spec); !ok.ok()) return ToGrpc(ok);
    if (spec->rank() != 0) {
      return ToGrpc(absl::InvalidArgumentError("the learner is rank 0 of a weight group (its sender)"));
    }
    if (!hooks_.parameters) return ToGrpc(absl::UnimplementedError("this learner cannot send weights over a group"));
    // Not under mu_: forming the group waits for every worker, and the keep-alives must go on meanwhile.
    absl::MutexLock lock(&weights_mu_);
    weight_group_.reset();
    auto g = rollout::JoinWeightGroup(*spec, hooks_.parameters(), SecondsLeft(*ctx));
    if (!g.ok()) return ToGrpc(g.status());
    weight_group_ = std::move(*g);
    reply->set_generation(weight_group_->generation());
    reply->set_wire_dtype(rollout::ProtoDType(weight_group_->wire_dtype()));
    return grpc::Status::OK;
  }

  grpc::Status BroadcastWeights(grpc::ServerContext*, const WeightSyncRequest* req, UpdateWeightsReply* reply) override {
    absl::MutexLock lock(&mu_);  // no update runs while the weights are read
    if (auto closed = Closed(); !closed.ok()) return ToGrpc(closed);
    if (req->version() != version_.load()) {
      return ToGrpc(absl::FailedPreconditionError(absl::StrCat("the learner is at version ", version_.load(),
                                                               "; asked to send version ", req->version())));
    }
    absl::MutexLock weights(&weights_mu_);
    if (!weight_group_ || weight_group_->generation() != req->generation()) {
      return ToGrpc(absl::FailedPreconditionError(
          absl::StrCat("the learner is not in weight group generation ", req->generation())));
    }
    auto s = weight_group_->Send(hooks_.parameters(), req->version());
    if (!s.ok()) {
      weight_group_.reset();  // out of step: the coordinator forms the next generation
      return ToGrpc(s.status());
    }
    reply->set_version(s->version);
    reply->set_tensors(s->tensors);
    reply->set_bytes(s->bytes);
    return grpc::Status::OK;
  }

  grpc::Status LeaveWeightGroup(grpc::ServerContext*, const WeightSyncRequest* req, UpdateWeightsReply* reply) override {
    absl::MutexLock lock(&weights_mu_);
    if (weight_group_ && weight_group_->generation() == req->generation()) weight_group_.reset();
    reply->set_version(version_.load());
    return grpc::Status::OK;
  }

  grpc::Status Checkpoint(grpc::ServerContext*, const LearnerCheckpointRequest* req,
                          LearnerCheckpointReply* reply) override {
    absl::MutexLock lock(&mu_);
    if (auto closed = Closed(); !closed.ok()) return ToGrpc(closed);
    if (req->step() != version_.load()) {
      return ToGrpc(absl::FailedPreconditionError(absl::StrCat("the learner is at version ", version_.load(),
                                                               "; the checkpoint is for step ", req->step())));
    }
    if (!req->extra_json().empty() && !nlohmann::json::parse(req->extra_json(), nullptr, false).is_object()) {
      return ToGrpc(absl::InvalidArgumentError("a checkpoint's extra_json must be a JSON object (the coordinator's state)"));
    }
    auto m = Run(std::string(1, kCheckpoint) + req->SerializeAsString());
    if (!m.ok()) return ToGrpc(m.status());
    extra_json_ = req->extra_json();
    checkpoint_step_ = req->step();
    reply->set_path(absl::StrCat("step ", req->step()));
    return grpc::Status::OK;
  }

  grpc::Status Finish(grpc::ServerContext*, const FinishRequest*, FinishReply* reply) override {
    absl::MutexLock lock(&mu_);
    if (auto closed = Closed(); !closed.ok()) return ToGrpc(closed);
    auto bytes = comm::BroadcastBytes(group_, std::string(1, kFinish));
    absl::StatusOr<std::string> model = bytes.ok() ? hooks_.finish() : absl::StatusOr<std::string>(bytes.status());
    if (!model.ok()) {
      error_ = model.status();
      cv_.SignalAll();
      return ToGrpc(model.status());
    }
    reply->set_model(*model);
    finished_ = true;
    cv_.SignalAll();
    return grpc::Status::OK;
  }

  // The other ranks: follow rank 0's commands until Finish.
  absl::Status Follow() {
    while (true) {
      ASSIGN_OR_RETURN(auto bytes, comm::BroadcastBytes(group_, ""));
      if (bytes.empty()) return absl::InternalError("learner: an empty command from rank 0");
      const char kind = bytes[0];
      if (kind == kKeepAlive) continue;
      if (kind == kFinish) return hooks_.finish().status();
      if (kind == kAbort) return absl::AbortedError(absl::StrCat("learner rank 0 stopped the stage: ", bytes.substr(1)));
      RETURN_IF_ERROR(Execute(bytes).status());
    }
  }

 private:
  // A closed server (finished, failed or stopped) answers nothing more.
  absl::Status Closed() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (finished_) return absl::FailedPreconditionError("the learner has finished its stage");
    if (!error_.ok()) return absl::Status(error_.code(), absl::StrCat("the learner failed: ", error_.message()));
    return absl::OkStatus();
  }

  // Rank 0: sends a command to the other ranks, then does its own part. A failure closes the server: the
  // other ranks have failed with it.
  absl::StatusOr<std::map<std::string, double>> Run(const std::string& command) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    auto sent = comm::BroadcastBytes(group_, command);
    absl::StatusOr<std::map<std::string, double>> r = sent.ok() ? Execute(command) : sent.status();
    if (!r.ok()) {
      error_ = r.status();
      cv_.SignalAll();
    }
    return r;
  }

  absl::StatusOr<std::map<std::string, double>> Execute(const std::string& command) {
    const std::string payload = command.substr(1);
    if (command[0] == kTrain) {
      TrainRequest req;
      if (!req.ParseFromString(payload)) return absl::InternalError("learner: a batch did not arrive whole");
      const int64_t g = hooks_.group_size;
      auto [lo, hi] = ShardRange(static_cast<size_t>(req.samples_size() / g), group_.rank(), group_.size());
      std::vector<Sample> mine(req.samples().begin() + static_cast<std::ptrdiff_t>(lo * g),
                               req.samples().begin() + static_cast<std::ptrdiff_t>(hi * g));
      return hooks_.step(mine, req.seed());
    }
    if (command[0] == kCheckpoint) {
      LearnerCheckpointRequest req;
      if (!req.ParseFromString(payload)) return absl::InternalError("learner: a checkpoint call did not arrive whole");
      RETURN_IF_ERROR(hooks_.checkpoint(req.step(), req.extra_json()));
      return std::map<std::string, double>{};
    }
    return absl::InternalError(absl::StrCat("learner: unknown command '", std::string(1, command[0]), "'"));
  }

  comm::Group& group_;
  const LearnerHooks hooks_;
  std::atomic<int64_t> version_{0};
  // One call at a time: each one is a collective of every rank.
  mutable absl::Mutex mu_;
  absl::CondVar cv_;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  absl::Status error_ ABSL_GUARDED_BY(mu_);
  std::string extra_json_ ABSL_GUARDED_BY(mu_);      // the coordinator's state of the newest checkpoint
  int64_t checkpoint_step_ ABSL_GUARDED_BY(mu_) = 0;  // its step
  absl::Mutex weights_mu_ ABSL_ACQUIRED_AFTER(mu_);   // the weight group (taken after mu_ when both are)
  std::unique_ptr<comm::WeightGroup> weight_group_ ABSL_GUARDED_BY(weights_mu_);
};

absl::StatusOr<std::unique_ptr<LearnerHost>> LearnerHost::Start(comm::Group& group, const RpcConfig& rpc,
                                                                const std::string& address, LearnerHooks hooks) {
  if (group.rank() != 0) return absl::InternalError("LearnerHost::Start is for rank 0; the other ranks follow");
  std::unique_ptr<LearnerHost> host(new LearnerHost());
  const std::string stage = hooks.stage;
  host->service_ = std::make_unique<LearnerServer>(group, std::move(hooks));
  auto* svc = host->service_.get();
  ASSIGN_OR_RETURN(host->server_, RpcServer::Start(rpc, {address, "learner", [svc] { return svc->version(); }}, {svc}));
  host->keep_alive_ = std::thread([h = host.get()] { h->wait_status_ = h->service_->Wait(); });
  if (!address.empty()) {
    spdlog::info("learner: serving stage {} at version {} on port {} ({} rank{})", stage, svc->version(),
                 host->server_->port(), group.size(), group.size() == 1 ? "" : "s");
  }
  return host;
}

LearnerHost::~LearnerHost() {
  if (service_) service_->Stop(absl::CancelledError("the learner's host process ended the stage"));
  if (keep_alive_.joinable()) keep_alive_.join();
  if (server_) server_->Shutdown(std::chrono::milliseconds(5000));
}

std::shared_ptr<grpc::Channel> LearnerHost::InProcessChannel() const { return server_->InProcessChannel(); }
int LearnerHost::port() const { return server_->port(); }
absl::Status LearnerHost::Wait() {
  if (keep_alive_.joinable()) keep_alive_.join();
  return wait_status_;
}
void LearnerHost::Stop(const absl::Status& why) { service_->Stop(why); }

absl::Status FollowLearner(comm::Group& group, LearnerHooks hooks) {
  LearnerServer follower(group, std::move(hooks));
  return follower.Follow();
}

absl::Status ServeLearner(comm::Group& group, const RpcConfig& rpc, const std::string& address, LearnerHooks hooks) {
  if (group.rank() != 0) return FollowLearner(group, std::move(hooks));
  const std::string stage = hooks.stage;
  ASSIGN_OR_RETURN(auto host, LearnerHost::Start(group, rpc, address, std::move(hooks)));
  auto status = host->Wait();
  if (status.ok()) spdlog::info("learner: stage {} finished", stage);
  return status;
}

}  // namespace rlhf::trainer
