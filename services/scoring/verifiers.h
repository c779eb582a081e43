// Rule-based rewards (RLVR): the final answer of a response against the sample's ground truth, format
// checks, length and missing-EOS penalties. Pure functions, thread-safe.
//
// Answer extraction (the first rule that applies):
//   1. the content of the LAST \boxed{...} / \fbox{...} (braces balanced)
//   2. what follows the last "answer is" / "answer:" (case-insensitive), up to the end of its line
//   3. what follows the last "####" (GSM8K), up to the end of its line
//   4. flexible mode only: the last number in the response; strict mode: no answer
// Normalisation (both sides): Unicode NFKC (full-width digits, unicode minus), surrounding space,
// dollars, \text{...} / \mathrm{...}, a trailing period, "\left" / "\right", spaces collapsed, lower case.
// Then numbers compare as numbers: "+3" == "3", "-0" == "0", "1,000" == "1000", ".5" == "0.50" == "1/2",
// "50%" == "0.5" only when the truth says "%" too; everything else compares as normalised text.
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace rlhf::scoring {

enum class ExtractMode { kStrict, kFlexible };

// The final answer of `response` per the rules above; nullopt when there is none.
std::optional<std::string> ExtractAnswer(std::string_view response, ExtractMode mode = ExtractMode::kFlexible);

// Normalised text of an answer (see above).
std::string NormalizeAnswer(std::string_view answer);

// The value of a normalised numeric answer ("-1,234.5", "3/4", "2e3"); nullopt when it is not a number.
std::optional<double> ParseNumber(std::string_view normalized);

// Whether the response's final answer equals `truth` (normalised; numbers by value, relative 1e-9).
bool AnswerMatches(std::string_view response, std::string_view truth, ExtractMode mode = ExtractMode::kFlexible);

}  // namespace rlhf::scoring
