#include "rollout/weight_client.h"

#include <algorithm>
#include <cctype>

namespace rlhf::rollout {

bool ModelChunks(model::TransformerImpl& model, int64_t version, int64_t chunk_bytes, const ChunkWriter& write) {
  torch::NoGradGuard ng;
  for (const auto& p : model.named_parameters(true)) {
    auto t = p.value().detach().contiguous();
    const DType dt = ProtoDType(t.scalar_type());
    if (dt == DTYPE_F32 && t.scalar_type() != torch::kFloat32) t = t.to(torch::kFloat32);
    const auto* bytes = static_cast<const char*>(t.data_ptr());
    const int64_t n = t.numel() * static_cast<int64_t>(t.element_size());
    for (int64_t off = 0; off < n; off += chunk_bytes) {
      WeightChunk c;
      c.set_version(version);
      c.set_name(p.key());
      c.set_dtype(dt);
      for (int64_t d : t.sizes()) c.add_shape(d);
      c.set_offset(off);
      c.set_data(bytes + off, static_cast<size_t>(std::min(chunk_bytes, n - off)));
      if (!write(c)) return false;
    }
  }
  return true;
}

absl::StatusOr<UpdateWeightsReply> PushChunks(Rollout::Stub* stub, int64_t version,
                                              const std::function<bool(const ChunkWriter&)>& produce,
                                              const RpcConfig& rpc) {
  grpc::ClientContext ctx;
  SetDeadline(&ctx, rpc);
  UpdateWeightsReply reply;
  auto writer = stub->UpdateWeights(&ctx, &reply);
  bool ok = produce([&](const WeightChunk& c) { return writer->Write(c); });
  if (ok) {
    WeightChunk commit;
    commit.set_version(version);
    commit.set_commit(true);
    ok = writer->Write(commit);
  }
  writer->WritesDone();
  RETURN_IF_ERROR(FromGrpc(writer->Finish()));
  if (!ok) return absl::UnavailableError("the weight stream broke before the commit");
  return reply;
}

absl::StatusOr<UpdateWeightsReply> PushWeights(Rollout::Stub* stub, model::TransformerImpl& model, int64_t version,
                                               int64_t chunk_bytes, const RpcConfig& rpc) {
  return PushChunks(stub, version, [&](const ChunkWriter& w) { return ModelChunks(model, version, chunk_bytes, w); }, rpc);
}

absl::Status CheckWeightGroupSpec(const WeightGroupSpec& spec) {
  auto bad = [](const std::string& what) { return absl::InvalidArgumentError("weight group: " + what); };
  auto host_like = [](const std::string& h) {
    if (h.size() > 253) return false;
    for (unsigned char c : h) {
      if (!std::isalnum(c) && c != '.' && c != '-' && c != ':' && c != '_' && c != '[' && c != ']') return false;
    }
    return true;
  };
  if (spec.store_host().empty() || !host_like(spec.store_host())) return bad("store_host must be a host name or address");
  if (spec.store_port() <= 0 || spec.store_port() > 65535) return bad("store_port must be in [1, 65535]");
  if (spec.generation() < 0) return bad("generation must be >= 0");
  if (spec.size() < 2 || spec.size() > 65536) return bad("size must be in [2, 65536]");
  if (spec.rank() < 0 || spec.rank() >= spec.size()) return bad("rank must be in [0, size)");
  if (!(spec.timeout_seconds() >= 0 && spec.timeout_seconds() <= 3600)) return bad("timeout_seconds must be in [0, 3600]");
  if (spec.bucket_bytes() != 0 && (spec.bucket_bytes() < 1024 || spec.bucket_bytes() > (int64_t{1} << 32))) {
    return bad("bucket_bytes must be 0 (default) or in [1 KiB, 4 GiB], as weights.bucket_bytes");
  }
  if (!spec.backend().empty() && spec.backend() != "gloo" && spec.backend() != "nccl") return bad("backend must be gloo or nccl");
  if (!host_like(spec.interface_addr())) return bad("interface_addr must be an address");
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<comm::WeightGroup>> JoinWeightGroup(const WeightGroupSpec& spec,
                                                                   const comm::NamedTensors& named,
                                                                   double max_wait_seconds) {
  RETURN_IF_ERROR(CheckWeightGroupSpec(spec));
  comm::WeightGroupOptions o;
  o.group.backend = spec.backend().empty() ? "gloo" : spec.backend();
  o.group.timeout_seconds = spec.timeout_seconds() > 0 ? spec.timeout_seconds() : 60;
  if (max_wait_seconds > 0) o.group.timeout_seconds = std::min(o.group.timeout_seconds, max_wait_seconds);
  o.group.interface_addr = spec.interface_addr().empty() ? comm::DefaultInterface(spec.store_host()) : spec.interface_addr();
  o.bucket_bytes = spec.bucket_bytes() > 0 ? spec.bucket_bytes() : (64 << 20);
  o.checksum = spec.checksum();
  ASSIGN_OR_RETURN(auto store, comm::Store::Connect(spec.store_host(), spec.store_port(), o.group.timeout_seconds));
  return comm::WeightGroup::Join(*store, spec.generation(), spec.rank(), spec.size(), o, named);
}

DType ProtoDType(torch::ScalarType t) {
  return t == torch::kBFloat16 ? DTYPE_BF16 : t == torch::kFloat16 ? DTYPE_F16 : DTYPE_F32;
}

comm::NamedTensors NamedParameters(model::TransformerImpl& model) {
  comm::NamedTensors out;
  for (const auto& p : model.named_parameters(true)) out.emplace_back(p.key(), p.value());
  return out;
}

}  // namespace rlhf::rollout
