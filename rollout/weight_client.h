// Client side of rlhf.Rollout/UpdateWeights: streams a model's parameters to a rollout worker in chunks
// below the message-size limit, then commits them as `version`.
#pragma once

#include <functional>
#include <vector>

#include "common/comm/weight_sync.h"
#include "common/model/transformer.h"
#include "common/rpc.h"
#include "rlhf/rollout.grpc.pb.h"

namespace rlhf::rollout {

// Writes one chunk; false when the stream broke.
using ChunkWriter = std::function<bool(const WeightChunk&)>;

// Every parameter of `model` (in its dtype; other dtypes as f32) as chunks of at most `chunk_bytes` of data,
// stamped with `version`, without the commit chunk. Stops early and returns false when `write` does.
bool ModelChunks(model::TransformerImpl& model, int64_t version, int64_t chunk_bytes, const ChunkWriter& write);

// One UpdateWeights call: the chunks `produce` writes, then the commit of `version`. Returns the worker's
// reply, or its error (nothing is applied unless the commit succeeds).
absl::StatusOr<UpdateWeightsReply> PushChunks(Rollout::Stub* stub, int64_t version,
                                              const std::function<bool(const ChunkWriter&)>& produce,
                                              const RpcConfig& rpc);

// PushChunks of ModelChunks(model).
absl::StatusOr<UpdateWeightsReply> PushWeights(Rollout::Stub* stub, model::TransformerImpl& model, int64_t version,
                                               int64_t chunk_bytes, const RpcConfig& rpc);

// INVALID_ARGUMENT unless every field of `spec` is in range (a host-like store_host, a port, rank < size,
// timeout_seconds <= 3600, a known backend, ...): checked before anything waits on it.
absl::Status CheckWeightGroupSpec(const WeightGroupSpec& spec);

// Joins the weight group a spec describes (connects to its store; rank 0 sends), with `named` as this
// member's tensors, waiting at most the spec's timeout and, when `max_wait_seconds` > 0, at most that (the
// caller's deadline). Errors: a bad spec (INVALID_ARGUMENT), the store unreachable (UNAVAILABLE), the
// formation past its timeout, a model that does not match the others' (FAILED_PRECONDITION).
absl::StatusOr<std::unique_ptr<comm::WeightGroup>> JoinWeightGroup(const WeightGroupSpec& spec,
                                                                   const comm::NamedTensors& named,
                                                                   double max_wait_seconds = 0);

// The proto dtype of a torch dtype (F32, BF16 or F16).
DType ProtoDType(torch::ScalarType t);

// A model's parameters by name (what a weight group sends and receives).
comm::NamedTensors NamedParameters(model::TransformerImpl& model);

}  // namespace rlhf::rollout
