#include "common/text/tokenizer_parts.h"

#include <unicode/normalizer2.h>
#include <unicode/uchar.h>
#include <unicode/utf8.h>

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/text/utf8.h"

namespace rlhf::text::internal {

using nlohmann::json;


// ------------------------------------------------------------------------------------------- byte level
ByteMap::ByteMap() {
  int n = 0;
  for (int b = 0; b < 256; ++b) {
    bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    uint32_t cp = printable ? static_cast<uint32_t>(b) : static_cast<uint32_t>(256 + n++);
    std::string s;
    icu::UnicodeString(static_cast<UChar32>(cp)).toUTF8String(s);
    to_char[b] = s;
    to_byte[cp] = static_cast<uint8_t>(b);
  }
}

const ByteMap& Bytes() {
  static const ByteMap m;
  return m;
}

std::vector<std::string> Chars(std::string_view s) { return SplitCodePoints(s); }

std::string Utf8(const icu::UnicodeString& u) {
  std::string s;
  u.toUTF8String(s);
  return s;
}

absl::Status Unsupported(const std::string& origin, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat(origin, ": ", what, " is not supported"));
}

absl::StatusOr<std::shared_ptr<Regex>> Regex::Compile(const std::string& re, const std::string& origin) {
  UErrorCode status = U_ZERO_ERROR;
  UParseError perr;
  auto r = std::make_shared<Regex>();
  r->pattern.reset(icu::RegexPattern::compile(icu::UnicodeString::fromUTF8(re), perr, status));
  if (U_FAILURE(status)) {
    return absl::InvalidArgumentError(absl::StrCat(origin, ": regex '", re, "' does not compile: ", u_errorName(status)));
  }
  return r;
}

std::vector<std::pair<std::string, bool>> Regex::Split(const std::string& s) const {
  UErrorCode status = U_ZERO_ERROR;
  icu::UnicodeString u = icu::UnicodeString::fromUTF8(s);
  std::unique_ptr<icu::RegexMatcher> m(pattern->matcher(u, status));
  std::vector<std::pair<std::string, bool>> out;
  int32_t last = 0;
  while (m->find(status) && U_SUCCESS(status)) {
    int32_t b = m->start(status), e = m->end(status);
    if (e == b) continue;  // empty matches split nothing
    if (b > last) out.emplace_back(Utf8(u.tempSubStringBetween(last, b)), false);
    out.emplace_back(Utf8(u.tempSubStringBetween(b, e)), true);
    last = e;
  }
  if (last < u.length()) out.emplace_back(Utf8(u.tempSubStringBetween(last, u.length())), false);
  return out;
}

namespace {
// Splits on a literal string.
std::vector<std::pair<std::string, bool>> SplitLiteral(const std::string& s, const std::string& lit) {
  std::vector<std::pair<std::string, bool>> out;
  if (lit.empty()) return {{s, false}};
  size_t last = 0, pos;
  while ((pos = s.find(lit, last)) != std::string::npos) {
    if (pos > last) out.emplace_back(s.substr(last, pos - last), false);
    out.emplace_back(lit, true);
    last = pos + lit.size();
  }
  if (last < s.size()) out.emplace_back(s.substr(last), false);
  return out;
}

// Pattern of Split / Replace: {"String": s} or {"Regex": r}.
struct Pattern {
  std::string literal;
  std::shared_ptr<Regex> regex;
  std::vector<std::pair<std::string, bool>> Split(const std::string& s) const {
    return regex ? regex->Split(s) : SplitLiteral(s, literal);
  }
};
absl::StatusOr<Pattern> ParsePattern(const json& j, const std::string& origin) {
  Pattern p;
  if (j.contains("String")) {
    p.literal = j["String"].get<std::string>();
  } else if (j.contains("Regex")) {
    ASSIGN_OR_RETURN(p.regex, Regex::Compile(j["Regex"].get<std::string>(), origin));
  } else {
    return Unsupported(origin, "a pattern without String or Regex");
  }
  return p;
}

// ---------------------------------------------------------------------------------------- normalizers

}  // namespace

absl::StatusOr<Normalizer> MakeNormalizer(const json& j, const std::string& origin) {
  if (j.is_null()) return Normalizer([](const std::string& s) { return s; });
  const std::string type = j.value("type", "");
  if (type == "Sequence") {
    std::vector<Normalizer> parts;
    for (const auto& n : j["normalizers"]) {
      ASSIGN_OR_RETURN(auto p, MakeNormalizer(n, origin));
      parts.push_back(std::move(p));
    }
    return Normalizer([parts](const std::string& s) {
      std::string r = s;
      for (const auto& p : parts) r = p(r);
      return r;
    });
  }
  if (type == "NFC" || type == "NFD" || type == "NFKC" || type == "NFKD") {
    UErrorCode status = U_ZERO_ERROR;
    const icu::Normalizer2* n = type == "NFC"    ? icu::Normalizer2::getNFCInstance(status)
                                : type == "NFD"  ? icu::Normalizer2::getNFDInstance(status)
                                : type == "NFKC" ? icu::Normalizer2::getNFKCInstance(status)
                                                 : icu::Normalizer2::getNFKDInstance(status);
    if (U_FAILURE(status)) return absl::InternalError("ICU normalizer unavailable");
    return Normalizer([n](const std::string& s) {
      UErrorCode st = U_ZERO_ERROR;
      return Utf8(n->normalize(icu::UnicodeString::fromUTF8(s), st));
    });
  }
  if (type == "Lowercase") {
    return Normalizer([](const std::string& s) { return Utf8(icu::UnicodeString::fromUTF8(s).toLower()); });
  }
  if (type == "Prepend") {
    std::string p = j["prepend"].get<std::string>();
    return Normalizer([p](const std::string& s) { return s.empty() ? s : p + s; });
  }
  if (type == "Replace") {
    ASSIGN_OR_RETURN(auto pat, ParsePattern(j["pattern"], origin));
    std::string content = j["content"].get<std::string>();
    return Normalizer([pat, content](const std::string& s) {
      std::string r;
      for (const auto& [piece, match] : pat.Split(s)) r += match ? content : piece;
      return r;
    });
  }
  return Unsupported(origin, absl::StrCat("normalizer '", type, "'"));
}

// ------------------------------------------------------------------------------------ pre-tokenizers

namespace {
const char* kGpt2Regex = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

}  // namespace

absl::StatusOr<PreTokenizer> MakePreTokenizer(const json& j, const std::string& origin) {
  if (j.is_null()) return PreTokenizer([](std::vector<std::string>&) {});
  const std::string type = j.value("type", "");
  if (type == "Sequence") {
    std::vector<PreTokenizer> parts;
    for (const auto& p : j["pretokenizers"]) {
      ASSIGN_OR_RETURN(auto x, MakePreTokenizer(p, origin));
      parts.push_back(std::move(x));
    }
    return PreTokenizer([parts](std::vector<std::string>& pieces) {
      for (const auto& p : parts) p(pieces);
    });
  }
  if (type == "Split") {
    ASSIGN_OR_RETURN(auto pat, ParsePattern(j["pattern"], origin));
    const std::string behavior = j.value("behavior", "Isolated");
    const bool invert = j.value("invert", false);
    if (behavior != "Isolated" && behavior != "Removed" && behavior != "MergedWithPrevious" &&
        behavior != "MergedWithNext" && behavior != "Contiguous") {
      return Unsupported(origin, absl::StrCat("Split behavior '", behavior, "'"));
    }
    return PreTokenizer([pat, behavior, invert](std::vector<std::string>& pieces) {
      std::vector<std::string> out;
      for (const auto& piece : pieces) {
        auto parts = pat.Split(piece);
        if (invert) {
          for (auto& p : parts) p.second = !p.second;
        }
        if (behavior == "Isolated") {
          for (auto& p : parts) out.push_back(std::move(p.first));
        } else if (behavior == "Removed") {
          for (auto& p : parts) {
            if (!p.second) out.push_back(std::move(p.first));
          }
        } else if (behavior == "MergedWithPrevious") {
          std::string cur;
          for (auto& p : parts) {
            cur += p.first;
            if (p.second) out.push_back(std::move(cur)), cur.clear();
          }
          if (!cur.empty()) out.push_back(std::move(cur));
        } else if (behavior == "MergedWithNext") {
          std::string cur;
          for (auto& p : parts) {
            if (p.second && !cur.empty()) out.push_back(std::move(cur)), cur.clear();
            cur += p.first;
          }
          if (!cur.empty()) out.push_back(std::move(cur));
        } else {  // Contiguous: consecutive matches merge
          std::string cur;
          bool cur_match = false;
          for (auto& p : parts) {
            if (!cur.empty() && p.second != cur_match) out.push_back(std::move(cur)), cur.clear();
            cur += p.first;
            cur_match = p.second;
          }
          if (!cur.empty()) out.push_back(std::move(cur));
        }
      }
      pieces.swap(out);
    });
  }
  if (type == "ByteLevel") {
    const bool prefix = j.value("add_prefix_space", false);
    const bool use_regex = j.value("use_regex", true);
    std::shared_ptr<Regex> re;
    if (use_regex) {
      ASSIGN_OR_RETURN(re, Regex::Compile(kGpt2Regex, origin));
    }
    return PreTokenizer([prefix, re](std::vector<std::string>& pieces) {
      std::vector<std::string> out;
      const auto& bytes = Bytes();
      for (auto& piece : pieces) {
        std::string p = (prefix && (piece.empty() || piece[0] != ' ')) ? " " + piece : piece;
        std::vector<std::string> parts;
        if (re) {
          for (auto& [s, m] : re->Split(p)) parts.push_back(std::move(s));
        } else {
          parts.push_back(std::move(p));
        }
        for (const auto& part : parts) {
          std::string mapped;
          for (unsigned char c : part) mapped += bytes.to_char[c];
          out.push_back(std::move(mapped));
        }
      }
      pieces.swap(out);
    });
  }
  return Unsupported(origin, absl::StrCat("pre-tokenizer '", type, "'"));
}

// ----------------------------------------------------------------------------------------- decoders

namespace {
std::string BytesToUtf8Lossy(const std::string& bytes) {
  // Invalid sequences become U+FFFD, as String::from_utf8_lossy does.
  std::string out;
  int32_t i = 0;
  const int32_t n = static_cast<int32_t>(bytes.size());
  const auto* p = reinterpret_cast<const uint8_t*>(bytes.data());
  while (i < n) {
    int32_t start = i;
    UChar32 c;
    U8_NEXT(p, i, n, c);
    if (c < 0) {
      out += "\xEF\xBF\xBD";
    } else {
      out.append(bytes, start, i - start);
    }
  }
  return out;
}

}  // namespace

absl::StatusOr<Decoder> MakeDecoder(const json& j, const std::string& origin) {
  if (j.is_null()) {
    return Decoder([](std::vector<std::string> t) {
      std::string s;
      for (size_t i = 0; i < t.size(); ++i) s += (i ? " " : "") + t[i];
      return std::vector<std::string>{s};
    });
  }
  const std::string type = j.value("type", "");
  if (type == "Sequence") {
    std::vector<Decoder> parts;
    for (const auto& d : j["decoders"]) {
      ASSIGN_OR_RETURN(auto x, MakeDecoder(d, origin));
      parts.push_back(std::move(x));
    }
    return Decoder([parts](std::vector<std::string> t) {
      for (const auto& p : parts) t = p(std::move(t));
      return t;
    });
  }
  if (type == "ByteLevel") {
    return Decoder([](std::vector<std::string> tokens) {
      const auto& m = Bytes().to_byte;
      std::string bytes;
      for (const auto& t : tokens) {
        std::string tb;
        bool all = true;
        for (const auto& ch : Chars(t)) {
          UChar32 cp = icu::UnicodeString::fromUTF8(ch).char32At(0);
          auto it = m.find(static_cast<uint32_t>(cp));
          if (it == m.end()) {
            all = false;
            break;
          }
          tb.push_back(static_cast<char>(it->second));
        }
        bytes += all ? tb : t;
      }
      return std::vector<std::string>{BytesToUtf8Lossy(bytes)};
    });
  }
  if (type == "Replace") {
    ASSIGN_OR_RETURN(auto pat, ParsePattern(j["pattern"], origin));
    std::string content = j["content"].get<std::string>();
    return Decoder([pat, content](std::vector<std::string> t) {
      for (auto& s : t) {
        std::string r;
        for (const auto& [piece, match] : pat.Split(s)) r += match ? content : piece;
        s = r;
      }
      return t;
    });
  }
  if (type == "ByteFallback") {
    return Decoder([](std::vector<std::string> tokens) {
      std::vector<std::string> out;
      std::string pending;
      int pending_count = 0;
      auto flush = [&] {
        if (pending_count == 0) return;
        std::string lossy = BytesToUtf8Lossy(pending);
        if (lossy == pending) {
          out.push_back(pending);
        } else {
          for (int i = 0; i < pending_count; ++i) out.push_back("\xEF\xBF\xBD");
        }
        pending.clear();
        pending_count = 0;
      };
      for (auto& t : tokens) {
        unsigned v = 0;
        if (t.size() == 6 && t.rfind("<0x", 0) == 0 && t[5] == '>' && std::sscanf(t.c_str() + 3, "%2x", &v) == 1) {
          pending.push_back(static_cast<char>(v));
          ++pending_count;
        } else {
          flush();
          out.push_back(std::move(t));
        }
      }
      flush();
      return out;
    });
  }
  if (type == "Fuse") {
    return Decoder([](std::vector<std::string> t) {
      std::string s;
      for (const auto& x : t) s += x;
      return std::vector<std::string>{s};
    });
  }
  if (type == "Strip") {
    std::string content = j["content"].get<std::string>();
    int start = j.value("start", 0), stop = j.value("stop", 0);
    return Decoder([content, start, stop](std::vector<std::string> t) {
      for (auto& s : t) {
        auto chars = Chars(s);
        size_t b = 0, e = chars.size();
        for (int i = 0; i < start && b < e && chars[b] == content; ++i) ++b;
        for (int i = 0; i < stop && e > b && chars[e - 1] == content; ++i) --e;
        std::string r;
        for (size_t i = b; i < e; ++i) r += chars[i];
        s = r;
      }
      return t;
    });
  }
  return Unsupported(origin, absl::StrCat("decoder '", type, "'"));
}

}  // namespace rlhf::text::internal
