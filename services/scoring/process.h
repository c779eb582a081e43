// Process rewards: a completion cut into steps at a separator, one score per step.
//
// Steps: the completion text split after every occurrence of the separator (default "\n"); a step keeps its
// separator, steps that are only whitespace are dropped. A step's last token is the first completion token
// whose decoded prefix covers the step's text (separator included).
//
// The rule-based arithmetic checker scores a step by its equations "<expression> = <number>" (integers and
// decimals, + - * / and parentheses, evaluated in double precision): 1 when every equation of the step
// holds, 0 when one does not or its left side does not parse; a step without an equation is not scored.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "common/status.h"

namespace rlhf::text {
class Tokenizer;
}

namespace rlhf::scoring {

struct Step {
  size_t begin = 0, end = 0;  // byte range of the step in the text, separator included
  std::string text;           // the step without its separator
};
std::vector<Step> SplitSteps(const std::string& text, const std::string& separator);

// Value of an arithmetic expression (+ - * / parentheses, unary minus, decimals); nullopt when it does not
// parse or divides by zero.
std::optional<double> EvaluateArithmetic(const std::string& expression);

// 1 / 0 for a step whose equations all hold / do not; nullopt for a step without an equation.
std::optional<float> CheckArithmeticStep(const std::string& step);

// For each byte offset in `ends` (ascending), the index of the first token of `ids` whose decoded prefix
// (special tokens skipped) reaches that offset: the step's last token. INVALID_ARGUMENT when an offset is
// beyond the decoded text.
absl::StatusOr<std::vector<int32_t>> TokenEnds(const text::Tokenizer& tokenizer, const std::vector<int32_t>& ids,
                                               const std::vector<size_t>& ends);

// How the step scores make the process reward (reward.process_aggregate).
enum class StepAggregate { kMean, kMin, kLast };
// mean | min | last of the step scores; 0 for none.
float AggregateSteps(const std::vector<float>& scores, StepAggregate mode);

}  // namespace rlhf::scoring
