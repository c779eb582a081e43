#include "trainer/online_learner.h"

#include <spdlog/spdlog.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>

#include "absl/strings/str_cat.h"
#include "trainer/batching.h"

namespace rlhf::trainer {

namespace {

// What rank 0 tells the other ranks: one byte, then the payload.
constexpr char kKeepAlive = 'K', kTrain = 'T', kCheckpoint = 'C', kFinish = 'F';

// Long work (a training step, a checkpoint) gets this deadline rather than the short default of rpc.*.
constexpr double kWorkDeadlineSeconds = 24 * 3600.0;

// A closed server (finished or failed) answers nothing more.
#define RETURN_GRPC_IF_CLOSED()                                                                        \
  if (finished_) return ToGrpc(absl::FailedPreconditionError("the learner has finished its stage")); \
  if (!error_.ok()) return ToGrpc(absl::Status(error_.code(), absl::StrCat("the learner failed: ", error_.message())))

class LearnerServer final : public rlhf::Learner::Service {
 public:
  LearnerServer(comm::Group& group, LearnerHooks hooks) : group_(group), hooks_(std::move(hooks)) {
    version_ = hooks_.version;
    checkpoint_step_ = hooks_.version;  // a resumed learner is at its checkpoint; a fresh one at 0
    extra_json_ = hooks_.extra_json;
  }

  int64_t version() const { return version_.load(); }

  // Blocks until Finish has been answered; sends keep-alives to the other ranks meanwhile.
  absl::Status Wait() {
    std::unique_lock<std::mutex> lk(mu_);
    while (!finished_ && error_.ok()) {
      if (cv_.wait_for(lk, std::chrono::seconds(5), [&] { return finished_ || !error_.ok(); })) break;
      auto s = comm::BroadcastBytes(group_, std::string(1, kKeepAlive));
      if (!s.ok()) error_ = s.status();
    }
    return error_;
  }

  grpc::Status State(grpc::ServerContext*, const LearnerStateRequest*, LearnerStateReply* reply) override {
    reply->set_stage(hooks_.stage);
    reply->set_version(version_.load());
    reply->set_group_size(hooks_.group_size);
    reply->set_ranks(group_.size());
    std::lock_guard<std::mutex> lk(mu_);
    reply->set_extra_json(extra_json_);
    reply->set_checkpoint_step(checkpoint_step_);
    return grpc::Status::OK;
  }

  grpc::Status Train(grpc::ServerContext*, const TrainRequest* req, TrainReply* reply) override {
    std::lock_guard<std::mutex> lk(mu_);
    RETURN_GRPC_IF_CLOSED();
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
    auto m = Run(std::string(1, kTrain) + req->SerializeAsString());
    if (!m.ok()) return ToGrpc(m.status());
    version_.fetch_add(1);
    reply->set_version(version_.load());
    for (const auto& [k, v] : *m) (*reply->mutable_metrics())[k] = v;
    return grpc::Status::OK;
  }

  grpc::Status Weights(grpc::ServerContext*, const WeightsRequest* req, grpc::ServerWriter<WeightChunk>* writer) override {
    std::lock_guard<std::mutex> lk(mu_);
    RETURN_GRPC_IF_CLOSED();
    const int64_t chunk = req->chunk_bytes() > 0 ? req->chunk_bytes() : (4 << 20);
    if (!hooks_.weights(version_.load(), chunk, [&](const WeightChunk& c) { return writer->Write(c); })) {
      return ToGrpc(absl::UnavailableError("the weight stream to the coordinator broke"));
    }
    return grpc::Status::OK;
  }

  grpc::Status Checkpoint(grpc::ServerContext*, const LearnerCheckpointRequest* req,
                          LearnerCheckpointReply* reply) override {
    std::lock_guard<std::mutex> lk(mu_);
    RETURN_GRPC_IF_CLOSED();
    if (req->step() != version_.load()) {
      return ToGrpc(absl::FailedPreconditionError(absl::StrCat("the learner is at version ", version_.load(),
                                                               "; the checkpoint is for step ", req->step())));
    }
    auto m = Run(std::string(1, kCheckpoint) + req->SerializeAsString());
    if (!m.ok()) return ToGrpc(m.status());
    extra_json_ = req->extra_json();
    checkpoint_step_ = req->step();
    reply->set_path(absl::StrCat("step ", req->step()));
    return grpc::Status::OK;
  }

  grpc::Status Finish(grpc::ServerContext*, const FinishRequest*, FinishReply* reply) override {
    std::lock_guard<std::mutex> lk(mu_);
    RETURN_GRPC_IF_CLOSED();
    auto bytes = comm::BroadcastBytes(group_, std::string(1, kFinish));
    absl::StatusOr<std::string> model = bytes.ok() ? hooks_.finish() : absl::StatusOr<std::string>(bytes.status());
    if (!model.ok()) {
      error_ = model.status();
      cv_.notify_all();
      return ToGrpc(model.status());
    }
    reply->set_model(*model);
    finished_ = true;
    cv_.notify_all();
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
      RETURN_IF_ERROR(Execute(bytes).status());
    }
  }

 private:
  // Rank 0: sends a command to the other ranks, then does its own part. A failure closes the server: the
  // other ranks have failed with it.
  absl::StatusOr<std::map<std::string, double>> Run(const std::string& command) {
    auto sent = comm::BroadcastBytes(group_, command);
    absl::StatusOr<std::map<std::string, double>> r = sent.ok() ? Execute(command) : sent.status();
    if (!r.ok()) {
      error_ = r.status();
      cv_.notify_all();
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
#undef RETURN_GRPC_IF_CLOSED

  comm::Group& group_;
  LearnerHooks hooks_;
  std::atomic<int64_t> version_{0};
  std::mutex mu_;  // one call at a time: each one is a collective of every rank
  std::condition_variable cv_;
  bool finished_ = false;
  absl::Status error_;
  std::string extra_json_;      // the coordinator's state of the newest checkpoint
  int64_t checkpoint_step_ = 0;  // its step
};

}  // namespace

absl::Status ServeLearner(comm::Group& group, const RpcConfig& rpc, const std::string& address, LearnerHooks hooks) {
  const std::string stage = hooks.stage;
  LearnerServer svc(group, std::move(hooks));
  if (group.rank() != 0) return svc.Follow();
  ASSIGN_OR_RETURN(auto server,
                   RpcServer::Start(rpc, {address, "learner", [&svc] { return svc.version(); }}, {&svc}));
  spdlog::info("learner: serving stage {} at version {} on port {} ({} rank{})", stage, svc.version(), server->port(),
               group.size(), group.size() == 1 ? "" : "s");
  auto status = svc.Wait();
  server->Shutdown(std::chrono::milliseconds(5000));
  if (status.ok()) spdlog::info("learner: stage {} finished at version {}", stage, svc.version());
  return status;
}

RemoteLearner::RemoteLearner(std::shared_ptr<grpc::Channel> channel, RpcConfig rpc, coordinator::RetryPolicy retry)
    : stub_(rlhf::Learner::NewStub(channel)), rpc_(rpc), retry_(retry) {}

absl::StatusOr<LearnerStateReply> RemoteLearner::State() {
  absl::Status last;
  for (int64_t attempt = 0; attempt < std::max<int64_t>(1, retry_.max_attempts); ++attempt) {
    if (attempt > 0) coordinator::Backoff(retry_, attempt - 1);
    grpc::ClientContext ctx;
    SetDeadline(&ctx, rpc_);
    LearnerStateReply reply;
    last = FromGrpc(stub_->State(&ctx, LearnerStateRequest(), &reply));
    if (last.ok()) return reply;
    if (!coordinator::Retryable(last.code())) break;
  }
  return absl::Status(last.code(), absl::StrCat("learner State: ", last.message()));
}

absl::StatusOr<TrainReply> RemoteLearner::Train(int64_t step, const std::vector<Sample>& samples, uint64_t seed) {
  TrainRequest req;
  req.set_step(step);
  req.set_seed(seed);
  for (const auto& s : samples) *req.add_samples() = s;
  grpc::ClientContext ctx;
  SetDeadline(&ctx, rpc_, kWorkDeadlineSeconds);
  TrainReply reply;
  auto s = FromGrpc(stub_->Train(&ctx, req, &reply));
  if (!s.ok()) return absl::Status(s.code(), absl::StrCat("learner Train: ", s.message()));
  return reply;
}

absl::StatusOr<std::vector<WeightChunk>> RemoteLearner::Weights(int64_t chunk_bytes) {
  WeightsRequest req;
  req.set_chunk_bytes(chunk_bytes);
  grpc::ClientContext ctx;
  SetDeadline(&ctx, rpc_, kWorkDeadlineSeconds);
  auto reader = stub_->Weights(&ctx, req);
  std::vector<WeightChunk> chunks;
  WeightChunk c;
  while (reader->Read(&c)) chunks.push_back(c);
  auto s = FromGrpc(reader->Finish());
  if (!s.ok()) return absl::Status(s.code(), absl::StrCat("learner Weights: ", s.message()));
  return chunks;
}

absl::Status RemoteLearner::Checkpoint(int64_t step, const std::string& extra_json) {
  LearnerCheckpointRequest req;
  req.set_step(step);
  req.set_extra_json(extra_json);
  grpc::ClientContext ctx;
  SetDeadline(&ctx, rpc_, kWorkDeadlineSeconds);
  LearnerCheckpointReply reply;
  auto s = FromGrpc(stub_->Checkpoint(&ctx, req, &reply));
  if (!s.ok()) return absl::Status(s.code(), absl::StrCat("learner Checkpoint: ", s.message()));
  return absl::OkStatus();
}

absl::StatusOr<std::string> RemoteLearner::Finish() {
  grpc::ClientContext ctx;
  SetDeadline(&ctx, rpc_, kWorkDeadlineSeconds);
  FinishReply reply;
  auto s = FromGrpc(stub_->Finish(&ctx, FinishRequest(), &reply));
  if (!s.ok()) return absl::Status(s.code(), absl::StrCat("learner Finish: ", s.message()));
  return reply.model();
}

}  // namespace rlhf::trainer
