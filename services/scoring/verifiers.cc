#include "services/scoring/verifiers.h"

#include <unicode/normalizer2.h>
#include <unicode/locid.h>
#include <unicode/unistr.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdlib>
#include <regex>

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

std::optional<std::string> ExtractAnswer(std::string_view response_in, ExtractMode mode) {
  const std::string response = Nfkc(response_in);
  if (auto b = LastBoxed(response)) return Trim(*b);
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
      return m[1].str() + (m[6].str() == "%" ? "%" : "");
    }
    return best;
  }
  if (auto a = AfterLast(lower, response, "####")) return a;
  if (mode == ExtractMode::kStrict) return std::nullopt;
  // Flexible: the last number.
  static const std::regex num(R"([-+]?(\d{1,3}(,\d{3})+|\d+)(\.\d+)?([eE][-+]?\d+)?(/\d+)?|[-+]?\.\d+)");
  std::optional<std::string> last;
  for (auto it = std::sregex_iterator(response.begin(), response.end(), num); it != std::sregex_iterator(); ++it) {
    last = it->str();
  }
  if (last) return last;
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
  std::string s(normalized);
  s.erase(std::remove(s.begin(), s.end(), ' '), s.end());
  if (s.empty()) return std::nullopt;
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

bool AnswerMatches(std::string_view response, std::string_view truth, ExtractMode mode) {
  auto extracted = ExtractAnswer(response, mode);
  if (!extracted) return false;
  std::string a = NormalizeAnswer(*extracted), t = NormalizeAnswer(truth);
  // A truth given as \boxed{...} or "#### x" is unwrapped too.
  if (auto tb = ExtractAnswer(truth, ExtractMode::kStrict)) t = NormalizeAnswer(*tb);
  if (a == t) return true;
  const bool pa = !a.empty() && a.back() == '%', pt = !t.empty() && t.back() == '%';
  if (pa != pt) return false;  // "50%" is not "50" nor "0.5" unless both say percent
  if (pa) a.pop_back(), t.pop_back();
  auto x = ParseNumber(a), y = ParseNumber(t);
  if (!x || !y) return a == t;
  return std::fabs(*x - *y) <= 1e-9 * std::max(1.0, std::max(std::fabs(*x), std::fabs(*y)));
}

}  // namespace rlhf::scoring
