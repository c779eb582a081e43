#include "services/coordinator/learner_client.h"

#include "absl/strings/str_cat.h"

namespace rlhf::coordinator {

namespace {
// Long work (a training step, a checkpoint, saving the models) gets this deadline rather than rpc.*'s.
constexpr double kWorkDeadlineSeconds = 24 * 3600.0;
}  // namespace

LearnerClient::LearnerClient(std::shared_ptr<grpc::Channel> channel, RpcConfig rpc, RetryPolicy retry)
    : stub_(rlhf::Learner::NewStub(channel)), rpc_(rpc), retry_(retry) {}

absl::StatusOr<LearnerStateReply> LearnerClient::State() {
  absl::Status last;
  for (int64_t attempt = 0; attempt < std::max<int64_t>(1, retry_.max_attempts); ++attempt) {
    if (attempt > 0) Backoff(retry_, attempt - 1);
    grpc::ClientContext ctx;
    SetDeadline(&ctx, rpc_);
    LearnerStateReply reply;
    last = FromGrpc(stub_->State(&ctx, LearnerStateRequest(), &reply));
    if (last.ok()) return reply;
    if (!Retryable(last.code())) break;
  }
  return absl::Status(last.code(), absl::StrCat("learner State: ", last.message()));
}

absl::StatusOr<TrainReply> LearnerClient::Train(int64_t step, const std::vector<Sample>& samples, uint64_t seed) {
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

absl::Status LearnerClient::StreamWeights(int64_t chunk_bytes, const ChunkSink& sink) {
  WeightsRequest req;
  req.set_chunk_bytes(chunk_bytes);
  grpc::ClientContext ctx;
  SetDeadline(&ctx, rpc_, kWorkDeadlineSeconds);
  auto reader = stub_->Weights(&ctx, req);
  WeightChunk c;
  bool sunk = true;
  while (reader->Read(&c)) {
    if (!sink(c)) {
      sunk = false;
      ctx.TryCancel();
      break;
    }
  }
  auto s = FromGrpc(reader->Finish());
  if (!sunk) return absl::UnavailableError("learner Weights: the stream the chunks went to broke");
  if (!s.ok()) return absl::Status(s.code(), absl::StrCat("learner Weights: ", s.message()));
  return absl::OkStatus();
}

absl::StatusOr<WeightGroupReply> LearnerClient::JoinWeightGroup(const WeightGroupSpec& spec, double seconds) {
  grpc::ClientContext ctx;
  SetDeadline(&ctx, rpc_, seconds);
  WeightGroupReply reply;
  auto s = FromGrpc(stub_->JoinWeightGroup(&ctx, spec, &reply));
  if (!s.ok()) return absl::Status(s.code(), absl::StrCat("learner JoinWeightGroup: ", s.message()));
  return reply;
}

absl::StatusOr<UpdateWeightsReply> LearnerClient::BroadcastWeights(int64_t version, int64_t generation, double seconds) {
  WeightSyncRequest req;
  req.set_version(version);
  req.set_generation(generation);
  grpc::ClientContext ctx;
  SetDeadline(&ctx, rpc_, seconds);
  UpdateWeightsReply reply;
  auto s = FromGrpc(stub_->BroadcastWeights(&ctx, req, &reply));
  if (!s.ok()) return absl::Status(s.code(), absl::StrCat("learner BroadcastWeights: ", s.message()));
  return reply;
}

absl::Status LearnerClient::LeaveWeightGroup(int64_t generation, double seconds) {
  WeightSyncRequest req;
  req.set_generation(generation);
  grpc::ClientContext ctx;
  SetDeadline(&ctx, rpc_, seconds);
  UpdateWeightsReply reply;
  return FromGrpc(stub_->LeaveWeightGroup(&ctx, req, &reply));
}

absl::Status LearnerClient::Checkpoint(int64_t step, const std::string& extra_json) {
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

absl::StatusOr<std::string> LearnerClient::Finish() {
  grpc::ClientContext ctx;
  SetDeadline(&ctx, rpc_, kWorkDeadlineSeconds);
  FinishReply reply;
  auto s = FromGrpc(stub_->Finish(&ctx, FinishRequest(), &reply));
  if (!s.ok()) return absl::Status(s.code(), absl::StrCat("learner Finish: ", s.message()));
  return reply.model();
}

}  // namespace rlhf::coordinator
