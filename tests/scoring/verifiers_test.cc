// Answer extraction and comparison on tricky answers: signs, decimals, fractions, trailing text, several
// boxed answers, nested braces, unicode digits and minus signs, percentages, GSM8K markers.
#include <gtest/gtest.h>

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
