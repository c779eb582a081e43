#include "common/comm/weight_sync.h"

#include <algorithm>
#include <chrono>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace rlhf::comm {

namespace {

constexpr int64_t kMagic = 0x524c4846'57475431;  // "RLHFWGT1"
constexpr uint64_t kP1 = 0x9E3779B185EBCA87ULL, kP2 = 0xC2B2AE3D27D4EB4FULL, kP3 = 0x165667B19E3779F9ULL;

inline uint64_t Rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }
inline uint64_t Lane(uint64_t acc, uint64_t word) { return Rotl(acc + word * kP2, 31) * kP1; }
inline uint64_t Word(const uint8_t* p) {
  uint64_t w;
  std::memcpy(&w, p, 8);
  return w;
}

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// 0: float32, 1: bfloat16, 2: float16 (what the formation all-reduce carries).
int64_t DtypeCode(torch::ScalarType t) {
  return t == torch::kBFloat16 ? 1 : t == torch::kFloat16 ? 2 : 0;
}
torch::ScalarType DtypeOf(int64_t code) {
  return code == 1 ? torch::kBFloat16 : code == 2 ? torch::kFloat16 : torch::kFloat32;
}

// The collective moves bytes: bfloat16 travels as a float16 view (same size; Gloo of LibTorch 1.x has no
// bfloat16 broadcast).
torch::Tensor OnWire(const torch::Tensor& t) { return t.scalar_type() == torch::kBFloat16 ? t.view(torch::kFloat16) : t; }

uint64_t ChecksumOf(const torch::Tensor& flat) {
  const torch::Tensor host = flat.device().is_cpu() ? flat : flat.to(torch::kCPU);
  return Checksum(host.data_ptr(), static_cast<size_t>(host.numel()) * host.element_size());
}

}  // namespace

uint64_t Checksum(const void* data, size_t bytes) {
  const auto* p = static_cast<const uint8_t*>(data);
  const uint8_t* end = p + bytes;
  uint64_t a = kP1 + kP2, b = kP2, c = 0, d = 0 - kP1;
  for (; p + 32 <= end; p += 32) {
    a = Lane(a, Word(p));
    b = Lane(b, Word(p + 8));
    c = Lane(c, Word(p + 16));
    d = Lane(d, Word(p + 24));
  }
  uint64_t h = Rotl(a, 1) + Rotl(b, 7) + Rotl(c, 12) + Rotl(d, 18) + static_cast<uint64_t>(bytes);
  for (; p + 8 <= end; p += 8) h = Rotl(h ^ Lane(0, Word(p)), 27) * kP1 + kP3;
  for (; p < end; ++p) h = Rotl(h ^ (*p * kP3), 11) * kP1;
  h ^= h >> 33;
  h *= kP2;
  h ^= h >> 29;
  h *= kP3;
  h ^= h >> 32;
  return h;
}

uint64_t LayoutFingerprint(const NamedTensors& named) {
  std::vector<std::string> parts;
  for (const auto& [name, t] : named) parts.push_back(absl::StrCat(name, ":", absl::StrJoin(t.sizes(), ",")));
  std::sort(parts.begin(), parts.end());
  uint64_t h = 0xcbf29ce484222325ULL;
  for (const auto& s : parts) {
    for (unsigned char ch : s + ";") h = (h ^ ch) * 0x100000001b3ULL;
  }
  return h >> 1;  // non-negative as an int64
}

void WeightGroup::Plan(const NamedTensors& named) {
  specs_.clear();
  for (const auto& [name, t] : named) specs_.push_back({name, t.sizes().vec(), t.numel()});
  std::sort(specs_.begin(), specs_.end(), [](const Spec& x, const Spec& y) { return x.name < y.name; });
  const int64_t es = static_cast<int64_t>(c10::elementSize(wire_dtype_));
  buckets_.clear();
  for (size_t i = 0; i < specs_.size();) {
    Bucket b;
    b.first = i;
    b.numel = specs_[i].numel;
    for (++i; i < specs_.size() && (b.numel + specs_[i].numel) * es <= options_.bucket_bytes; ++i) {
      b.numel += specs_[i].numel;
    }
    b.last = i;
    buckets_.push_back(b);
  }
}

absl::StatusOr<std::unique_ptr<WeightGroup>> WeightGroup::Join(Store& store, int64_t generation, int rank, int size,
                                                               const WeightGroupOptions& options,
                                                               const NamedTensors& named) {
  if (named.empty()) return absl::InvalidArgumentError("a weight group member needs the model's tensors");
  if (options.bucket_bytes < 1) return absl::InvalidArgumentError("weights.bucket_bytes must be positive");
  std::unique_ptr<WeightGroup> g(new WeightGroup());
  g->generation_ = generation;
  g->options_ = options;
  g->device_ = named.front().second.device();
  g->fingerprint_ = LayoutFingerprint(named);
  ASSIGN_OR_RETURN(g->group_,
                   Group::Join(store, absl::StrCat("rlhf/weights/", generation, "/"), rank, size, options.group));
  // Every member's fingerprint and dtype, in its own slot.
  auto slots = torch::zeros({size, 2}, torch::kInt64);
  slots[rank][0] = static_cast<int64_t>(g->fingerprint_);
  slots[rank][1] = DtypeCode(named.front().second.scalar_type()) + 1;
  std::vector<torch::Tensor> v{g->device_.is_cpu() ? slots : slots.to(g->device_)};
  RETURN_IF_ERROR(g->group_->AllReduceSum(v));
  const auto all = v[0].to(torch::kCPU);
  std::vector<int> differ;
  for (int r = 1; r < size; ++r) {
    if (all[r][0].item<int64_t>() != all[0][0].item<int64_t>()) differ.push_back(r);
  }
  if (!differ.empty()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "weight group generation ", generation, ": the models of rank(s) ", absl::StrJoin(differ, ", "),
        " do not have the sender's tensor names and shapes (rank 0 is the learner, the others rollout workers)"));
  }
  int64_t code = size > 1 ? all[1][1].item<int64_t>() - 1 : 0;
  for (int r = 2; r < size; ++r) {
    if (all[r][1].item<int64_t>() - 1 != code) code = 0;  // workers disagree: float32 on the wire
  }
  g->wire_dtype_ = DtypeOf(code);
  g->Plan(named);
  return g;
}

absl::StatusOr<WeightSyncStats> WeightGroup::Send(const NamedTensors& named, int64_t version) {
  if (rank() != 0) return absl::FailedPreconditionError("only rank 0 of a weight group sends");
  const double t0 = Now();
  std::map<std::string, const torch::Tensor*> by_name;
  for (const auto& [name, t] : named) by_name[name] = &t;
  for (const auto& s : specs_) {
    auto it = by_name.find(s.name);
    if (it == by_name.end() || it->second->sizes().vec() != s.shape) {
      return absl::InvalidArgumentError(absl::StrCat("weight sync: tensor '", s.name, "' is missing or reshaped"));
    }
  }
  if (by_name.size() != specs_.size()) {
    return absl::InvalidArgumentError("weight sync: the model has tensors the group was not formed with");
  }
  WeightSyncStats stats;
  stats.version = version;
  stats.buckets = static_cast<int64_t>(buckets_.size());
  stats.tensors = static_cast<int64_t>(specs_.size());
  const auto i64 = torch::TensorOptions().dtype(torch::kInt64).device(device_);
  std::vector<torch::Tensor> header{
      torch::tensor({kMagic, version, static_cast<int64_t>(buckets_.size()), int64_t{options_.checksum},
                     static_cast<int64_t>(fingerprint_)},
                    torch::kInt64)
          .to(device_)};
  RETURN_IF_ERROR(group_->Broadcast(header, 0));
  int64_t largest = 0;
  for (const auto& b : buckets_) largest = std::max(largest, b.numel);
  if (send_buffers_.size() != 2 || send_buffers_[0].numel() < largest) {
    const auto opts = torch::TensorOptions().dtype(wire_dtype_).device(device_);
    send_buffers_ = {torch::empty({largest}, opts), torch::empty({largest}, opts)};
  }
  torch::NoGradGuard no_grad;
  auto pack = [&](size_t k) {
    const Bucket& b = buckets_[k];
    auto& buf = send_buffers_[k % 2];
    int64_t off = 0;
    for (size_t i = b.first; i < b.last; ++i) {
      buf.narrow(0, off, specs_[i].numel).copy_(by_name[specs_[i].name]->detach().reshape({-1}));
      off += specs_[i].numel;
    }
  };
  std::vector<int64_t> sums(buckets_.size(), 0);
  if (!buckets_.empty()) pack(0);
  for (size_t k = 0; k < buckets_.size(); ++k) {
    if (stop_after_buckets_ >= 0 && static_cast<int64_t>(k) >= stop_after_buckets_) {
      return absl::AbortedError(absl::StrCat("weight sync stopped after ", k, " buckets (test seam)"));
    }
    std::vector<torch::Tensor> flat{OnWire(send_buffers_[k % 2].narrow(0, 0, buckets_[k].numel))};
    ASSIGN_OR_RETURN(auto work, group_->BroadcastAsync(flat, 0));
    // While this bucket is on the wire: its checksum, and the next bucket packed into the other buffer.
    if (options_.checksum) sums[k] = static_cast<int64_t>(ChecksumOf(flat[0]));
    if (k + 1 < buckets_.size()) pack(k + 1);
    RETURN_IF_ERROR(work->Wait());
    stats.bytes += flat[0].numel() * static_cast<int64_t>(flat[0].element_size());
  }
  if (options_.checksum && !sums.empty()) {
    std::vector<torch::Tensor> t{torch::tensor(sums, torch::kInt64).to(device_)};
    RETURN_IF_ERROR(group_->Broadcast(t, 0));
  }
  stats.seconds = Now() - t0;
  return stats;
}

absl::StatusOr<WeightGroup::Received> WeightGroup::Receive(int64_t at_least, bool reuse_buffers) {
  if (rank() == 0) return absl::FailedPreconditionError("rank 0 of a weight group sends, it does not receive");
  const double t0 = Now();
  std::vector<torch::Tensor> header{torch::zeros({5}, torch::TensorOptions().dtype(torch::kInt64).device(device_))};
  RETURN_IF_ERROR(group_->Broadcast(header, 0));
  const auto h = header[0].to(torch::kCPU);
  const int64_t magic = h[0].item<int64_t>(), version = h[1].item<int64_t>(), count = h[2].item<int64_t>();
  const bool checksum = h[3].item<int64_t>() != 0;
  if (magic != kMagic || count != static_cast<int64_t>(buckets_.size()) ||
      static_cast<uint64_t>(h[4].item<int64_t>()) != fingerprint_) {
    return absl::DataLossError(absl::StrCat("weight sync: the header does not match this group (", count,
                                            " buckets announced, ", buckets_.size(), " planned)"));
  }
  if (!reuse_buffers || receive_buffers_.size() != buckets_.size()) {
    receive_buffers_.clear();
    const auto opts = torch::TensorOptions().dtype(wire_dtype_).device(device_);
    for (const auto& b : buckets_) receive_buffers_.push_back(torch::empty({b.numel}, opts));
  }
  Received out;
  out.stats.version = version;
  out.stats.buckets = count;
  out.stats.tensors = static_cast<int64_t>(specs_.size());
  std::vector<int64_t> sums(buckets_.size(), 0);
  // Bucket k+1 is on the wire while bucket k is checksummed.
  std::vector<std::vector<torch::Tensor>> flats(buckets_.size());
  std::unique_ptr<Work> next;
  auto post = [&](size_t k) -> absl::Status {
    flats[k] = {OnWire(receive_buffers_[k])};
    ASSIGN_OR_RETURN(next, group_->BroadcastAsync(flats[k], 0));
    return absl::OkStatus();
  };
  if (!buckets_.empty()) RETURN_IF_ERROR(post(0));
  for (size_t k = 0; k < buckets_.size(); ++k) {
    RETURN_IF_ERROR(next->Wait());
    if (k + 1 < buckets_.size()) RETURN_IF_ERROR(post(k + 1));
    if (bucket_hook_) bucket_hook_(static_cast<int64_t>(k), receive_buffers_[k]);
    if (checksum) sums[k] = static_cast<int64_t>(ChecksumOf(receive_buffers_[k]));
    out.stats.bytes += receive_buffers_[k].numel() * static_cast<int64_t>(receive_buffers_[k].element_size());
  }
  if (checksum && !sums.empty()) {
    std::vector<torch::Tensor> t{torch::zeros({count}, torch::TensorOptions().dtype(torch::kInt64).device(device_))};
    RETURN_IF_ERROR(group_->Broadcast(t, 0));
    const auto sent = t[0].to(torch::kCPU);
    for (int64_t k = 0; k < count; ++k) {
      if (sent[k].item<int64_t>() != sums[static_cast<size_t>(k)]) {
        return absl::DataLossError(absl::StrCat("weight sync of version ", version, ": bucket ", k, " of ", count,
                                                " failed its checksum; nothing is swapped in"));
      }
    }
  }
  if (version < at_least) {
    return absl::AbortedError(absl::StrCat("weight sync: version ", version, " is older than ", at_least,
                                           ", which this worker holds or has staged"));
  }
  for (size_t k = 0; k < buckets_.size(); ++k) {
    int64_t off = 0;
    for (size_t i = buckets_[k].first; i < buckets_[k].last; ++i) {
      out.tensors[specs_[i].name] = receive_buffers_[k].narrow(0, off, specs_[i].numel).view(specs_[i].shape);
      off += specs_[i].numel;
    }
  }
  out.stats.seconds = Now() - t0;
  return out;
}

}  // namespace rlhf::comm
