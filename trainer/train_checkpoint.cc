#include "trainer/train_checkpoint.h"

#include <ATen/CPUGeneratorImpl.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/file.h"
#include "common/hash.h"
#include "common/model/checkpoint.h"
#include "common/model/safetensors.h"

namespace rlhf::trainer {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

constexpr const char* kMagic = "rlhf-train-checkpoint";
// 2: the manifest lists the models and carries its own checksum; every file a checkpoint of those models
// must hold is required.
constexpr int kVersion = 2;

// The files a checkpoint of `models` must hold.
std::vector<std::string> RequiredFiles(const std::vector<std::string>& models) {
  std::vector<std::string> out = {"state.json", "rng.safetensors"};
  for (const auto& m : models) {
    out.push_back("optimizer-" + m + ".safetensors");
    out.push_back(m + "/config.json");
    out.push_back(m + "/model.safetensors");
  }
  return out;
}

// A path inside the checkpoint: relative, no "..", not empty.
bool InsideFolder(const std::string& rel) {
  if (rel.empty() || rel.front() == '/') return false;
  for (const auto& part : fs::path(rel)) {
    if (part == "..") return false;
  }
  return true;
}

bool IsHex16(const json& v) {
  if (!v.is_string()) return false;
  const auto& s = v.get_ref<const std::string&>();
  return s.size() == 16 && std::all_of(s.begin(), s.end(), [](char c) { return std::isxdigit(static_cast<unsigned char>(c)); });
}

// An integer field of `j` within [lo, hi]; `what` names the file in errors.
absl::StatusOr<int64_t> IntIn(const json& j, const std::string& key, int64_t lo, int64_t hi, const std::string& what) {
  if (!j.contains(key)) return absl::DataLossError(absl::StrCat(what, ": no '", key, "'"));
  const auto& v = j[key];
  if (!v.is_number_integer()) return absl::DataLossError(absl::StrCat(what, ": '", key, "' is not an integer: ", v.dump()));
  const int64_t x = v.get<int64_t>();
  if (x < lo || x > hi) {
    return absl::DataLossError(absl::StrCat(what, ": '", key, "' = ", x, " is out of range [", lo, ", ", hi, "]"));
  }
  return x;
}

absl::Status WriteText(const fs::path& p, const std::string& text) { return WriteFileAtomic(p.string(), text); }

absl::StatusOr<std::string> ReadText(const fs::path& p) { return ReadFile(p.string()); }

absl::Status SaveTensors(const fs::path& path, const std::map<std::string, torch::Tensor>& tensors) {
  std::vector<torch::Tensor> keep;
  std::vector<model::TensorToWrite> w;
  for (const auto& [name, t] : tensors) {
    auto c = t.detach().contiguous();
    keep.push_back(c);
    model::StDType dt = c.scalar_type() == torch::kUInt8 ? model::StDType::kU8 : model::StDType::kF32;
    if (dt == model::StDType::kF32 && c.scalar_type() != torch::kFloat32) {
      return absl::InternalError(absl::StrCat("state tensor ", name, " is not f32"));
    }
    w.push_back({name, dt, std::vector<int64_t>(c.sizes().begin(), c.sizes().end()), c.data_ptr()});
  }
  return model::WriteSafetensors(path.string(), w, {{"format", "rlhf"}});
}

absl::StatusOr<std::map<std::string, torch::Tensor>> LoadTensors(const fs::path& path) {
  ASSIGN_OR_RETURN(auto file, model::SafetensorsFile::Open(path.string()));
  std::map<std::string, torch::Tensor> out;
  for (const auto& info : file->tensors()) {
    auto dt = info.dtype == model::StDType::kU8 ? torch::kUInt8 : torch::kFloat32;
    if (info.dtype != model::StDType::kU8 && info.dtype != model::StDType::kF32) {
      return absl::DataLossError(absl::StrCat(path.string(), ": tensor ", info.name, " has an unexpected dtype"));
    }
    auto t = torch::empty(info.shape, torch::TensorOptions().dtype(dt));
    std::memcpy(t.data_ptr(), file->Data(info), info.end - info.begin);
    out[info.name] = t;
  }
  return out;
}

std::vector<fs::path> CheckpointsNewestFirst(const fs::path& root) {
  std::vector<fs::path> out;
  std::error_code ec;
  if (!fs::is_directory(root, ec)) return out;
  for (const auto& e : fs::directory_iterator(root, ec)) {
    const std::string name = e.path().filename().string();
    if (e.is_directory() && name.rfind("step-", 0) == 0) out.push_back(e.path());
  }
  std::sort(out.begin(), out.end(), [](const fs::path& a, const fs::path& b) { return a.filename() > b.filename(); });
  return out;
}

}  // namespace

absl::StatusOr<std::string> FileChecksum(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open"));
  uint64_t h = kFnv1a64Offset;
  std::vector<char> buf(1 << 20);
  while (in) {
    in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
    h = Fnv1a64(buf.data(), static_cast<size_t>(in.gcount()), h);
  }
  return absl::StrFormat("%016x", h);
}

std::string ManifestChecksum(const json& manifest) {
  json body = manifest;
  if (body.is_object()) body.erase("manifest_fnv1a64");
  return absl::StrFormat("%016x", Fnv1a64(body.dump()));  // keys sorted: one text per manifest
}

absl::StatusOr<std::string> SaveTrainCheckpoint(const std::string& run_dir, Learner& learner, const TrainState& state,
                                                const std::string& tokenizer_from, int64_t keep) {
  const fs::path root = fs::path(run_dir) / "checkpoints";
  const std::string name = absl::StrFormat("step-%02d-%08d", state.stage_index, state.step);
  const fs::path final_dir = root / name;
  if (learner.group().rank() != 0) return final_dir.string();
  std::error_code ec;
  fs::create_directories(root, ec);
  const fs::path tmp = root / (".tmp-" + name + "-" + std::to_string(getpid()));
  fs::remove_all(tmp, ec);
  fs::create_directories(tmp, ec);
  if (ec) return FileError(ec.value(), "create", tmp.string());
  auto written = [&]() -> absl::Status {
    for (auto& m : learner.models()) {
      model::SaveOptions so;
      so.copy_tokenizer_from = tokenizer_from;
      so.dtype = torch::kFloat32;  // exact resume: the master weights as they are
      RETURN_IF_ERROR(model::SaveModel(*m.net, (tmp / m.name).string(), so));
      RETURN_IF_ERROR(SaveTensors(tmp / ("optimizer-" + m.name + ".safetensors"), m.opt->StateTensors()));
    }
    RETURN_IF_ERROR(SaveTensors(tmp / "rng.safetensors", {{"cpu", at::detail::getDefaultCPUGenerator().get_state()}}));
    json st = {{"stage", state.stage},
               {"stage_index", state.stage_index},
               {"step", state.step},
               {"learner_steps", learner.steps()},
               {"skipped_steps", learner.skipped_steps()},
               {"optimizer_steps", json::object()},
               {"extra", state.extra}};
    for (auto& m : learner.models()) st["optimizer_steps"][m.name] = m.opt->steps();
    RETURN_IF_ERROR(WriteText(tmp / "state.json", st.dump(2) + "\n"));
    // Manifest last: checksums of everything above.
    json files = json::object();
    for (const auto& e : fs::recursive_directory_iterator(tmp)) {
      if (!e.is_regular_file()) continue;
      const std::string rel = fs::relative(e.path(), tmp).string();
      ASSIGN_OR_RETURN(auto sum, FileChecksum(e.path().string()));
      files[rel] = {{"bytes", static_cast<int64_t>(e.file_size())}, {"fnv1a64", sum}};
    }
    json models = json::array();
    for (auto& m : learner.models()) models.push_back(m.name);
    json manifest = {{"magic", kMagic}, {"version", kVersion}, {"models", models}, {"files", files}};
    manifest["manifest_fnv1a64"] = ManifestChecksum(manifest);
    return WriteText(tmp / "MANIFEST.json", manifest.dump(2) + "\n");
  }();
  if (!written.ok()) {
    fs::remove_all(tmp, ec);
    return written;
  }
  fs::remove_all(final_dir, ec);
  fs::rename(tmp, final_dir, ec);
  if (ec) return FileError(ec.value(), "commit", final_dir.string());
  RETURN_IF_ERROR(SyncFolder(root.string()));
  RETURN_IF_ERROR(WriteText(root / "latest", name + "\n"));
  if (keep > 0) {
    auto all = CheckpointsNewestFirst(root);
    for (size_t i = static_cast<size_t>(keep); i < all.size(); ++i) fs::remove_all(all[i], ec);
  }
  return final_dir.string();
}

absl::Status VerifyCheckpoint(const std::string& dir) {
  const fs::path d(dir);
  auto text = ReadText(d / "MANIFEST.json");
  if (!text.ok()) return absl::DataLossError(absl::StrCat(dir, ": no MANIFEST.json (an uncommitted checkpoint)"));
  const std::string what = dir + "/MANIFEST.json";
  auto m = json::parse(*text, nullptr, false);
  if (m.is_discarded() || !m.is_object() || m.value("magic", json()) != kMagic) {
    return absl::DataLossError(absl::StrCat(what, " is not a checkpoint manifest"));
  }
  if (m.value("version", json()) != kVersion) {
    return absl::DataLossError(absl::StrCat(dir, ": checkpoint format version ", m.value("version", json()).dump(),
                                            " is not ", kVersion, " (written by another release)"));
  }
  // The manifest vouches for itself before anything it says is believed.
  if (!IsHex16(m.value("manifest_fnv1a64", json())) || m["manifest_fnv1a64"] != ManifestChecksum(m)) {
    return absl::DataLossError(absl::StrCat(what, " fails its own checksum (edited or damaged)"));
  }
  const json& models = m.value("models", json());
  if (!models.is_array() || models.empty()) return absl::DataLossError(absl::StrCat(what, ": no models listed"));
  std::vector<std::string> names;
  for (const auto& n : models) {
    if (!n.is_string() || n.get<std::string>().empty() || n.get<std::string>().find('/') != std::string::npos ||
        n.get<std::string>() == "..") {
      return absl::DataLossError(absl::StrCat(what, ": malformed model name ", n.dump()));
    }
    names.push_back(n.get<std::string>());
  }
  const json& files = m.value("files", json());
  if (!files.is_object()) return absl::DataLossError(absl::StrCat(what, ": 'files' is not an object"));
  for (const auto& need : RequiredFiles(names)) {
    if (!files.contains(need)) {
      return absl::DataLossError(absl::StrCat(what, " does not list ", need, ", which a checkpoint of models ",
                                              models.dump(), " holds"));
    }
  }
  for (const auto& [rel, info] : files.items()) {
    if (!InsideFolder(rel) || !info.is_object() || !info.contains("bytes") || !info["bytes"].is_number_integer() ||
        info["bytes"].get<int64_t>() < 0 || !IsHex16(info.value("fnv1a64", json()))) {
      return absl::DataLossError(absl::StrCat(what, ": malformed entry \"", rel, "\": ", info.dump()));
    }
    const fs::path p = d / rel;
    std::error_code ec;
    auto size = fs::file_size(p, ec);
    if (ec) return absl::DataLossError(absl::StrCat(p.string(), " is missing"));
    const int64_t want = info["bytes"].get<int64_t>();
    if (static_cast<int64_t>(size) != want) {
      return absl::DataLossError(absl::StrCat(p.string(), " has ", size, " bytes, the manifest says ", want, " (truncated?)"));
    }
    ASSIGN_OR_RETURN(auto sum, FileChecksum(p.string()));
    if (sum != info["fnv1a64"].get<std::string>()) return absl::DataLossError(absl::StrCat(p.string(), " fails its checksum"));
  }
  // Every value the resume reads is in range.
  return ReadTrainState(dir).status();
}

absl::StatusOr<std::string> FindLatestCheckpoint(const std::string& run_dir) {
  const fs::path root = fs::path(run_dir) / "checkpoints";
  std::vector<fs::path> candidates;
  auto latest = ReadText(root / "latest");
  if (latest.ok()) {
    std::string name = *latest;
    while (!name.empty() && (name.back() == '\n' || name.back() == ' ')) name.pop_back();
    candidates.push_back(root / name);
  }
  for (const auto& p : CheckpointsNewestFirst(root)) {
    if (candidates.empty() || p != candidates[0]) candidates.push_back(p);
  }
  for (const auto& p : candidates) {
    absl::Status st = GuardExceptions("checkpoint verification", [&] { return VerifyCheckpoint(p.string()); });
    if (st.ok()) return p.string();
    spdlog::warn("checkpoint refused: {}; trying the previous one", std::string(st.message()));
  }
  return absl::NotFoundError(absl::StrCat("no usable checkpoint under ", root.string()));
}

absl::StatusOr<TrainState> ReadTrainState(const std::string& dir) {
  ASSIGN_OR_RETURN(auto text, ReadText(fs::path(dir) / "state.json"));
  const std::string what = dir + "/state.json";
  auto j = json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return absl::DataLossError(absl::StrCat(what, " is not a JSON object"));
  constexpr int64_t kMax = int64_t{1} << 50;
  TrainState s;
  if (!j.contains("stage") || !j["stage"].is_string() || j["stage"].get<std::string>().empty()) {
    return absl::DataLossError(absl::StrCat(what, ": no stage name"));
  }
  s.stage = j["stage"].get<std::string>();
  ASSIGN_OR_RETURN(s.stage_index, IntIn(j, "stage_index", 0, 1000, what));
  ASSIGN_OR_RETURN(s.step, IntIn(j, "step", 0, kMax, what));
  ASSIGN_OR_RETURN(s.learner_steps, IntIn(j, "learner_steps", 0, kMax, what));
  ASSIGN_OR_RETURN(s.skipped_steps, IntIn(j, "skipped_steps", 0, s.learner_steps, what));
  if (j.contains("extra")) {
    if (!j["extra"].is_object()) return absl::DataLossError(absl::StrCat(what, ": 'extra' is not an object"));
    s.extra = j["extra"];
  }
  if (j.contains("optimizer_steps")) {
    const auto& o = j["optimizer_steps"];
    if (!o.is_object()) return absl::DataLossError(absl::StrCat(what, ": 'optimizer_steps' is not an object"));
    for (const auto& [name, v] : o.items()) RETURN_IF_ERROR(IntIn(o, name, 0, s.learner_steps, what + " optimizer_steps").status());
    s.extra["__optimizer_steps"] = o;
  }
  return s;
}

absl::Status LoadTrainCheckpoint(const std::string& dir, Learner& learner, const TrainState& state) {
  const fs::path d(dir);
  for (auto& m : learner.models()) {
    model::LoadOptions lo;
    lo.dtype = torch::kFloat32;
    ASSIGN_OR_RETURN(auto saved, model::LoadModel((d / m.name).string(), lo));
    RETURN_IF_ERROR(GuardExceptions("restore weights", [&]() -> absl::Status {
      torch::NoGradGuard no_grad;
      auto dst = m.net->named_parameters(true);
      auto src = saved->named_parameters(true);
      for (const auto& p : dst) {
        const auto* s = src.find(p.key());
        if (s == nullptr) return absl::DataLossError(absl::StrCat(dir, ": ", m.name, " lacks ", p.key()));
        p.value().copy_(*s);
      }
      return absl::OkStatus();
    }));
    ASSIGN_OR_RETURN(auto opt, LoadTensors(d / ("optimizer-" + m.name + ".safetensors")));
    int64_t steps = state.extra.contains("__optimizer_steps")
                        ? state.extra["__optimizer_steps"].value(m.name, int64_t{0})
                        : state.learner_steps - state.skipped_steps;
    RETURN_IF_ERROR(m.opt->LoadState(opt, steps));
  }
  ASSIGN_OR_RETURN(auto rng, LoadTensors(d / "rng.safetensors"));
  if (rng.count("cpu")) {
    at::Generator gen = at::detail::getDefaultCPUGenerator();
    gen.set_state(rng["cpu"]);
  }
  learner.RestoreCounters(state.learner_steps, state.skipped_steps);
  return absl::OkStatus();
}

}  // namespace rlhf::trainer
