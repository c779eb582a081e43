// The judge (RLAIF / constitutional): a local causal LM prompted with a constitution and a response (or two),
// scored by the probability of its verdict tokens.
//
// Pointwise: the prompt is reward.judge_template with {constitution}, {prompt} and {completion} filled in;
// the score is P(yes) / (P(yes) + P(no)), where P(v) is the probability of the verdict text v
// (reward.judge_yes / judge_no, several tokens allowed: the product of their probabilities) right after the
// prompt, at temperature 1.
// Pairwise: reward.judge_pair_template with {constitution}, {prompt}, {first} and {second}; the verdicts are
// reward.judge_first / judge_second. Both orders are judged and averaged to cancel position bias:
//   P(a better than b) = (P_first(a, b) + P_second(b, a)) / 2, with P_second = 1 - P_first.
// Placeholders are filled in one pass (a response that contains "{prompt}" stays as written). With
// reward.judge_chat_template the filled-in text is the user message of the judge's chat template (generation
// prompt added), else it is encoded as is (with the tokenizer's special tokens, e.g. a BOS).
#pragma once

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/model/transformer.h"
#include "common/status.h"
#include "common/text/model_text.h"

namespace rlhf::scoring {

struct RewardConfig;

// Fills {name} placeholders from `values` in one pass; other braces are kept.
std::string FillTemplate(const std::string& tmpl, const std::map<std::string, std::string>& values);

class Judge {
 public:
  static absl::StatusOr<std::unique_ptr<Judge>> Create(const RewardConfig& config);

  // Token ids of the judge prompt for one response / for a pair in the given order.
  absl::StatusOr<std::vector<int32_t>> PointwisePrompt(const std::string& prompt, const std::string& completion) const;
  absl::StatusOr<std::vector<int32_t>> PairPrompt(const std::string& prompt, const std::string& first,
                                                  const std::string& second) const;

  // P(yes) / (P(yes) + P(no)) per (prompt, completion). An item whose judge prompt exceeds the judge's
  // context fails alone (INVALID_ARGUMENT in its slot).
  std::vector<absl::StatusOr<double>> Pointwise(const std::vector<std::pair<std::string, std::string>>& items);
  // P(a better than b) per (prompt, a, b), both orders averaged.
  struct Pair {
    std::string prompt, a, b;
  };
  std::vector<absl::StatusOr<double>> Pairwise(const std::vector<Pair>& items);

 private:
  Judge() = default;
  absl::StatusOr<std::vector<int32_t>> Encode(const std::string& text) const;
  // P(verdict 0) / (P(verdict 0) + P(verdict 1)) after each prompt.
  std::vector<absl::StatusOr<double>> Verdict(const std::vector<absl::StatusOr<std::vector<int32_t>>>& prompts,
                                              const std::vector<int32_t>& v0, const std::vector<int32_t>& v1);

  model::Transformer model_{nullptr};
  std::optional<text::ModelText> text_;  // the judge's tokenizer and chat template
  bool chat_template_ = false;            // wrap prompts as the user turn of the chat template
  std::string constitution_, template_, pair_template_;
  std::vector<int32_t> yes_, no_, first_, second_;
  int64_t batch_tokens_ = 8192;
};

}  // namespace rlhf::scoring
