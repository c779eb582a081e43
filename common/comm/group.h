// Process groups for data parallelism: a small interface shaped like c10d's ProcessGroup (blocking
// collectives with a timeout), backed by c10d::ProcessGroupGloo on CPU and c10d::ProcessGroupNCCL when the
// build has CUDA (RLHF_WITH_CUDA). A group of one process needs no backend: every collective is the identity.
//
// Bootstrap (who am I, how many, where is rank 0):
//   env:  RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT (torchrun / Kubernetes convention)
//   mpi:  OMPI_COMM_WORLD_RANK / _SIZE (or PMI_RANK / PMI_SIZE) under mpirun; rank 0 opens the rendezvous
//         store on a free port and broadcasts its address and port over MPI (MASTER_ADDR / MASTER_PORT win
//         when set)
//   single: one process
// Thread-safety: a Group is used by one thread at a time (collectives are issued in the same order on
// every rank). Errors: a peer that dies or a collective that exceeds the timeout gives UNAVAILABLE or
// DEADLINE_EXCEEDED; the group is unusable afterwards. A group from Create (and from Join with
// GroupOptions::watch) names in that error the ranks that hold the collective up, from their heartbeats.
#pragma once

#include <torch/torch.h>

#include <memory>
#include <string>
#include <vector>

#include "common/config/config.h"
#include "common/status.h"

namespace rlhf::comm {

struct DistConfig {
  std::string bootstrap = "auto";  // auto | env | mpi | single
  std::string backend = "auto";    // auto (nccl for CUDA tensors when built with CUDA, else gloo) | gloo | nccl
  std::string master_addr;         // rendezvous host; "" = MASTER_ADDR, else (mpi) rank 0's address
  int64_t master_port = 0;         // rendezvous port; 0 = MASTER_PORT, else (mpi) a free port rank 0 picks
  std::string interface_addr;      // address this rank's Gloo transport binds; "" = its hostname, else loopback
  double timeout_seconds = 300;    // a collective or the rendezvous longer than this fails
  int64_t bucket_bytes = 25 << 20; // gradients are all-reduced in flattened buckets of about this size
  static const config::Section<DistConfig>& Spec();
};

// Where this process stands, from the environment (no network).
struct WorldInfo {
  int rank = 0;
  int size = 1;
  std::string method = "single";  // env | mpi | single
};
absl::StatusOr<WorldInfo> DetectWorld(const DistConfig& config);

// A rendezvous store (c10d TCPStore): one process hosts it, the others connect to it. Process groups are
// formed over it under a key prefix, so that a group can be formed again (a new generation) over the same
// store after a member is lost. Thread-safe.
class Store {
 public:
  // Hosts a store on `bind_host`:`port` (0 = a free port). `timeout_seconds` bounds each wait for a key.
  static absl::StatusOr<std::shared_ptr<Store>> Host(const std::string& bind_host, int port, double timeout_seconds);
  // Connects to a store hosted elsewhere; UNAVAILABLE when it cannot be reached within the timeout.
  static absl::StatusOr<std::shared_ptr<Store>> Connect(const std::string& host, int port, double timeout_seconds);
  virtual ~Store() = default;
  virtual std::string host() const = 0;
  virtual int port() const = 0;
  virtual absl::Status Set(const std::string& key, const std::string& value) = 0;
  // The value of `key`, waiting for it up to the store's timeout (DEADLINE_EXCEEDED).
  virtual absl::StatusOr<std::string> Get(const std::string& key) = 0;
  // Whether `key` is set, without waiting; UNAVAILABLE when the store cannot be reached.
  virtual absl::StatusOr<bool> Has(const std::string& key) = 0;
};

// Rank 0's `value` on every rank of the job mpirun started, over MPI; MPI is initialized for this and
// finalized before it returns (all ranks call it at start-up), so no process waits in MPI_Finalize at its
// exit for a peer that hung. FAILED_PRECONDITION when this process was not started by mpirun.
absl::StatusOr<std::string> ShareOverMpi(int rank, const std::string& value);

// The address this process's transport binds for a group whose store is at `store_host`: loopback when the
// store is on loopback, else this host's name.
std::string DefaultInterface(const std::string& store_host);
// The collective backend of this build: nccl when built with CUDA and a GPU is present, else gloo.
std::string DefaultBackend();
// This host's name when it resolves, else loopback.
std::string HostName();

// A collective in flight.
class Work {
 public:
  virtual ~Work() = default;
  // Blocks until the collective is done: OK, DEADLINE_EXCEEDED past the group's timeout, or UNAVAILABLE.
  virtual absl::Status Wait() = 0;
};

// How a group formed over a store talks.
struct GroupOptions {
  std::string backend = "gloo";   // gloo | nccl (nccl needs a CUDA build)
  double timeout_seconds = 300;   // each collective and the formation itself
  std::string interface_addr;     // address the Gloo transport binds; "" = loopback
  // Heartbeats through the store, so that a failed collective names the ranks that hold it up (stopped,
  // dead, or alive but elsewhere). For long-lived groups (a learner's); a thread and a store connection each.
  bool watch = false;
};

class Group {
 public:
  virtual ~Group() = default;
  // Joins the group the environment describes (see the file comment). Blocks until every rank has joined
  // or the timeout passes (DEADLINE_EXCEEDED).
  static absl::StatusOr<std::shared_ptr<Group>> Create(const DistConfig& config);
  // A group of one process.
  static std::shared_ptr<Group> Single();
  // Forms a group of `size` processes over `store` under `prefix` (every member calls it with the same prefix
  // and size, each with its own rank). Blocks until all have joined or the timeout passes.
  static absl::StatusOr<std::shared_ptr<Group>> Join(Store& store, const std::string& prefix, int rank, int size,
                                                     const GroupOptions& options);

  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual std::string backend() const = 0;  // "none", "gloo", "nccl"

  // Sums `tensors` over all ranks, in place (same shapes and dtypes on every rank).
  virtual absl::Status AllReduceSum(std::vector<torch::Tensor>& tensors) = 0;
  // Sets `tensors` on every rank to root's, in place.
  absl::Status Broadcast(std::vector<torch::Tensor>& tensors, int root);
  // The same, started: the tensors must stay alive and untouched until the Work's Wait returns.
  virtual absl::StatusOr<std::unique_ptr<Work>> BroadcastAsync(std::vector<torch::Tensor>& tensors, int root) = 0;
  // Returns when every rank has called it.
  virtual absl::Status Barrier() = 0;

  // Conveniences on top of AllReduceSum.
  absl::StatusOr<std::vector<double>> SumDoubles(std::vector<double> values);
  absl::StatusOr<double> MaxDouble(double value);
};

// All-reduces (sums) every tensor of `tensors` through flattened buckets of about `bucket_bytes` (one
// collective per bucket instead of one per tensor). Tensors of one bucket share a dtype and device.
absl::Status AllReduceBucketed(Group& group, const std::vector<torch::Tensor>& tensors, int64_t bucket_bytes);

// Rank 0's `bytes` on every rank (the others' are ignored): a length, then the bytes.
absl::StatusOr<std::string> BroadcastBytes(Group& group, std::string bytes);

}  // namespace rlhf::comm
