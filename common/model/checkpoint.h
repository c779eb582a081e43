// Hugging Face model folders: config.json, generation_config.json, model.safetensors or shards
// (model-0000i-of-0000N.safetensors + model.safetensors.index.json), tokenizer files alongside.
// What SaveModel writes loads in HF transformers unchanged: the same tensor names, shapes and config keys.
#pragma once

#include <optional>
#include <string>

#include "common/model/hf_config.h"
#include "common/model/transformer.h"
#include "common/status.h"

namespace rlhf::model {

// The tokenizer and chat-template files copied along with a model.
extern const char* const kTokenizerFiles[];

struct LoadOptions {
  // Compute dtype of the loaded model (f32 or bf16). Default: the checkpoint's (config.json torch_dtype):
  // bf16 for bf16 files, f32 for f32 / f16 files. Never a measurement: the same command gives the same
  // logits on every run (LogBf16Advice only says in the log what this machine would run faster).
  std::optional<torch::ScalarType> dtype;
  // Load the backbone under another head (e.g. a value head initialised for a critic from a policy);
  // parameters of the new head that the files lack are initialised with normal(0, 0.02) from `init_seed`.
  std::optional<Head> head;
  uint64_t init_seed = 0;
};

// LoadOptions whose compute dtype is named by `dtype`: "" keeps the default (the checkpoint's, with the
// measured choice for bf16), else float32 / f32 / bfloat16 / bf16.
absl::StatusOr<LoadOptions> LoadOptionsForDtype(const std::string& dtype);

// Reads `dir`/config.json.
absl::StatusOr<HfConfig> LoadHfConfig(const std::string& dir);

// Loads a model folder. Errors name the file and tensor: NOT_FOUND for a missing folder, config or tensor;
// DATA_LOSS for truncated or damaged files; INVALID_ARGUMENT for unsupported configs, wrong shapes, or
// unsupported dtypes.
absl::StatusOr<Transformer> LoadModel(const std::string& dir, const LoadOptions& options = {});

struct SaveOptions {
  std::optional<torch::ScalarType> dtype;  // default: the model's dtype
  int64_t max_shard_bytes = int64_t{5} << 30;  // a file holds at most this many bytes (one tensor may exceed it)
  std::string copy_tokenizer_from;  // folder whose tokenizer files (and generation_config.json) are copied
  bool overwrite = false;           // replace an existing non-empty folder
};

// Writes a model folder through a temporary folder renamed into place. FAILED_PRECONDITION when `dir`
// exists and is not empty (unless overwrite); UNAVAILABLE / DATA_LOSS on I/O errors.
absl::Status SaveModel(TransformerImpl& model, const std::string& dir, const SaveOptions& options = {});

// Advice only, once per process: measures a 512^3 matrix product in f32 and bf16 (~10 ms) and logs which
// this machine runs faster, with the key that picks it. The compute dtype never depends on it.
void LogBf16Advice();

// "float32" / "bfloat16" / "float16" <-> torch dtypes.
absl::StatusOr<torch::ScalarType> ParseTorchDtype(const std::string& name);
const char* TorchDtypeName(torch::ScalarType t);

}  // namespace rlhf::model
