// Answer extraction and comparison on tricky answers: signs, decimals, fractions, trailing text, several
// boxed answers, nested braces, unicode digits and minus signs, percentages, GSM8K markers.
#include <gtest/gtest.h>

#include "services/scoring/scorer.h"
#include "services/scoring/sources.h"
#include "services/scoring/verifiers.h"

namespace rlhf::scoring {
namespace {

TEST(Verifiers, ExtractsTheFinalAnswer) {
  EXPECT_EQ(*ExtractAnswer("so \\boxed{3} first, then \\boxed{5}."), "5");
  EXPECT_EQ(*ExtractAnswer("x = \\boxed{\\frac{1}{2}} done"), "\\frac{1}{2}");
  EXPECT_EQ(*ExtractAnswer("\\fbox{7} and later \\boxed {8}"), "8");
  EXPECT_EQ(*ExtractAnswer("The answer is 42 apples."), "42");
  EXPECT_EQ(*ExtractAnswer("I think the Answer is: -3.\nBye"), "-3");
  EXPECT_EQ(*ExtractAnswer("Answer: Paris"), "Paris");
  EXPECT_EQ(*ExtractAnswer("3 + 4 = 7\n#### 7"), "7");
  EXPECT_EQ(*ExtractAnswer("we get 12, then 15 in total"), "15");
  EXPECT_FALSE(ExtractAnswer("we get 12, then 15 in total", ExtractMode::kStrict));
  EXPECT_FALSE(ExtractAnswer("   "));
  EXPECT_EQ(*ExtractAnswer("\\boxed{unclosed 7"), "7");  // no closed box: the last number
}

TEST(Verifiers, NumbersCompareByValue) {
  EXPECT_TRUE(AnswerMatches("+3", "3"));
  EXPECT_TRUE(AnswerMatches("-0", "0"));
  EXPECT_TRUE(AnswerMatches("The answer is 1,000.", "1000"));
  EXPECT_TRUE(AnswerMatches("0.50", ".5"));
  EXPECT_TRUE(AnswerMatches("\\boxed{\\frac{1}{2}}", "0.5"));
  EXPECT_TRUE(AnswerMatches("\\boxed{\\dfrac{3}{4}}", "3/4"));
  EXPECT_TRUE(AnswerMatches("3.0", "3"));
  EXPECT_TRUE(AnswerMatches("2e3", "2000"));
  EXPECT_FALSE(AnswerMatches("-5", "5"));
  EXPECT_FALSE(AnswerMatches("5.01", "5"));
  EXPECT_FALSE(AnswerMatches("The answer is 42 apples, or 43", "43"));  // the marker wins over the last number
}

TEST(Verifiers, SignsAndDigitsInUnicode) {
  EXPECT_TRUE(AnswerMatches("\u2212" "5", "-5"));          // U+2212 MINUS SIGN
  EXPECT_TRUE(AnswerMatches("\uff14\uff12", "42"));        // full-width digits
  EXPECT_TRUE(AnswerMatches("The answer is \uff0d7", "-7"));  // full-width hyphen-minus
  EXPECT_TRUE(AnswerMatches("\\boxed{caf\u00e9}", "CAF\u00c9"));  // case folded
}

TEST(Verifiers, TextAndPercentages) {
  EXPECT_TRUE(AnswerMatches("\\boxed{\\text{Paris}}", "paris"));
  EXPECT_TRUE(AnswerMatches("The answer is $12$.", "12"));
  EXPECT_TRUE(AnswerMatches("\\boxed{50\\%}", "50%"));
  EXPECT_FALSE(AnswerMatches("\\boxed{50\\%}", "50"));
  EXPECT_FALSE(AnswerMatches("\\boxed{50}", "0.5%"));
  EXPECT_TRUE(AnswerMatches("Answer: new   york", "New York"));
  EXPECT_TRUE(AnswerMatches("#### 72", "\\boxed{72}"));  // a boxed truth is unwrapped too
}

TEST(Verifiers, ParseNumber) {
  EXPECT_EQ(*ParseNumber("-1,234.5"), -1234.5);
  EXPECT_EQ(*ParseNumber("3/4"), 0.75);
  EXPECT_FALSE(ParseNumber("1/0"));
  EXPECT_FALSE(ParseNumber("12a"));
  EXPECT_FALSE(ParseNumber("1,23"));
}

}  // namespace
}  // namespace rlhf::scoring

namespace rlhf::scoring {
namespace {

// The conformance table: hard cases for every mode. Each row: mode, completion, truth, expected.
struct Case {
  ExtractMode mode;
  const char* completion;
  const char* truth;
  bool match;
};

TEST(Verifiers, ConformanceTable) {
  using M = ExtractMode;
  const Case cases[] = {
      // Several numbers (the cases that once scored wrong in flexible mode).
      {M::kFlexible, " 0 2 5 6", "0 2 5 6", true},
      {M::kFlexible, " 256", "0 2 5 6", false},
      {M::kFlexible, " 9 9 3", "0 0 0 3", false},
      {M::kFlexible, "sorted: 0 2 5 6", "0 2 5 6", true},
      {M::kFlexible, "0 2 6 5", "0 2 5 6", false},
      {M::kFlexible, "1, 2, 3", "1 2 3", true},
      {M::kNumbers, " 0 2 5 6", "0 2 5 6", true},
      {M::kNumbers, "10 0 2 5 6", "0 2 5 6", false},
      {M::kNumbers, "it is 7", "7", true},
      {M::kLastNumber, " 9 9 3", "3", true},
      {M::kWhole, " 0 2 5 6", "0 2 5 6", true},
      {M::kWhole, "0  2 5 6\n", "0 2 5 6", true},
      {M::kWhole, "0,2,5,6", "0 2 5 6", true},
      {M::kWhole, " 256", "0 2 5 6", false},
      // Spaces and trailing text.
      {M::kWhole, "  42  ", "42", true},
      {M::kWhole, "42 apples", "42", false},
      {M::kFlexible, "42 apples", "42", true},
      {M::kNumber, "42 apples", "42", false},
      {M::kNumber, " 42\n", "42", true},
      {M::kStrict, "42", "42", false},
      {M::kStrict, "The answer is 42.", "42", true},
      {M::kStrict, "so \\boxed{42} wait", "42", true},
      {M::kStrict, "#### 42", "42", true},
      // Signs.
      {M::kNumber, "+3", "3", true},
      {M::kNumber, "-3", "3", false},
      {M::kNumber, "-0", "0", true},
      {M::kWhole, "\u2212" "5", "-5", true},
      {M::kFlexible, "x = -5", "5", false},
      // Leading zeros: one number compares by value; a sequence element by element.
      {M::kNumber, "007", "7", true},
      {M::kWhole, "0 0 0 3", "0 0 0 3", true},
      {M::kWhole, "3", "0 0 0 3", false},
      // Thousands separators.
      {M::kNumber, "1,000", "1000", true},
      {M::kNumber, "1,000,000", "1000000", true},
      {M::kNumber, "1,00", "100", false},
      {M::kWhole, "1 000", "1000", false},
      // Decimals, fractions, percentages.
      {M::kNumber, "0.50", ".5", true},
      {M::kNumber, "1/2", "0.5", true},
      {M::kNumber, "50%", "50%", true},
      {M::kNumber, "50%", "0.5", false},
      // Unicode digits: full-width digits are digits (NFKC); other scripts' digits are text.
      {M::kNumber, "\uff14\uff12", "42", true},
      {M::kWhole, "\u0664\u0662", "42", false},
      // Text answers.
      {M::kWhole, "New  York.", "new york", true},
      {M::kWhole, "abc", "abd", false},
      {M::kFlexible, "", "0", false},
  };
  for (const auto& c : cases) {
    const auto e = ExplainMatch(c.completion, c.truth, c.mode);
    EXPECT_EQ(e.matched, c.match) << ExtractModeName(c.mode) << " '" << c.completion << "' vs '" << c.truth
                                   << "': rule " << e.rule << ", answer '" << e.answer << "', truth '" << e.truth
                                   << "': " << e.why;
  }
}

TEST(Verifiers, ExplanationsSayWhatWasExtractedAndWhy) {
  auto e = ExplainMatch("sorted: 0 2 5 6", "0 2 5 6", ExtractMode::kFlexible);
  EXPECT_EQ(e.rule, "last 4 numbers");
  EXPECT_EQ(*e.extracted, "0 2 5 6");
  EXPECT_EQ(e.why, "equal as 4 numbers");
  e = ExplainMatch(" 9 9 3", "0 0 0 3", ExtractMode::kFlexible);
  EXPECT_FALSE(e.matched);
  EXPECT_EQ(e.why, "differ: the response holds 3 numbers, the truth 4");
  e = ExplainMatch("The answer is 42 apples.", "41", ExtractMode::kStrict);
  EXPECT_EQ(e.rule, "answer is");
  EXPECT_EQ(e.why, "differ: 42 vs 41");
  e = ExplainMatch("no idea", "7", ExtractMode::kStrict);
  EXPECT_FALSE(e.extracted);
  EXPECT_EQ(e.mode, "strict");
  for (const auto& [name, mode] : ExtractModes()) EXPECT_EQ(ExtractModeName(mode), name);
}

}  // namespace
}  // namespace rlhf::scoring

namespace rlhf::scoring {
namespace {

TEST(Verifiers, AnEvaluationSaysHowItJudges) {
  RewardConfig r;
  r.exact_match_weight = 1;
  EXPECT_EQ(DescribeJudge(r, "", 1), "exact_match (reward.extract flexible) >= 1");
  r.extract = ExtractMode::kNumbers;
  r.format_weight = 0.5;
  EXPECT_EQ(DescribeJudge(r, "", 1.2), "reward (exact_match + format x0.5) (reward.extract numbers) >= 1.2");
  r.exact_match_weight = 0;
  r.reward_model_weight = 1;
  r.format_weight = 0;
  EXPECT_EQ(DescribeJudge(r, "exact_match", 1), "exact_match (reward.extract numbers) >= 1");
  EXPECT_EQ(DescribeJudge(r, "", 0.5), "reward_model >= 0.5");
}

}  // namespace
}  // namespace rlhf::scoring
