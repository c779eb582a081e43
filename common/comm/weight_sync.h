// Weights over a collective: the learner sends the policy to the rollout workers through a c10d group
// (Gloo on CPU, NCCL with CUDA: one code path), in flattened buckets of the wire dtype, each checksummed.
// gRPC carries only the control (which generation to join, which version to send or take, the reply).
//
// A weight group: rank 0 is the sender (learner rank 0), ranks 1..N the receivers (rollout workers). It is
// formed over the rendezvous store under "rlhf/weights/<generation>", so that after a member is lost the
// others form the next generation over the same store.
//
// Formation (WeightGroup::Join, every member at once): one all-reduce gathers every member's fingerprint
// (tensor names and shapes) and model dtype. Fingerprints must all match (FAILED_PRECONDITION names the
// ranks that differ). The wire dtype is the receivers' dtype when they agree, else float32: a bf16 worker
// receives bf16, and the learner casts while it packs.
//
// One sync (Send on rank 0, Receive on every other rank, at once), all collectives within the timeout:
//   header   int64[5]: magic, version, bucket count, checksums on, fingerprint
//   buckets  per bucket, the flattened tensors of consecutive names (sorted), in the wire dtype; a bucket
//            holds at least one tensor and otherwise at most `bucket_bytes`
//   sums     int64[buckets]: the sender's checksum of each bucket (when checksums are on)
// A receiver verifies every bucket before it hands anything out: a short, corrupt, mismatched or
// older transfer is an error and nothing is returned (the caller swaps nothing in). After an error
// other than ABORTED (an older version, every byte received) the group is out of step and must
// be formed again (a new generation).
//
// Thread-safety: one sync at a time per WeightGroup (the caller serializes).
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "common/comm/group.h"
#include "common/status.h"

namespace rlhf::comm {

using NamedTensors = std::vector<std::pair<std::string, torch::Tensor>>;

// A fast 64-bit checksum of bytes (four multiply-rotate lanes over 8-byte words, then the tail): detects
// flipped bits and moved words. Not cryptographic.
uint64_t Checksum(const void* data, size_t bytes);

// FNV-1a of every tensor's name and shape, in name order: equal on two processes when their models match.
uint64_t LayoutFingerprint(const NamedTensors& named);

struct WeightGroupOptions {
  GroupOptions group;               // backend, timeout of each collective (the sync's deadline), bind address
  int64_t bucket_bytes = 64 << 20;  // tensors are flattened into buckets of at most this many bytes
  bool checksum = true;             // each bucket's checksum sent and verified (off: faster, unchecked)
};

struct WeightSyncStats {
  int64_t version = 0;
  int64_t bytes = 0;    // bytes on the wire (the buckets), per receiver
  int64_t buckets = 0;
  int64_t tensors = 0;
  double seconds = 0;
};

class WeightGroup {
 public:
  // Joins generation `generation` as `rank` of `size` (rank 0 sends). `named` are this member's tensors
  // (the sender's parameters, a receiver's served model): only names, shapes and the dtype are read.
  static absl::StatusOr<std::unique_ptr<WeightGroup>> Join(Store& store, int64_t generation, int rank, int size,
                                                           const WeightGroupOptions& options, const NamedTensors& named);

  int rank() const { return group_->rank(); }
  int size() const { return group_->size(); }
  int64_t generation() const { return generation_; }
  torch::ScalarType wire_dtype() const { return wire_dtype_; }
  const WeightGroupOptions& options() const { return options_; }

  // Rank 0: sends `named` (the same names and shapes as at Join; any dtype and device) as `version`.
  absl::StatusOr<WeightSyncStats> Send(const NamedTensors& named, int64_t version);

  struct Received {
    WeightSyncStats stats;
    std::map<std::string, torch::Tensor> tensors;  // views of the receive buffers, in the wire dtype
  };
  // Ranks > 0: takes one sync. ABORTED when its version is below `at_least` (versions never go back; the
  // group stays in step).
  // With `reuse_buffers` the bytes go into the previous Receive's buffers: the caller must be done with its
  // tensors. Otherwise new buffers are allocated (the previous tensors stay valid).
  absl::StatusOr<Received> Receive(int64_t at_least, bool reuse_buffers);

  // Test seams. A receiver calls `bucket_hook` on each bucket as it arrives, before verification (a test
  // corrupts one). A sender with `stop_after_buckets` >= 0 sends that many buckets and then stops, as a
  // learner that dies in the middle of a sync.
  void SetBucketHookForTesting(std::function<void(int64_t bucket, torch::Tensor& flat)> hook) {
    bucket_hook_ = std::move(hook);
  }
  void SetStopAfterBucketsForTesting(int64_t buckets) { stop_after_buckets_ = buckets; }

 private:
  struct Bucket {
    size_t first = 0, last = 0;  // tensors [first, last) of specs_
    int64_t numel = 0;
  };
  struct Spec {
    std::string name;
    std::vector<int64_t> shape;
    int64_t numel = 0;
  };
  WeightGroup() = default;
  void Plan(const NamedTensors& named);

  std::shared_ptr<Group> group_;
  int64_t generation_ = 0;
  WeightGroupOptions options_;
  torch::ScalarType wire_dtype_ = torch::kFloat32;
  torch::Device device_{torch::kCPU};
  uint64_t fingerprint_ = 0;
  std::vector<Spec> specs_;      // sorted by name
  std::vector<Bucket> buckets_;
  std::vector<torch::Tensor> receive_buffers_;  // receivers: one per bucket
  std::vector<torch::Tensor> send_buffers_;     // sender: two, alternating
  std::function<void(int64_t, torch::Tensor&)> bucket_hook_;
  int64_t stop_after_buckets_ = -1;
};

}  // namespace rlhf::comm
