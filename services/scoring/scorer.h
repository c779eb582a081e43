// The scorer: rewards from every configured source, composed with weights, and reference-model log-probs,
// for batches of samples. Used in process by trainers and `rlhf score`, and behind `rlhf serve scorer`.
//
// Sources (each on when its weight is not 0; reward_parts holds each source's value before weighting,
// reward = sum of weight * value):
//   exact_match  1 when the completion's final answer equals the sample's ground-truth field, else 0
//                (services/scoring/verifiers.h); a sample without that field is an error
//   format       1 when the completion matches the configured regex (ECMAScript, whole text), else 0
//   length       -max(0, completion tokens - free_tokens) / scale_tokens
//   missing_eos  -1 when the completion was cut at the length limit (finish_reason "length"), else 0
//   code         1 when `code_command` exits 0 in the sandbox (services/scoring/sandbox.h) with the
//                completion's last fenced code block (or the whole completion) in `code_file`, else 0;
//                a scorer whose machine cannot isolate the command refuses to start
//   reward_model the score head of an HF *ForSequenceClassification model at the last token of
//                prompt + completion, batched by tokens
// A source that fails for a sample gives that sample an error (no reward, counted in
// rlhf_reward_failures_total{source}); the other samples of the batch are scored.
// Reference: per-token log-probs of the completion under a frozen reference model at the sample's
// temperature (log-softmax in f32), and the mean k1 KL of the behaviour log-probs against them.
// Thread-safety: Score may be called from one thread at a time.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "common/config/config.h"
#include "common/model/transformer.h"
#include "common/status.h"
#include "rlhf/sample.pb.h"
#include "services/scoring/sandbox.h"

namespace rlhf::text {
class Tokenizer;
}

namespace rlhf::scoring {

struct RewardConfig {
  double exact_match_weight = 0;        // weight of the exact-match reward; 0 = off
  std::string answer_field = "answer";  // pass-through field holding the ground truth
  std::string extract = "flexible";     // strict (boxed / "answer is" / ####) | flexible (else the last number)
  double format_weight = 0;             // weight of the format reward; 0 = off
  std::string format_pattern;           // ECMAScript regex the whole completion must match
  double length_weight = 0;             // weight of the length penalty; 0 = off
  int64_t length_free_tokens = 256;     // completion tokens without penalty
  double length_scale_tokens = 256;     // tokens beyond the free ones that cost 1
  double missing_eos_weight = 0;        // weight of the missing-EOS penalty (-1 for truncated); 0 = off
  double code_weight = 0;               // weight of the code verifier (1 when the test command passes); 0 = off
  std::string code_command;             // shell command run in the sandbox's scratch directory (exit 0 = pass)
  std::string code_file = "solution.py";  // file the completion's code is written to
  std::string code_tests_field = "tests";  // pass-through field written to the file "tests" when present
  double code_wall_seconds = 10;        // sandbox limits: wall clock, CPU, memory
  int64_t code_cpu_seconds = 10;
  int64_t code_memory_mb = 1024;
  double reward_model_weight = 0;       // weight of the reward model's score; 0 = off
  std::string reward_model;             // HF folder with a score head
  std::string reference_model;          // HF folder of the frozen reference policy; "" = no reference log-probs
  int64_t batch_tokens = 8192;          // tokens (prompt + completion, padded) per model forward
  std::string dtype;                    // compute dtype of the models: "" = the checkpoint's, float32, bfloat16
  static const config::Section<RewardConfig>& Spec();  // under "reward"
};

struct ScoreOutcome {
  absl::Status status;      // not OK: a source failed; the sample has no reward
  float kl_behaviour = 0;   // mean (behaviour - reference) log-prob over the completion; 0 without both
};

// The code of a completion: its last ``` fenced block without the info string, else all of it.
std::string ExtractCode(const std::string& completion);

class Scorer {
 public:
  // Loads the configured models. INVALID_ARGUMENT when no source is on or a regex does not compile.
  static absl::StatusOr<std::unique_ptr<Scorer>> Create(const RewardConfig& config);

  // Fills reward, reward_parts (and ref_logprobs when want_ref and a reference is configured) of every
  // sample that every source scores; returns one outcome per sample. An error for the whole call only for
  // a failure no single sample explains (a LibTorch error in a batched forward).
  absl::StatusOr<std::vector<ScoreOutcome>> Score(std::vector<Sample>& samples, bool want_ref);

  // Checks a sample against the models: ids within the vocabulary, length within the context, a
  // temperature > 0 when reference log-probs are asked for. INVALID_ARGUMENT naming the problem.
  absl::Status Validate(const Sample& sample, bool want_ref) const;

  bool has_reference() const { return !reference_.is_empty(); }
  const RewardConfig& config() const { return config_; }
  std::vector<std::string> SourceNames() const;

  // Forward passes of `rows` (prompt + completion ids) in batches of at most config.batch_tokens padded
  // tokens: the reward model's score per row / the reference log-probs of each row's completion tokens.
  std::vector<float> RewardModelScores(const std::vector<const Sample*>& rows);
  std::vector<std::vector<float>> ReferenceLogProbs(const std::vector<const Sample*>& rows);

 private:
  explicit Scorer(RewardConfig config) : config_(std::move(config)) {}
  SandboxLimits Limits() const;
  RewardConfig config_;
  model::Transformer reward_model_{nullptr}, reference_{nullptr};
  struct FormatRe;
  std::shared_ptr<FormatRe> format_;
};

}  // namespace rlhf::scoring
