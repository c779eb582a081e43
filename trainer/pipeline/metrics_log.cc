#include "trainer/pipeline/metrics_log.h"

#include <cerrno>
#include <cmath>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <sstream>

#include "common/file.h"
#include "common/metrics.h"

namespace rlhf::trainer {

namespace fs = std::filesystem;
using json = nlohmann::json;

absl::Status MetricsLog::Open(const std::string& run_dir, bool writer, int64_t keep_stage, int64_t keep_step) {
  writer_ = writer;
  if (!writer_) return absl::OkStatus();
  path_ = (fs::path(run_dir) / "metrics.jsonl").string();
  if (keep_stage >= 0) {
    RETURN_IF_ERROR(Keep(keep_stage, keep_step));
  } else {
    RETURN_IF_ERROR(WriteFileAtomic(path_, ""));
  }
  return Append();
}

absl::Status MetricsLog::DropAfter(int64_t stage_index, int64_t step) {
  if (!writer_) return absl::OkStatus();
  out_.close();
  RETURN_IF_ERROR(Keep(stage_index, step));
  return Append();
}

absl::Status MetricsLog::Append() {
  errno = 0;
  out_.open(path_, std::ios::app);
  if (!out_) return FileError(errno != 0 ? errno : EIO, "open for appending", path_);
  return absl::OkStatus();
}

void MetricsLog::Write(int64_t stage_index, const std::string& stage, int64_t step, const std::map<std::string, double>& m) {
  if (!writer_) return;
  json j = {{"stage_index", stage_index}, {"stage", stage}, {"step", step}};
  for (const auto& [k, v] : m) j[k] = std::isfinite(v) ? json(v) : json(nullptr);
  out_ << j.dump() << "\n";
  out_.flush();
  // The same figures as gauges (rlhf_train_<name>{stage=...}).
  auto& reg = Metrics::Process();
  for (const auto& [k, v] : m) {
    std::string name = "rlhf_train_";
    for (char ch : k) name += (std::isalnum(static_cast<unsigned char>(ch)) ? static_cast<char>(std::tolower(ch)) : '_');
    if (name.size() > 6 && name.compare(name.size() - 6, 6, "_total") == 0) name += "_value";
    reg.Gauge(name, "training metric " + k + " of the latest step", {{"stage", stage}}).Set(v);
  }
  reg.Gauge("rlhf_train_step", "steps done in the current stage", {{"stage", stage}}).Set(static_cast<double>(step));
}

absl::Status MetricsLog::Keep(int64_t keep_stage, int64_t keep_step) {
  if (!fs::exists(path_)) return absl::OkStatus();
  ASSIGN_OR_RETURN(auto text, ReadFile(path_));
  std::istringstream in(text);
  std::string line, kept;
  while (std::getline(in, line)) {
    auto j = json::parse(line, nullptr, false);
    if (j.is_discarded()) continue;
    int64_t si = j.value("stage_index", int64_t{0}), st = j.value("step", int64_t{0});
    if (si < keep_stage || (si == keep_stage && st <= keep_step)) kept += line + "\n";
  }
  return WriteFileAtomic(path_, kept);
}

}  // namespace rlhf::trainer
