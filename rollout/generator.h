// Batched autoregressive generation over the transformer's per-slot KV cache.
//
// Each prompt is prefilled once; its G samples get copies of that cache (KVCache::CopySlot). Live
// sequences then advance one token per step together. With continuous batching a finished sequence's slot is
// refilled from the queue at once; without it, new prompts start only when every slot is free. A sequence
// stops on any eos id (kept as its last token, finish "stop"), on a stop string (finish "stop"; the text is
// cut before it), or at max_new_tokens or the cache capacity (finish "length").
//
// Not thread-safe: one Generate call at a time per Generator (it owns the cache).
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "common/model/transformer.h"
#include "common/status.h"
#include "rollout/sampler.h"

namespace rlhf::text {
class Tokenizer;
}

namespace rlhf::rollout {

struct PromptInput {
  std::string prompt_id;       // identity of the prompt: the random streams derive from it
  int64_t prompt_index = 0;
  std::vector<int32_t> ids;    // [P] prompt token ids
};

struct Generated {
  int64_t prompt_index = 0;
  int64_t sample_index = 0;
  std::vector<int32_t> completion_ids;
  std::vector<float> logprobs;  // per completion token, at the sampling temperature, before truncation
  std::string completion;       // decoded text (cut before a stop string); empty without a tokenizer
  bool stopped = false;         // true: "stop" (eos or stop string); false: "length"
  uint64_t seed = 0;            // the sample's stream seed
  // Per completion token, the version of the weights that drew it (only with a weights-version source).
  std::vector<int64_t> token_versions;
};

struct GeneratorOptions {
  int64_t slots = 16;         // sequences decoded together (the batch)
  int64_t capacity = 512;     // KV-cache length per slot: prompt + completion
  bool continuous = true;     // refill finished slots at once
};

class Generator {
 public:
  // `model` and `tokenizer` are not owned and must outlive the generator; tokenizer may be null (no stop
  // strings, no completion text).
  Generator(model::TransformerImpl* model, const text::Tokenizer* tokenizer, std::vector<int32_t> eos_ids,
            GeneratorOptions options);
  ~Generator();

  // Generates n samples for every prompt. `on_sample` (may be empty) sees each sample as it finishes; the
  // return value holds all, ordered by (prompt_index, sample_index). INVALID_ARGUMENT for ids outside the
  // vocabulary, an empty prompt, or a prompt that leaves no room in the cache.
  absl::StatusOr<std::vector<Generated>> Generate(const std::vector<PromptInput>& prompts, int64_t n,
                                                  const SamplingParams& params,
                                                  const std::function<void(const Generated&)>& on_sample = {});

  // Called after every decode step with the sequences decoded together and the tokens their KV cache holds
  // (0, 0 when a Generate call ends): the worker's cache use, for its metrics. Set before generating.
  void SetStepObserver(std::function<void(int64_t sequences, int64_t cached_tokens)> observer) {
    observer_ = std::move(observer);
  }
  // Called before every decode step (and before each prefill of new prompts): may swap new weights into the
  // model between steps and returns the version of the weights it holds now; each drawn token records it
  // (Generated::token_versions). The sequences keep their KV cache across a swap. Set before generating.
  void SetWeightsVersion(std::function<int64_t()> between_steps) { between_steps_ = std::move(between_steps); }
  int64_t capacity_tokens() const { return options_.slots * options_.capacity; }

 private:
  model::TransformerImpl* model_;
  const text::Tokenizer* tokenizer_;
  std::vector<int32_t> eos_;
  GeneratorOptions options_;
  std::unique_ptr<model::KVCache> cache_;
  std::function<void(int64_t, int64_t)> observer_;
  std::function<int64_t()> between_steps_;
};

}  // namespace rlhf::rollout
