#include "services/scoring/verifiers.h"

#include <unicode/normalizer2.h>
#include <unicode/locid.h>
#include <unicode/unistr.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdlib>
#include <regex>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace rlhf::scoring {

namespace {

std::string Nfkc(std::string_view s) {
  UErrorCode err = U_ZERO_ERROR;
  const icu::Normalizer2* n = icu::Normalizer2::getNFKCInstance(err);
  if (U_FAILURE(err)) return std::string(s);
  icu::UnicodeString u = icu::UnicodeString::fromUTF8(icu::StringPiece(s.data(), static_cast<int32_t>(s.size())));
  icu::UnicodeString out = n->normalize(u, err);
  if (U_FAILURE(err)) return std::string(s);
  out.findAndReplace(icu::UnicodeString(static_cast<UChar32>(0x2212)), icu::UnicodeString("-"));  // minus sign
  std::string r;
  out.toUTF8String(r);
  return r;
}

// Lower case, Unicode-aware (ICU's root locale).
std::string Lower(const std::string& s) {
  icu::UnicodeString u = icu::UnicodeString::fromUTF8(icu::StringPiece(s.data(), static_cast<int32_t>(s.size())));
  u.toLower(icu::Locale::getRoot());
  std::string r;
  u.toUTF8String(r);
  return r;
}

std::string Trim(std::string_view s) {
  size_t a = 0, b = s.size();
  while (a < b && std::isspace(static_cast<unsigned char>(s[a]))) ++a;
  while (b > a && std::isspace(static_cast<unsigned char>(s[b - 1]))) --b;
  return std::string(s.substr(a, b - a));
}

void ReplaceAll(std::string& s, const std::string& from, const std::string& to) {
  size_t pos = 0;
  while ((pos = s.find(from, pos)) != std::string::npos) {
    s.replace(pos, from.size(), to);
    pos += to.size();
  }
}

// Content of the last \boxed{...} or \fbox{...} in the text, braces balanced.
std::optional<std::string> LastBoxed(std::string_view s) {
  std::optional<std::string> out;
  size_t best = 0;
  for (std::string_view cmd : {std::string_view("\\boxed"), std::string_view("\\fbox")}) {
    for (size_t p = s.find(cmd); p != std::string_view::npos; p = s.find(cmd, p + 1)) {
      size_t open = p + cmd.size();
      while (open < s.size() && s[open] == ' ') ++open;
      if (open >= s.size() || s[open] != '{') continue;
      int depth = 0;
      for (size_t i = open; i < s.size(); ++i) {
        if (s[i] == '{') ++depth;
        if (s[i] == '}' && --depth == 0) {
          if (!out || p >= best) best = p, out = std::string(s.substr(open + 1, i - open - 1));
          break;
        }
      }
    }
  }
  return out;
}

// Text after the last occurrence of `marker` (case-insensitive) up to the end of its line.
std::optional<std::string> AfterLast(const std::string& lower, std::string_view original, const std::string& marker) {
  size_t p = lower.rfind(marker);
  if (p == std::string::npos) return std::nullopt;
  size_t start = p + marker.size();
  size_t end = original.find('\n', start);
  std::string tail = Trim(original.substr(start, end == std::string_view::npos ? std::string_view::npos : end - start));
  if (!tail.empty() && tail[0] == ':') tail = Trim(tail.substr(1));
  if (tail.empty()) return std::nullopt;
  return tail;
}

}  // namespace

namespace {

const std::regex& NumberRegex() {
  static const std::regex num(R"([-+]?(\d{1,3}(,\d{3})+|\d+)(\.\d+)?([eE][-+]?\d+)?(/\d+)?|[-+]?\.\d+)");
  return num;
}

// The marked answer (boxed, "answer is" / "answer:", ####) of an NFKC-normalised response, and which rule.
std::optional<std::pair<std::string, std::string>> Marked(const std::string& response) {
  if (auto b = LastBoxed(response)) return std::make_pair(Trim(*b), std::string("boxed"));
  const std::string lower = Lower(response);
  std::optional<std::string> best;
  size_t best_pos = std::string::npos;
  for (const std::string marker : {"answer is", "answer:"}) {
    size_t p = lower.rfind(marker);
    if (p != std::string::npos && (best_pos == std::string::npos || p > best_pos)) {
      if (auto a = AfterLast(lower, response, marker)) best = a, best_pos = p;
    }
  }
  if (best) {
    // "The answer is 42 apples." -> the leading number when the tail starts with one.
    std::smatch m;
    std::string t = *best;
    static const std::regex lead(R"(^\$?\s*([-+]?(\d{1,3}(,\d{3})+|\d+)?(\.\d+)?(/\d+)?)(\s|\.|$|%))");
    if (std::regex_search(t, m, lead) && m[1].length() > 0 && std::any_of(m[1].first, m[1].second, ::isdigit)) {
      return std::make_pair(m[1].str() + (m[6].str() == "%" ? "%" : ""), std::string("answer is"));
    }
    return std::make_pair(*best, std::string("answer is"));
  }
  if (auto a = AfterLast(lower, response, "####")) return std::make_pair(*a, std::string("####"));
  return std::nullopt;
}

}  // namespace

namespace {

// The numbers of a text already in NFKC form (a normalised answer, an NFKC'd response).
std::vector<std::string> NumbersInNfkc(const std::string& text) {
  std::vector<std::string> out;
  for (auto it = std::sregex_iterator(text.begin(), text.end(), NumberRegex()); it != std::sregex_iterator(); ++it) {
    out.push_back(it->str());
  }
  return out;
}

}  // namespace

std::vector<std::string> NumbersIn(std::string_view text) { return NumbersInNfkc(Nfkc(text)); }

std::optional<std::string> ExtractAnswer(std::string_view response_in, ExtractMode mode) {
  const std::string response = Nfkc(response_in);
  if (auto m = Marked(response)) return m->first;
  if (mode == ExtractMode::kStrict) return std::nullopt;
  // Flexible: the last number.
  const auto numbers = NumbersInNfkc(response);
  if (!numbers.empty()) return numbers.back();
  std::string whole = Trim(response);
  if (whole.empty()) return std::nullopt;
  return whole;
}

std::string NormalizeAnswer(std::string_view answer) {
  std::string s = Nfkc(answer);
  for (const char* wrap : {"\\text{", "\\mathrm{", "\\textbf{", "\\mathbf{"}) {
    size_t p;
    while ((p = s.find(wrap)) != std::string::npos) {
      size_t open = p + std::string(wrap).size() - 1;
      int depth = 0;
      size_t i = open;
      for (; i < s.size(); ++i) {
        if (s[i] == '{') ++depth;
        if (s[i] == '}' && --depth == 0) break;
      }
      if (i >= s.size()) break;
      s = s.substr(0, p) + s.substr(open + 1, i - open - 1) + s.substr(i + 1);
    }
  }
  for (const char* junk : {"\\left", "\\right", "\\!", "\\,", "\\;", "$"}) ReplaceAll(s, junk, "");
  ReplaceAll(s, "\\%", "%");
  ReplaceAll(s, "\\dfrac", "\\frac");
  ReplaceAll(s, "\\tfrac", "\\frac");
  s = Trim(s);
  while (!s.empty() && s.back() == '.') s.pop_back();
  // \frac{a}{b} -> a/b
  static const std::regex frac(R"(\\frac\{([^{}]*)\}\{([^{}]*)\})");
  s = std::regex_replace(s, frac, "$1/$2");
  std::string out;
  bool space = false;
  for (char c : s) {
    if (std::isspace(static_cast<unsigned char>(c))) {
      space = true;
      continue;
    }
    if (space && !out.empty()) out += ' ';
    space = false;
    out += c;
  }
  return Lower(out);
}

std::optional<double> ParseNumber(std::string_view normalized) {
  std::string s = Trim(normalized);
  if (s.empty() || s.find(' ') != std::string::npos) return std::nullopt;  // "0 2 5 6" is four numbers, not 256
  static const std::regex full(R"(^[-+]?((\d{1,3}(,\d{3})+|\d+)(\.\d*)?|\.\d+)([eE][-+]?\d+)?(/[-+]?\d+(\.\d+)?)?$)");
  if (!std::regex_match(s, full)) return std::nullopt;
  s.erase(std::remove(s.begin(), s.end(), ','), s.end());
  size_t slash = s.find('/');
  double v = std::strtod(s.substr(0, slash).c_str(), nullptr);
  if (slash != std::string::npos) {
    double d = std::strtod(s.substr(slash + 1).c_str(), nullptr);
    if (d == 0) return std::nullopt;
    v /= d;
  }
  if (v == 0) v = 0;  // -0 == 0
  return v;
}

const std::vector<std::pair<std::string, ExtractMode>>& ExtractModes() {
  static const std::vector<std::pair<std::string, ExtractMode>> modes = {
      {"flexible", ExtractMode::kFlexible}, {"strict", ExtractMode::kStrict},   {"whole", ExtractMode::kWhole},
      {"number", ExtractMode::kNumber},     {"numbers", ExtractMode::kNumbers}, {"last_number", ExtractMode::kLastNumber}};
  return modes;
}

const char* ExtractModeName(ExtractMode mode) {
  for (const auto& [name, m] : ExtractModes()) {
    if (m == mode) return name.c_str();
  }
  return "?";
}

namespace {

// The numbers of a normalised text that holds nothing else (separated by spaces, commas or semicolons);
// empty otherwise.
std::vector<std::string> OnlyNumbers(const std::string& normalized) {
  auto numbers = NumbersInNfkc(normalized);
  std::string rest = std::regex_replace(normalized, NumberRegex(), "");
  for (char c : rest) {
    if (c != ' ' && c != ',' && c != ';') return {};
  }
  return numbers;
}

bool SameNumber(const std::string& a, const std::string& b) {
  auto x = ParseNumber(a), y = ParseNumber(b);
  if (!x || !y) return false;
  return std::fabs(*x - *y) <= 1e-9 * std::max(1.0, std::max(std::fabs(*x), std::fabs(*y)));
}

// Compares two number sequences element by element into `e`.
void CompareSequences(const std::vector<std::string>& a, const std::vector<std::string>& t, MatchExplanation& e) {
  if (a.size() != t.size()) {
    e.why = absl::StrCat("differ: ", a.size(), " numbers vs ", t.size());
    return;
  }
  for (size_t i = 0; i < a.size(); ++i) {
    if (!SameNumber(a[i], t[i])) {
      e.why = absl::StrCat("differ: ", a[i], " vs ", t[i], " at ", i + 1);
      return;
    }
  }
  e.matched = true;
  e.why = absl::StrCat("equal as ", a.size(), " numbers");
}

// Compares a normalised answer with the normalised truth: text, one number by value, or number sequences.
void Compare(std::string a, std::string t, MatchExplanation& e) {
  if (a == t) {
    e.matched = true;
    e.why = "equal as text";
    return;
  }
  const bool pa = !a.empty() && a.back() == '%', pt = !t.empty() && t.back() == '%';
  if (pa != pt) {  // "50%" is not "50" nor "0.5" unless both say percent
    e.why = "differ: one side is a percentage";
    return;
  }
  if (pa) a.pop_back(), t.pop_back();
  if (ParseNumber(a) && ParseNumber(t)) {
    e.matched = SameNumber(a, t);
    e.why = e.matched ? "equal as numbers" : absl::StrCat("differ: ", a, " vs ", t);
    return;
  }
  const auto na = OnlyNumbers(a), nt = OnlyNumbers(t);
  if (na.size() >= 2 && nt.size() >= 2) return CompareSequences(na, nt, e);
  e.why = "differ as text";
}

}  // namespace

MatchExplanation ExplainMatch(std::string_view response_in, std::string_view truth_in, ExtractMode mode) {
  MatchExplanation e;
  e.mode = ExtractModeName(mode);
  const std::string response = Nfkc(response_in);
  // A truth given as \boxed{...} or "#### x" is unwrapped too.
  const auto marked_truth = Marked(Nfkc(truth_in));
  e.truth = marked_truth ? NormalizeAnswer(marked_truth->first) : NormalizeAnswer(truth_in);
  const auto truth_numbers = OnlyNumbers(e.truth);
  const auto numbers = NumbersInNfkc(response);
  auto take = [&](std::string answer, std::string rule) {
    e.extracted = std::move(answer);
    e.rule = std::move(rule);
    e.answer = NormalizeAnswer(*e.extracted);
  };
  switch (mode) {
    case ExtractMode::kStrict:
    case ExtractMode::kFlexible:
      if (auto m = Marked(response)) {
        take(m->first, m->second);
      } else if (mode == ExtractMode::kStrict) {
        e.why = "no marked answer (boxed, 'answer is', ####)";
        return e;
      } else if (truth_numbers.size() >= 2) {
        if (numbers.size() < truth_numbers.size()) {
          take(Trim(response), "whole response");
          e.why = absl::StrCat("differ: the response holds ", numbers.size(), " numbers, the truth ", truth_numbers.size());
          return e;
        }
        const std::vector<std::string> last(numbers.end() - static_cast<std::ptrdiff_t>(truth_numbers.size()), numbers.end());
        take(absl::StrJoin(last, " "), absl::StrCat("last ", last.size(), " numbers"));
        CompareSequences(last, truth_numbers, e);
        return e;
      } else if (!numbers.empty()) {
        take(numbers.back(), "last number");
      } else {
        take(Trim(response), "whole response");
      }
      break;
    case ExtractMode::kWhole:
      take(Trim(response), "whole response");
      break;
    case ExtractMode::kNumber:
      take(Trim(response), "whole response");
      if (!ParseNumber(e.answer) && !(e.answer.size() > 1 && e.answer.back() == '%' &&
                                      ParseNumber(e.answer.substr(0, e.answer.size() - 1)))) {
        e.why = "the response is not one number";
        return e;
      }
      break;
    case ExtractMode::kNumbers:
      take(absl::StrJoin(numbers, " "), "every number");
      if (truth_numbers.empty() && !ParseNumber(e.truth)) {
        e.why = "the truth is not numbers";
        return e;
      }
      CompareSequences(numbers, truth_numbers.empty() ? std::vector<std::string>{e.truth} : truth_numbers, e);
      return e;
    case ExtractMode::kLastNumber:
      if (numbers.empty()) {
        e.why = "no number in the response";
        return e;
      }
      take(numbers.back(), "last number");
      break;
  }
  if (e.extracted && Trim(*e.extracted).empty()) {
    e.extracted.reset();
    e.why = "no answer";
    return e;
  }
  Compare(e.answer, e.truth, e);
  return e;
}

bool AnswerMatches(std::string_view response, std::string_view truth, ExtractMode mode) {
  return ExplainMatch(response, truth, mode).matched;
}

}  // namespace rlhf::scoring
