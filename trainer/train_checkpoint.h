// Training checkpoints: everything needed to continue a run exactly.
//
//   <run>/checkpoints/step-00000012/         one committed checkpoint
//       policy/, critic/ ...                 HF model folders (loadable by transformers as they are)
//       optimizer-<model>.safetensors        AdamW moments in f32
//       state.json                           step, data cursor, RNG, counters, KL coefficient, ...
//       MANIFEST.json                        magic, format version, the models, size and FNV-1a 64 checksum
//                                            of every file, and a checksum of the manifest itself
//   <run>/checkpoints/latest                 name of the newest committed checkpoint
//
// A checkpoint is written to a temporary folder and renamed on commit, then `latest` is replaced (write +
// rename), so a crash at any point leaves the previous checkpoint intact. Loading verifies the manifest;
// a damaged or partial checkpoint is refused with a message and the previous one is used.
#pragma once

#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/status.h"
#include "trainer/learner.h"

namespace rlhf::trainer {

struct TrainState {
  std::string stage;                 // stage name, e.g. "sft"
  int64_t stage_index = 0;           // position of the stage in the pipeline
  int64_t step = 0;                  // steps of this stage done (optimizer steps or policy steps)
  int64_t learner_steps = 0;         // Learner::steps()
  int64_t skipped_steps = 0;
  nlohmann::json extra = nlohmann::json::object();  // stage-specific: data cursor, KL coefficient, ...
};

// Writes a checkpoint of every model of `learner` with `state` (rank 0 only; other ranks return OK at
// once). `tokenizer_from`: folder whose tokenizer files go along with each model. Keeps the newest `keep`
// checkpoints (0 = all). Returns the checkpoint folder.
absl::StatusOr<std::string> SaveTrainCheckpoint(const std::string& run_dir, Learner& learner, const TrainState& state,
                                                const std::string& tokenizer_from, int64_t keep);

// The newest checkpoint of `run_dir` that verifies, newest first by `latest` then by step; NOT_FOUND when
// there is none. Each refused checkpoint is logged with the reason.
absl::StatusOr<std::string> FindLatestCheckpoint(const std::string& run_dir);

// Checks a checkpoint: its manifest (magic, format version, its own checksum, the models it holds, every file
// a checkpoint of those models must hold listed, each entry well formed), every listed file's size and
// checksum, and state.json's values in range. DATA_LOSS naming the file and what is wrong; never throws.
absl::Status VerifyCheckpoint(const std::string& dir);

// Reads state.json of a checkpoint, every value range-checked (DATA_LOSS naming the field otherwise).
absl::StatusOr<TrainState> ReadTrainState(const std::string& dir);

// The checksum a manifest carries of itself ("manifest_fnv1a64"): FNV-1a 64 of its compact JSON without
// that key, as 16 hex digits.
std::string ManifestChecksum(const nlohmann::json& manifest);

// Loads weights and optimizer state of every model of `learner` from a checkpoint (every rank), and the
// learner's counters. The models must have the checkpoint's architecture.
absl::Status LoadTrainCheckpoint(const std::string& dir, Learner& learner, const TrainState& state);

// FNV-1a 64 of a file's bytes, as 16 hex digits.
absl::StatusOr<std::string> FileChecksum(const std::string& path);

}  // namespace rlhf::trainer
