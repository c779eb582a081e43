// Client side of rlhf.Rollout/UpdateWeights: streams a model's parameters to a rollout worker in chunks
// below the message-size limit, then commits them as `version`.
#pragma once

#include "common/model/transformer.h"
#include "common/rpc.h"
#include "rlhf/rollout.grpc.pb.h"

namespace rlhf::rollout {

// Sends every parameter of `model` (in its dtype) in chunks of at most `chunk_bytes`, the last chunk with
// commit = true. Returns the worker's reply, or its error (nothing is applied unless the commit succeeds).
absl::StatusOr<UpdateWeightsReply> PushWeights(Rollout::Stub* stub, model::TransformerImpl& model, int64_t version,
                                               int64_t chunk_bytes, const RpcConfig& rpc);

}  // namespace rlhf::rollout
