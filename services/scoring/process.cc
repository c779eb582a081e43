#include "services/scoring/process.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "common/text/tokenizer.h"

namespace rlhf::scoring {

std::vector<Step> SplitSteps(const std::string& text, const std::string& separator) {
  std::vector<Step> out;
  size_t begin = 0;
  while (begin < text.size()) {
    size_t at = separator.empty() ? std::string::npos : text.find(separator, begin);
    const size_t body_end = at == std::string::npos ? text.size() : at;
    const size_t end = at == std::string::npos ? text.size() : at + separator.size();
    std::string body = text.substr(begin, body_end - begin);
    if (body.find_first_not_of(" \t\r\n") != std::string::npos) out.push_back({begin, end, std::move(body)});
    begin = end;
  }
  return out;
}

namespace {

// Recursive descent over: expr = term (('+'|'-') term)*; term = unary (('*'|'/') unary)*;
// unary = '-' unary | '+' unary | '(' expr ')' | number.
class Parser {
 public:
  explicit Parser(const std::string& s) : s_(s) {}
  std::optional<double> Parse() {
    auto v = Expr();
    Skip();
    if (!v || pos_ != s_.size()) return std::nullopt;
    return v;
  }

 private:
  void Skip() {
    while (pos_ < s_.size() && s_[pos_] == ' ') ++pos_;
  }
  bool Eat(char c) {
    Skip();
    if (pos_ < s_.size() && s_[pos_] == c) {
      ++pos_;
      return true;
    }
    return false;
  }
  std::optional<double> Expr() {
    auto v = Term();
    while (v) {
      if (Eat('+')) {
        auto r = Term();
        if (!r) return std::nullopt;
        *v += *r;
      } else if (Eat('-')) {
        auto r = Term();
        if (!r) return std::nullopt;
        *v -= *r;
      } else {
        break;
      }
    }
    return v;
  }
  std::optional<double> Term() {
    auto v = Unary();
    while (v) {
      if (Eat('*')) {
        auto r = Unary();
        if (!r) return std::nullopt;
        *v *= *r;
      } else if (Eat('/')) {
        auto r = Unary();
        if (!r || *r == 0) return std::nullopt;
        *v /= *r;
      } else {
        break;
      }
    }
    return v;
  }
  std::optional<double> Unary() {
    if (++depth_ > 200) return std::nullopt;  // bounded recursion on adversarial input
    std::optional<double> v;
    if (Eat('-')) {
      v = Unary();
      if (v) v = -*v;
    } else if (Eat('+')) {
      v = Unary();
    } else if (Eat('(')) {
      v = Expr();
      if (v && !Eat(')')) v = std::nullopt;
    } else {
      v = Number();
    }
    --depth_;
    return v;
  }
  std::optional<double> Number() {
    Skip();
    const size_t start = pos_;
    bool digits = false, dot = false;
    while (pos_ < s_.size()) {
      const char c = s_[pos_];
      if (std::isdigit(static_cast<unsigned char>(c))) {
        digits = true;
      } else if (c == '.' && !dot) {
        dot = true;
      } else {
        break;
      }
      ++pos_;
    }
    if (!digits) return std::nullopt;
    return std::stod(s_.substr(start, pos_ - start));
  }
  const std::string& s_;
  size_t pos_ = 0;
  int depth_ = 0;
};

bool ExpressionChar(char c) {
  return std::isdigit(static_cast<unsigned char>(c)) || c == '.' || c == '+' || c == '-' || c == '*' || c == '/' ||
         c == '(' || c == ')' || c == ' ';
}

}  // namespace

std::optional<double> EvaluateArithmetic(const std::string& expression) { return Parser(expression).Parse(); }

std::optional<float> CheckArithmeticStep(const std::string& step) {
  bool any = false, all = true;
  for (size_t eq = step.find('='); eq != std::string::npos; eq = step.find('=', eq + 1)) {
    // Left side: the longest run of expression characters before '='.
    size_t l = eq;
    while (l > 0 && ExpressionChar(step[l - 1])) --l;
    std::string lhs = step.substr(l, eq - l);
    if (std::none_of(lhs.begin(), lhs.end(), [](char c) { return std::isdigit(static_cast<unsigned char>(c)); })) {
      continue;  // "x = 5", "==": not an arithmetic equation
    }
    any = true;
    // Right side: a number (optional sign, digits, decimals) after '='.
    size_t r = eq + 1;
    while (r < step.size() && step[r] == ' ') ++r;
    size_t rs = r;
    if (r < step.size() && step[r] == '-') ++r;
    while (r < step.size() && (std::isdigit(static_cast<unsigned char>(step[r])) || step[r] == '.')) ++r;
    // A trailing '.' ends a sentence, not a decimal.
    size_t re = r;
    if (re > rs && step[re - 1] == '.') --re;
    auto lhs_value = EvaluateArithmetic(lhs);
    auto rhs_value = re > rs ? EvaluateArithmetic(step.substr(rs, re - rs)) : std::nullopt;
    if (!lhs_value || !rhs_value || std::fabs(*lhs_value - *rhs_value) > 1e-9 * std::max(1.0, std::fabs(*lhs_value))) {
      all = false;
    }
  }
  if (!any) return std::nullopt;
  return all ? 1.f : 0.f;
}

absl::StatusOr<std::vector<int32_t>> TokenEnds(const text::Tokenizer& tokenizer, const std::vector<int32_t>& ids,
                                               const std::vector<size_t>& ends) {
  std::vector<int32_t> out;
  size_t k = 0, covered = 0;
  std::vector<int32_t> prefix;
  for (size_t e : ends) {
    while (covered < e && k < ids.size()) {
      prefix.push_back(ids[k++]);
      ASSIGN_OR_RETURN(auto text, tokenizer.Decode(prefix, /*skip_special_tokens=*/true));
      covered = text.size();
    }
    if (covered < e) {
      return absl::InvalidArgumentError(absl::StrCat("step end at byte ", e, " is beyond the decoded completion (",
                                                     covered, " bytes)"));
    }
    out.push_back(static_cast<int32_t>(k) - 1);
  }
  return out;
}

float AggregateSteps(const std::vector<float>& scores, StepAggregate mode) {
  if (scores.empty()) return 0.f;
  if (mode == StepAggregate::kMin) return *std::min_element(scores.begin(), scores.end());
  if (mode == StepAggregate::kLast) return scores.back();
  return std::accumulate(scores.begin(), scores.end(), 0.f) / static_cast<float>(scores.size());
}

}  // namespace rlhf::scoring
