#include "common/model/checkpoint.h"

#include <spdlog/spdlog.h>
#include <unistd.h>

#include <ATen/CPUGeneratorImpl.h>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/file.h"
#include "common/model/safetensors.h"

namespace rlhf::model {

namespace fs = std::filesystem;
using nlohmann::json;

const char* const kTokenizerFiles[] = {"tokenizer.json",      "tokenizer_config.json", "special_tokens_map.json",
                                       "vocab.json",          "merges.txt",            "tokenizer.model",
                                       "added_tokens.json",   "chat_template.jinja",   nullptr};

absl::StatusOr<torch::ScalarType> ParseTorchDtype(const std::string& name) {
  if (name == "float32" || name == "f32") return torch::kFloat32;
  if (name == "bfloat16" || name == "bf16") return torch::kBFloat16;
  if (name == "float16" || name == "f16") return torch::kFloat16;
  return absl::InvalidArgumentError(absl::StrCat("unknown dtype '", name, "'; use float32 (f32) or bfloat16 (bf16)"));
}

const char* TorchDtypeName(torch::ScalarType t) {
  switch (t) {
    case torch::kFloat32: return "float32";
    case torch::kBFloat16: return "bfloat16";
    case torch::kFloat16: return "float16";
    default: return "unsupported";
  }
}

void LogBf16Advice() {
  static const bool logged = [] {
    torch::NoGradGuard ng;
    auto rate = [](torch::ScalarType dt) {
      auto a = torch::randn({512, 512}).to(dt), b = torch::randn({512, 512}).to(dt);
      (void)torch::matmul(a, b);
      double best = 1e30;
      for (int i = 0; i < 3; ++i) {
        auto t = std::chrono::steady_clock::now();
        (void)torch::matmul(a, b);
        best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count());
      }
      return 2.0 * 512 * 512 * 512 / best / 1e9;
    };
    const double f32 = rate(torch::kFloat32), bf16 = rate(torch::kBFloat16);
    spdlog::info("bf16 weights compute in bfloat16 (the checkpoint's dtype). Here a matrix product runs at f32 "
                 "{:.0f} vs bf16 {:.0f} GFLOP/s{}",
                 f32, bf16,
                 f32 > 1.1 * bf16 ? ": the dtype key of the command (e.g. rollout.dtype) set to float32 would run "
                                    "faster, at twice the weights' memory"
                                  : "");
    return true;
  }();
  (void)logged;
}

namespace {

absl::Status WriteTextFile(const fs::path& p, const std::string& text) { return WriteFileAtomic(p.string(), text); }

absl::StatusOr<torch::ScalarType> TorchFromSt(StDType t) {
  switch (t) {
    case StDType::kF32: return torch::kFloat32;
    case StDType::kBF16: return torch::kBFloat16;
    case StDType::kF16: return torch::kFloat16;
    case StDType::kF64: return torch::kFloat64;
    default: return absl::InvalidArgumentError(absl::StrCat("dtype ", StDTypeName(t), " is not a float type"));
  }
}

absl::StatusOr<StDType> StFromTorch(torch::ScalarType t) {
  switch (t) {
    case torch::kFloat32: return StDType::kF32;
    case torch::kBFloat16: return StDType::kBF16;
    case torch::kFloat16: return StDType::kF16;
    case torch::kFloat64: return StDType::kF64;
    default: return absl::InvalidArgumentError("only float tensors are saved");
  }
}

// Copies the bytes of `info` (in `file`) into `dst`, converting the dtype.
absl::Status CopyInto(const SafetensorsFile& file, const TensorInfo& info, torch::Tensor& dst) {
  ASSIGN_OR_RETURN(auto src_type, TorchFromSt(info.dtype));
  std::vector<int64_t> want(dst.sizes().begin(), dst.sizes().end());
  if (info.shape != want) {
    return absl::InvalidArgumentError(absl::StrCat(file.path(), ": tensor '", info.name, "' has shape [",
                                                    absl::StrJoin(info.shape, ", "), "] but the config needs [",
                                                    absl::StrJoin(want, ", "), "]"));
  }
  const uint8_t* p = file.Data(info);
  const size_t elem = StDTypeSize(info.dtype);
  torch::Tensor src;
  if (reinterpret_cast<uintptr_t>(p) % elem == 0) {
    src = torch::from_blob(const_cast<uint8_t*>(p), info.shape, torch::TensorOptions().dtype(src_type));
  } else {  // unaligned in the mapping: copy out first
    src = torch::empty(info.shape, torch::TensorOptions().dtype(src_type));
    std::memcpy(src.data_ptr(), p, info.end - info.begin);
  }
  torch::NoGradGuard no_grad;
  dst.copy_(src);
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<LoadOptions> LoadOptionsForDtype(const std::string& dtype) {
  LoadOptions load;
  if (!dtype.empty()) {
    ASSIGN_OR_RETURN(load.dtype, ParseTorchDtype(dtype));
  }
  return load;
}

absl::StatusOr<HfConfig> LoadHfConfig(const std::string& dir) {
  fs::path p = fs::path(dir) / "config.json";
  if (!fs::exists(dir)) return absl::NotFoundError(absl::StrCat("model folder '", dir, "' does not exist"));
  if (!fs::exists(p)) {
    return absl::NotFoundError(absl::StrCat(p.string(), ": missing; is '", dir, "' a Hugging Face model folder?"));
  }
  ASSIGN_OR_RETURN(auto text, ReadFile(p.string()));
  return ParseHfConfig(text, p.string());
}

absl::StatusOr<Transformer> LoadModel(const std::string& dir, const LoadOptions& options) {
  ASSIGN_OR_RETURN(HfConfig config, LoadHfConfig(dir));
  const Head file_head = config.head;
  if (options.head) config.head = *options.head;
  torch::ScalarType dtype = torch::kFloat32;
  if (options.dtype) {
    dtype = *options.dtype;
  } else if (config.torch_dtype == "bfloat16") {
    dtype = torch::kBFloat16;
    LogBf16Advice();
  }
  if (dtype != torch::kFloat32 && dtype != torch::kBFloat16) {
    return absl::InvalidArgumentError("models compute in float32 or bfloat16");
  }

  // Which files hold which tensors.
  std::vector<std::unique_ptr<SafetensorsFile>> files;
  std::map<std::string, std::pair<const SafetensorsFile*, const TensorInfo*>> where;
  fs::path single = fs::path(dir) / "model.safetensors";
  fs::path index = fs::path(dir) / "model.safetensors.index.json";
  std::vector<std::string> shard_names;
  if (fs::exists(index)) {
    ASSIGN_OR_RETURN(auto text, ReadFile(index.string()));
    json j = json::parse(text, nullptr, false);
    if (j.is_discarded() || !j.contains("weight_map") || !j["weight_map"].is_object()) {
      return absl::InvalidArgumentError(absl::StrCat(index.string(), ": no weight_map object"));
    }
    std::set<std::string> names;
    for (const auto& [k, v] : j["weight_map"].items()) {
      if (!v.is_string()) return absl::InvalidArgumentError(absl::StrCat(index.string(), ": weight_map['", k, "'] is not a file name"));
      names.insert(v.get<std::string>());
    }
    shard_names.assign(names.begin(), names.end());
  } else if (fs::exists(single)) {
    shard_names.push_back("model.safetensors");
  } else {
    return absl::NotFoundError(absl::StrCat(dir, ": neither model.safetensors nor model.safetensors.index.json; ",
                                            "only safetensors checkpoints are read (convert .bin files first)"));
  }
  for (const auto& name : shard_names) {
    ASSIGN_OR_RETURN(auto f, SafetensorsFile::Open((fs::path(dir) / name).string()));
    for (const auto& t : f->tensors()) where[t.name] = {f.get(), &t};
    files.push_back(std::move(f));
  }

  Transformer model(config);
  const bool new_head = options.head && *options.head != file_head;
  if (new_head) model->InitWeights(options.init_seed, 0.02);  // then the backbone is overwritten below
  model->to(dtype);
  std::set<std::string> used;
  auto status = GuardExceptions("loading " + dir, [&]() -> absl::Status {
    for (auto& p : model->named_parameters(/*recurse=*/true)) {
      const std::string& name = p.key();
      auto it = where.find(name);
      if (it == where.end()) {
        if (new_head && (name.rfind("score.", 0) == 0 || name.rfind("lm_head.", 0) == 0)) continue;
        std::vector<int64_t> shape(p.value().sizes().begin(), p.value().sizes().end());
        return absl::NotFoundError(absl::StrCat(dir, ": tensor '", name, "' (shape [", absl::StrJoin(shape, ", "),
                                                "]) is missing from ", absl::StrJoin(shard_names, ", ")));
      }
      RETURN_IF_ERROR(CopyInto(*it->second.first, *it->second.second, p.value()));
      used.insert(name);
    }
    return absl::OkStatus();
  });
  RETURN_IF_ERROR(status);
  std::vector<std::string> unused;
  for (const auto& [name, loc] : where) {
    if (used.count(name)) continue;
    // Tied checkpoints may still carry lm_head; old ones carry rope buffers. A new head drops the old one.
    if (name == "lm_head.weight" || name.find("rotary_emb.inv_freq") != std::string::npos) continue;
    if (new_head && (name.rfind("score.", 0) == 0 || name == "lm_head.weight")) continue;
    unused.push_back(name);
  }
  if (!unused.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(dir, ": ", unused.size(), " tensors are not part of a ",
                                                   ArchitectureString(config.arch, config.head), " (first: '", unused[0],
                                                   "'); is config.json the one of these weights?"));
  }
  model->eval();
  return model;
}

absl::Status SaveModel(TransformerImpl& model, const std::string& dir, const SaveOptions& options) {
  const fs::path target(dir);
  std::error_code ec;
  if (fs::exists(target) && !fs::is_empty(target) && !options.overwrite) {
    return absl::FailedPreconditionError(
        absl::StrCat("'", dir, "' exists and is not empty: choose another folder or remove it"));
  }
  const torch::ScalarType dtype = options.dtype.value_or(model.dtype());
  ASSIGN_OR_RETURN(StDType st, StFromTorch(dtype));
  const fs::path tmp = fs::path(dir + ".tmp." + std::to_string(getpid()));
  fs::remove_all(tmp, ec);
  fs::create_directories(tmp, ec);
  if (ec) return FileError(ec.value(), "create", tmp.string());

  auto result = [&]() -> absl::Status {
    // Tensors in registration order, converted to the save dtype.
    std::vector<std::pair<std::string, torch::Tensor>> tensors;
    {
      torch::NoGradGuard no_grad;
      for (const auto& p : model.named_parameters(true)) {
        tensors.emplace_back(p.key(), p.value().detach().to(torch::kCPU, dtype).contiguous());
      }
    }
    // Greedy sharding.
    std::vector<std::vector<size_t>> shards(1);
    int64_t cur = 0, total = 0;
    for (size_t i = 0; i < tensors.size(); ++i) {
      int64_t bytes = tensors[i].second.numel() * static_cast<int64_t>(StDTypeSize(st));
      if (cur > 0 && cur + bytes > options.max_shard_bytes) {
        shards.emplace_back();
        cur = 0;
      }
      shards.back().push_back(i);
      cur += bytes;
      total += bytes;
    }
    json weight_map = json::object();
    for (size_t s = 0; s < shards.size(); ++s) {
      std::string name = shards.size() == 1
                             ? "model.safetensors"
                             : absl::StrFormat("model-%05d-of-%05d.safetensors", s + 1, shards.size());
      std::vector<TensorToWrite> w;
      for (size_t i : shards[s]) {
        const auto& [tname, t] = tensors[i];
        w.push_back({tname, st, std::vector<int64_t>(t.sizes().begin(), t.sizes().end()), t.data_ptr()});
        weight_map[tname] = name;
      }
      RETURN_IF_ERROR(WriteSafetensors((tmp / name).string(), w, {{"format", "pt"}}));
    }
    if (shards.size() > 1) {
      json idx = {{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}};
      RETURN_IF_ERROR(WriteTextFile(tmp / "model.safetensors.index.json", idx.dump(2) + "\n"));
    }
    HfConfig c = model.config();
    c.torch_dtype = TorchDtypeName(dtype);
    RETURN_IF_ERROR(WriteTextFile(tmp / "config.json", HfConfigToJson(c)));
    // generation_config.json: copied from the source folder when it has one, else from the config's ids.
    bool have_gen = false;
    if (!options.copy_tokenizer_from.empty()) {
      const fs::path from(options.copy_tokenizer_from);
      for (const char* const* f = kTokenizerFiles; *f != nullptr; ++f) {
        if (fs::exists(from / *f)) fs::copy_file(from / *f, tmp / *f, fs::copy_options::overwrite_existing, ec);
        if (ec) return FileError(ec.value(), "copy", (from / *f).string());
      }
      if (fs::exists(from / "generation_config.json") && c.head == Head::kCausalLM) {
        fs::copy_file(from / "generation_config.json", tmp / "generation_config.json",
                      fs::copy_options::overwrite_existing, ec);
        have_gen = !ec;
      }
    }
    if (!have_gen && c.head == Head::kCausalLM) {
      json g = {{"_from_model_config", true}, {"transformers_version", "4.51.3"}};
      if (c.bos_token_id) g["bos_token_id"] = *c.bos_token_id;
      if (c.eos_token_ids.size() == 1) g["eos_token_id"] = c.eos_token_ids[0];
      if (c.eos_token_ids.size() > 1) g["eos_token_id"] = c.eos_token_ids;
      if (c.pad_token_id) g["pad_token_id"] = *c.pad_token_id;
      RETURN_IF_ERROR(WriteTextFile(tmp / "generation_config.json", g.dump(2) + "\n"));
    }
    return absl::OkStatus();
  }();
  if (!result.ok()) {
    fs::remove_all(tmp, ec);
    return result;
  }
  // Commit: move the old folder aside, rename the new one in, then remove the old one.
  fs::path old;
  if (fs::exists(target)) {
    old = fs::path(dir + ".old." + std::to_string(getpid()));
    fs::rename(target, old, ec);
    if (ec) return FileError(ec.value(), "move aside the old", dir);
  }
  fs::rename(tmp, target, ec);
  if (ec) {
    if (!old.empty()) fs::rename(old, target);
    return FileError(ec.value(), "rename the new folder to", dir);
  }
  if (!old.empty()) fs::remove_all(old, ec);
  return SyncFolder(target.parent_path().empty() ? "." : target.parent_path().string());
}

}  // namespace rlhf::model
