// Rule-based rewards (RLVR): the final answer of a response against the sample's ground truth, format
// checks, length and missing-EOS penalties. Pure functions, thread-safe.
//
// Modes (reward.extract), each comparing "the answer" of a response with the truth:
//   flexible     (default) a marked answer (below) if there is one; else, when the truth is a sequence of k >= 2
//                numbers ("0 2 5 6"), the LAST k numbers of the response, element by element; else the last
//                number of the response; else the whole response
//   strict       a marked answer only: the content of the last \boxed{...} / \fbox{...} (braces balanced),
//                else what follows the last "answer is" / "answer:" (case-insensitive; its leading number when
//                it starts with one), else what follows the last "####", each up to the end of its line;
//                no marked answer = no match
//   whole        the whole response
//   number       the whole response, which must be exactly one number
//   numbers      every number of the response, in order, against every number of the truth (same count)
//   last_number  the last number of the response (the truth one number): unsafe where answers hold several
//                numbers ("9 9 3" ends in the 3 of "0 0 0 3")
// Normalisation (both sides): Unicode NFKC (full-width digits, unicode minus), surrounding space,
// dollars, \text{...} / \mathrm{...}, a trailing period, "\left" / "\right", spaces collapsed, lower case.
// Comparison: equal text; else numbers by value when both sides are one number ("+3" == "3", "-0" == "0",
// "1,000" == "1000", ".5" == "0.50" == "1/2", "007" == "7"; "50%" == "0.5" only when the truth says "%" too);
// else element by element when both sides are sequences of numbers. Spaces never join digits: "0 2 5 6" is
// four numbers, not 256. Only ASCII and full-width digits are digits (other scripts' digits are text).
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace rlhf::scoring {

enum class ExtractMode { kFlexible, kStrict, kWhole, kNumber, kNumbers, kLastNumber };

// "flexible", "strict", "whole", "number", "numbers", "last_number".
const char* ExtractModeName(ExtractMode mode);
// Every mode with its name (the config's choices).
const std::vector<std::pair<std::string, ExtractMode>>& ExtractModes();

// The marked answer of `response` (strict) or, in flexible mode, else its last number, else the whole text;
// nullopt when there is none.
std::optional<std::string> ExtractAnswer(std::string_view response, ExtractMode mode = ExtractMode::kFlexible);

// Normalised text of an answer (see above).
std::string NormalizeAnswer(std::string_view answer);

// The value of a normalised numeric answer ("-1,234.5", "3/4", "2e3"); nullopt when it is not one number
// (inner spaces included: "0 2 5 6").
std::optional<double> ParseNumber(std::string_view normalized);

// The numbers in a text, in order ("1,000" is one number; "1, 2" two).
std::vector<std::string> NumbersIn(std::string_view text);

// What a comparison did, for `rlhf score --explain` and the tests.
struct MatchExplanation {
  bool matched = false;
  std::string mode;                       // the mode's name
  std::string rule;                       // where the answer came from: "boxed", "answer is", "####", "last 4 numbers", ...
  std::optional<std::string> extracted;   // the answer taken from the response; nullopt when there was none
  std::string answer;                     // the extracted answer, normalised
  std::string truth;                      // the truth, normalised (unwrapped when given as \boxed{} or ####)
  std::string why;                        // "equal as text", "equal as numbers", "differ: 5 vs 6 at 3", "no answer", ...
};
MatchExplanation ExplainMatch(std::string_view response, std::string_view truth, ExtractMode mode = ExtractMode::kFlexible);

// Whether the response's answer equals `truth` in `mode` (ExplainMatch(...).matched).
bool AnswerMatches(std::string_view response, std::string_view truth, ExtractMode mode = ExtractMode::kFlexible);

}  // namespace rlhf::scoring
