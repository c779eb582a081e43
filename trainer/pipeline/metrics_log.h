// <run>/metrics.jsonl: one JSON line per step of every stage ({"stage_index", "stage", "step", figures...};
// a figure that is not finite is null), and the same figures as Prometheus gauges rlhf_train_<name>{stage}.
// Only the writer (rank 0) writes. On resume the lines after the checkpoint's step are dropped first, so the
// log holds every step exactly once.
// Thread-safety: one thread at a time.
#pragma once

#include <cstdint>
#include <fstream>
#include <map>
#include <string>

#include "common/status.h"

namespace rlhf::trainer {

class MetricsLog {
 public:
  // Opens <run>/metrics.jsonl for appending; with keep_stage >= 0 the lines after (keep_stage, keep_step)
  // are dropped first (resume), else the log starts empty.
  absl::Status Open(const std::string& run_dir, bool writer, int64_t keep_stage, int64_t keep_step);
  // Drops the lines after (stage_index, step) of an open log (the step loop learns its step from the learner).
  absl::Status DropAfter(int64_t stage_index, int64_t step);
  void Write(int64_t stage_index, const std::string& stage, int64_t step, const std::map<std::string, double>& m);

 private:
  absl::Status Keep(int64_t keep_stage, int64_t keep_step);
  absl::Status Append();
  bool writer_ = false;
  std::string path_;
  std::ofstream out_;
};

}  // namespace rlhf::trainer
