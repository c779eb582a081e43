// The scorer: rewards from every configured source, composed with weights, and reference-model log-probs,
// for batches of samples. Used in process by trainers and `rlhf score`, and behind `rlhf serve scorer`.
//
// Sources (services/scoring/sources.h: a chain, each on when its weight is not 0; reward_parts holds each
// source's value before weighting, reward = sum of weight * value):
//   exact_match  1 when the completion's final answer equals the sample's ground-truth field, else 0
//                (services/scoring/verifiers.h); a sample without that field is an error
//   format       1 when the completion matches the configured regex (ECMAScript, whole text), else 0
//   length       -max(0, completion tokens - free_tokens) / scale_tokens
//   missing_eos  -1 when the completion was cut at the length limit (finish_reason "length"), else 0
//   code         1 when `code_command` exits 0 in the sandbox (services/scoring/sandbox.h) with the
//                completion's last fenced code block (or the whole completion) in `code_file`, else 0;
//                where the machine cannot isolate the command (no user namespaces) the scorer still starts,
//                logs why, and refuses the code reward: every sample it would score gets FAILED_PRECONDITION
//                with that reason (no reward, never an unconfined run); the other sources keep serving
//   reward_model the score head of an HF *ForSequenceClassification model at the last token of
//                prompt + completion, batched by tokens
//   judge        a local causal LM prompted with a constitution (services/scoring/judge.h): pointwise,
//                P(yes) / (P(yes) + P(no)); pairwise, the mean over the other samples of the same prompt
//                (in the same request) of P(this one is better), each pair judged in both orders
//   process      per-step scores (services/scoring/process.h) in step_rewards / step_ends, aggregated by
//                process_aggregate: from the rule-based arithmetic step checker, or from a process reward
//                model's score head at each step's last token, through a sigmoid
// A source that fails for a sample gives that sample an error (no reward, counted in
// rlhf_reward_failures_total{source}); the other samples of the batch are scored.
// Reference: per-token log-probs of the completion under a frozen reference model at the sample's
// temperature (log-softmax in f32), and the mean k1 KL of the behaviour log-probs against them.
// Thread-safety: Score may be called from one thread at a time.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "common/config/config.h"
#include "common/model/transformer.h"
#include "common/status.h"
#include "rlhf/sample.pb.h"
#include "services/scoring/process.h"
#include "services/scoring/sandbox.h"
#include "services/scoring/verifiers.h"

namespace rlhf::text {
class Tokenizer;
}

namespace rlhf::scoring {

enum class JudgeMode { kPointwise, kPairwise };
enum class ProcessSourceKind { kChecker, kModel };

struct RewardConfig {
  double exact_match_weight = 0;        // weight of the exact-match reward; 0 = off
  std::string answer_field = "answer";  // pass-through field holding the ground truth
  ExtractMode extract = ExtractMode::kFlexible;  // how exact_match finds the answer (verifiers.h: flexible, strict, whole, ...)
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
  double judge_weight = 0;              // weight of the judge's score; 0 = off
  std::string judge_model;              // HF folder of the judge (causal LM)
  std::string judge_tokenizer;          // folder / tokenizer.json of the judge; "" = judge_model
  std::string judge_constitution;       // text file filled in for {constitution}
  JudgeMode judge_mode = JudgeMode::kPointwise;  // pointwise | pairwise
  std::string judge_template =
      "{constitution}\n\nPrompt: {prompt}\nResponse: {completion}\n"
      "Does the response follow the principles above? Answer Yes or No.\nAnswer:";
  std::string judge_pair_template =
      "{constitution}\n\nPrompt: {prompt}\nResponse A: {first}\nResponse B: {second}\n"
      "Which response follows the principles better? Answer A or B.\nAnswer:";
  std::string judge_yes = " Yes", judge_no = " No";     // pointwise verdict texts
  std::string judge_first = " A", judge_second = " B";  // pairwise verdict texts
  bool judge_chat_template = false;     // wrap the prompt as the user message of the judge's chat template
  double process_weight = 0;            // weight of the aggregated process reward; 0 = off
  ProcessSourceKind process_source = ProcessSourceKind::kChecker;  // checker (rule-based arithmetic steps) | model (process reward model)
  std::string process_model;            // HF folder with a score head (num_labels 1) for process_source model
  std::string process_separator = "\n"; // text that ends a step
  StepAggregate process_aggregate = StepAggregate::kMean;  // mean | min | last of the step scores
  std::string tokenizer;                // the policy's tokenizer (folder or file): places step ends on tokens
  std::vector<std::string> monitor;     // rule-based sources computed with weight 0 (reward_parts only), e.g. exact_match
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

class RewardSource;

class Scorer {
 public:
  // Builds the chain of sources and loads their models. INVALID_ARGUMENT when no source is on, a regex does
  // not compile or a source lacks its file. Isolation missing for the code reward is not an error here: see
  // code_refusal().
  static absl::StatusOr<std::unique_ptr<Scorer>> Create(const RewardConfig& config);
  ~Scorer();

  // Fills reward, reward_parts (and ref_logprobs when want_ref and a reference is configured) of every
  // sample that every source scores; returns one outcome per sample. An error for the whole call only for
  // a failure no single sample explains (a LibTorch error in a batched forward).
  // `groups` (empty, or one entry per sample) keeps samples of different requests apart where samples are
  // judged against each other (pairwise judge): two samples are compared when they share the group and
  // the prompt_id.
  absl::StatusOr<std::vector<ScoreOutcome>> Score(std::vector<Sample>& samples, bool want_ref,
                                                  const std::vector<int32_t>& groups = {});

  // Checks a sample against the models: ids within the vocabulary, length within the context, a
  // temperature > 0 when reference log-probs are asked for. INVALID_ARGUMENT naming the problem.
  absl::Status Validate(const Sample& sample, bool want_ref) const;

  bool has_reference() const { return !reference_.is_empty(); }
  const RewardConfig& config() const { return config_; }
  // The sources with a weight, in chain order.
  std::vector<std::string> SourceNames() const;
  // OK, or why the code reward is refused on this machine (FAILED_PRECONDITION: the sandbox cannot isolate).
  absl::Status code_refusal() const;

 private:
  explicit Scorer(RewardConfig config);
  struct Link {
    std::string name;
    double weight = 0;  // 0 for a monitored source
    bool uses_models = false;
    std::unique_ptr<RewardSource> source;
  };
  RewardConfig config_;
  std::vector<Link> chain_;
  // The models whose context and vocabulary bound a sample (Validate): the chain's, then the reference.
  std::vector<const model::TransformerImpl*> models_;
  bool chain_has_models_ = false;
  model::Transformer reference_{nullptr};
};

}  // namespace rlhf::scoring
