#include "common/text/tokenizer.h"

#include <unicode/normalizer2.h>
#include <unicode/regex.h>
#include <unicode/uchar.h>
#include <unicode/unistr.h>
#include <unicode/utf8.h>

#include <algorithm>
#include <array>
#include <fstream>
#include <functional>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <queue>
#include <set>
#include <sstream>
#include <unordered_map>

#include "absl/strings/str_format.h"
#include "common/text/utf8.h"

namespace rlhf::text {

using nlohmann::json;

namespace {

// ------------------------------------------------------------------------------------------- byte level
// GPT-2's reversible map of the 256 byte values to printable unicode characters.
struct ByteMap {
  std::array<std::string, 256> to_char;   // byte -> UTF-8 of its character
  std::unordered_map<uint32_t, uint8_t> to_byte;  // code point -> byte
  ByteMap() {
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
};
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

// A compiled ICU regex (shared; matchers are made per call, so it is thread-safe).
struct Regex {
  std::unique_ptr<icu::RegexPattern> pattern;
  static absl::StatusOr<std::shared_ptr<Regex>> Compile(const std::string& re, const std::string& origin) {
    UErrorCode status = U_ZERO_ERROR;
    UParseError perr;
    auto r = std::make_shared<Regex>();
    r->pattern.reset(icu::RegexPattern::compile(icu::UnicodeString::fromUTF8(re), perr, status));
    if (U_FAILURE(status)) {
      return absl::InvalidArgumentError(absl::StrCat(origin, ": regex '", re, "' does not compile: ", u_errorName(status)));
    }
    return r;
  }
  // Pieces of `s` with whether each is a match, in order, covering s.
  std::vector<std::pair<std::string, bool>> Split(const std::string& s) const {
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
};

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
using Normalizer = std::function<std::string(const std::string&)>;

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
using PreTokenizer = std::function<void(std::vector<std::string>&)>;

const char* kGpt2Regex = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

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
using Decoder = std::function<std::vector<std::string>(std::vector<std::string>)>;

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

}  // namespace

// ------------------------------------------------------------------------------------------- the model
struct AddedToken {
  int32_t id;
  std::string content;
  bool special, lstrip, rstrip, single_word;
};

class TokenizerImpl {
 public:
  std::string origin;
  std::unordered_map<std::string, int32_t> vocab;
  std::vector<std::string> id_to_token;
  std::unordered_map<uint64_t, std::pair<int32_t, int32_t>> merges;  // (a, b) -> (rank, merged id)
  std::optional<int32_t> unk;
  bool byte_fallback = false, ignore_merges = false, fuse_unk = false;
  std::vector<AddedToken> added;
  std::unordered_map<int32_t, size_t> added_by_id;
  std::unordered_map<unsigned char, std::vector<size_t>> added_by_first_byte;  // longest first
  Normalizer normalizer;
  PreTokenizer pre_tokenizer;
  Decoder decoder;
  // TemplateProcessing (single sequence): ids before and after the sequence.
  std::vector<int32_t> prefix_ids, suffix_ids;
  // Cache of BPE results per pre-token.
  mutable std::mutex cache_mu;
  mutable std::unordered_map<std::string, std::vector<int32_t>> cache;

  static uint64_t Key(int32_t a, int32_t b) { return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b); }

  void Bpe(const std::string& word, std::vector<int32_t>* out) const {
    if (ignore_merges) {
      auto it = vocab.find(word);
      if (it != vocab.end()) {
        out->push_back(it->second);
        return;
      }
    }
    {
      std::lock_guard<std::mutex> lock(cache_mu);
      auto it = cache.find(word);
      if (it != cache.end()) {
        out->insert(out->end(), it->second.begin(), it->second.end());
        return;
      }
    }
    // Symbols: one per character (bytes via <0xXX> tokens with byte fallback).
    std::vector<int32_t> ids;
    bool last_unk = false;
    for (const auto& ch : Chars(word)) {
      auto it = vocab.find(ch);
      if (it != vocab.end()) {
        ids.push_back(it->second);
        last_unk = false;
      } else if (byte_fallback) {
        for (unsigned char b : ch) {
          auto bt = vocab.find(absl::StrFormat("<0x%02X>", b));
          if (bt != vocab.end()) ids.push_back(bt->second);
          else if (unk) ids.push_back(*unk);
        }
        last_unk = false;
      } else if (unk) {
        if (!(fuse_unk && last_unk)) ids.push_back(*unk);
        last_unk = true;
      }
    }
    // Merge the lowest-ranked adjacent pair first (leftmost on ties) until none applies.
    const int n = static_cast<int>(ids.size());
    std::vector<int> prev(n), next(n);
    std::vector<bool> alive(n, true);
    for (int i = 0; i < n; ++i) prev[i] = i - 1, next[i] = i + 1 < n ? i + 1 : -1;
    using Item = std::tuple<int32_t, int, int32_t, int32_t>;  // rank, position, left id, right id
    std::priority_queue<Item, std::vector<Item>, std::greater<Item>> heap;
    auto push = [&](int i) {
      if (i < 0 || next[i] < 0) return;
      auto it = merges.find(Key(ids[i], ids[next[i]]));
      if (it != merges.end()) heap.emplace(it->second.first, i, ids[i], ids[next[i]]);
    };
    for (int i = 0; i + 1 < n; ++i) push(i);
    while (!heap.empty()) {
      auto [rank, i, a, b] = heap.top();
      heap.pop();
      if (!alive[i] || next[i] < 0 || ids[i] != a || ids[next[i]] != b) continue;  // stale
      const int j = next[i];
      ids[i] = merges.at(Key(a, b)).second;
      alive[j] = false;
      next[i] = next[j];
      if (next[j] >= 0) prev[next[j]] = i;
      push(prev[i]);
      push(i);
    }
    std::vector<int32_t> result;
    for (int i = 0; i < n; ++i) {
      if (alive[i]) result.push_back(ids[i]);
    }
    out->insert(out->end(), result.begin(), result.end());
    std::lock_guard<std::mutex> lock(cache_mu);
    if (cache.size() > 200000) cache.clear();
    cache.emplace(word, std::move(result));
  }

  // Splits text into plain segments and added tokens (leftmost, longest first).
  void SplitAdded(std::string_view text, std::vector<std::pair<std::string, int32_t>>* out) const {
    std::string plain;
    size_t i = 0;
    auto is_space = [](char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; };
    while (i < text.size()) {
      const AddedToken* hit = nullptr;
      auto it = added_by_first_byte.find(static_cast<unsigned char>(text[i]));
      if (it != added_by_first_byte.end()) {
        for (size_t k : it->second) {
          const auto& t = added[k];
          if (text.compare(i, t.content.size(), t.content) != 0) continue;
          if (t.single_word) {
            auto word = [](char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_'; };
            bool left_ok = i == 0 || !word(text[i - 1]);
            size_t e = i + t.content.size();
            bool right_ok = e >= text.size() || !word(text[e]);
            if (!left_ok || !right_ok) continue;
          }
          hit = &t;
          break;
        }
      }
      if (hit == nullptr) {
        plain.push_back(text[i++]);
        continue;
      }
      if (hit->lstrip) {
        while (!plain.empty() && is_space(plain.back())) plain.pop_back();
      }
      if (!plain.empty()) out->emplace_back(std::move(plain), -1);
      plain.clear();
      out->emplace_back(std::string(), hit->id);
      i += hit->content.size();
      if (hit->rstrip) {
        while (i < text.size() && is_space(text[i])) ++i;
      }
    }
    if (!plain.empty()) out->emplace_back(std::move(plain), -1);
  }
};

namespace {

absl::Status ParseModel(const json& m, TokenizerImpl* t) {
  const std::string& origin = t->origin;
  if (m.value("type", "") != "BPE") return Unsupported(origin, absl::StrCat("model '", m.value("type", "?"), "' (only BPE)"));
  if (m.contains("dropout") && !m["dropout"].is_null() && m["dropout"].get<double>() != 0) {
    return Unsupported(origin, "BPE dropout");
  }
  for (const char* k : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    if (m.contains(k) && m[k].is_string() && !m[k].get<std::string>().empty()) {
      return Unsupported(origin, absl::StrCat("BPE ", k));
    }
  }
  t->byte_fallback = m.value("byte_fallback", false);
  t->ignore_merges = m.value("ignore_merges", false);
  t->fuse_unk = m.value("fuse_unk", false);
  int32_t max_id = -1;
  for (const auto& [tok, id] : m["vocab"].items()) {
    t->vocab[tok] = id.get<int32_t>();
    max_id = std::max(max_id, id.get<int32_t>());
  }
  t->id_to_token.assign(max_id + 1, "");
  for (const auto& [tok, id] : t->vocab) t->id_to_token[id] = tok;
  if (m.contains("unk_token") && m["unk_token"].is_string()) {
    auto it = t->vocab.find(m["unk_token"].get<std::string>());
    if (it != t->vocab.end()) t->unk = it->second;
  }
  int32_t rank = 0;
  for (const auto& mg : m["merges"]) {
    std::string a, b;
    if (mg.is_string()) {
      std::string s = mg.get<std::string>();
      auto sp = s.find(' ', 1);
      if (sp == std::string::npos) return absl::InvalidArgumentError(absl::StrCat(origin, ": merge '", s, "' has no space"));
      a = s.substr(0, sp);
      b = s.substr(sp + 1);
    } else {
      a = mg[0].get<std::string>();
      b = mg[1].get<std::string>();
    }
    auto ia = t->vocab.find(a), ib = t->vocab.find(b), im = t->vocab.find(a + b);
    if (ia == t->vocab.end() || ib == t->vocab.end() || im == t->vocab.end()) {
      return absl::InvalidArgumentError(absl::StrCat(origin, ": merge ", rank, " ('", a, "' '", b,
                                                     "') uses a token missing from the vocabulary"));
    }
    t->merges.emplace(TokenizerImpl::Key(ia->second, ib->second), std::make_pair(rank, im->second));
    ++rank;
  }
  return absl::OkStatus();
}

absl::Status ParsePostProcessor(const json& j, TokenizerImpl* t) {
  if (j.is_null()) return absl::OkStatus();
  const std::string type = j.value("type", "");
  if (type == "Sequence") {
    for (const auto& p : j["processors"]) RETURN_IF_ERROR(ParsePostProcessor(p, t));
    return absl::OkStatus();
  }
  if (type == "ByteLevel") return absl::OkStatus();  // offsets only
  if (type == "TemplateProcessing") {
    bool seen_sequence = false;
    for (const auto& piece : j["single"]) {
      if (piece.contains("Sequence")) {
        seen_sequence = true;
        continue;
      }
      std::string name = piece["SpecialToken"]["id"].get<std::string>();
      const auto& special = j["special_tokens"];
      if (!special.contains(name)) {
        return absl::InvalidArgumentError(absl::StrCat(t->origin, ": post_processor names '", name, "' without ids"));
      }
      auto& dst = seen_sequence ? t->suffix_ids : t->prefix_ids;
      for (const auto& id : special[name]["ids"]) dst.push_back(id.get<int32_t>());
    }
    return absl::OkStatus();
  }
  return Unsupported(t->origin, absl::StrCat("post-processor '", type, "'"));
}

}  // namespace

absl::StatusOr<Tokenizer> Tokenizer::FromJson(const std::string& text, const std::string& origin) {
  json j = json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return absl::InvalidArgumentError(absl::StrCat(origin, ": not valid JSON"));
  if (!j.contains("model")) return absl::InvalidArgumentError(absl::StrCat(origin, ": no \"model\"; is this a tokenizer.json?"));
  auto impl = std::make_unique<TokenizerImpl>();
  impl->origin = origin;
  RETURN_IF_ERROR(ParseModel(j["model"], impl.get()));
  ASSIGN_OR_RETURN(impl->normalizer, MakeNormalizer(j.value("normalizer", json()), origin));
  ASSIGN_OR_RETURN(impl->pre_tokenizer, MakePreTokenizer(j.value("pre_tokenizer", json()), origin));
  ASSIGN_OR_RETURN(impl->decoder, MakeDecoder(j.value("decoder", json()), origin));
  RETURN_IF_ERROR(ParsePostProcessor(j.value("post_processor", json()), impl.get()));
  if (j.contains("added_tokens")) {
    for (const auto& a : j["added_tokens"]) {
      AddedToken t{a["id"].get<int32_t>(), a["content"].get<std::string>(), a.value("special", false),
                   a.value("lstrip", false), a.value("rstrip", false), a.value("single_word", false)};
      if (t.content.empty()) continue;
      impl->added_by_id[t.id] = impl->added.size();
      impl->added.push_back(t);
      if (static_cast<size_t>(t.id) >= impl->id_to_token.size()) impl->id_to_token.resize(t.id + 1);
      impl->id_to_token[t.id] = t.content;
    }
    for (size_t k = 0; k < impl->added.size(); ++k) {
      impl->added_by_first_byte[static_cast<unsigned char>(impl->added[k].content[0])].push_back(k);
    }
    for (auto& [byte, list] : impl->added_by_first_byte) {
      std::stable_sort(list.begin(), list.end(), [&](size_t a, size_t b) {
        return impl->added[a].content.size() > impl->added[b].content.size();
      });
    }
  }
  return Tokenizer(std::move(impl));
}

absl::StatusOr<Tokenizer> Tokenizer::FromFile(const std::string& path) {
  std::string file = path;
  std::ifstream probe(path + "/tokenizer.json");
  if (probe.good()) file = path + "/tokenizer.json";
  std::ifstream in(file);
  if (!in) return absl::NotFoundError(absl::StrCat(file, ": cannot open (need a tokenizer.json or a folder with one)"));
  std::stringstream ss;
  ss << in.rdbuf();
  return FromJson(ss.str(), file);
}

Tokenizer::Tokenizer(std::unique_ptr<TokenizerImpl> impl) : impl_(std::move(impl)) {}
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;
Tokenizer::~Tokenizer() = default;

std::vector<int32_t> Tokenizer::Encode(std::string_view text, bool add_special_tokens) const {
  std::vector<int32_t> ids;
  if (add_special_tokens) ids = impl_->prefix_ids;
  std::vector<std::pair<std::string, int32_t>> segments;
  impl_->SplitAdded(text, &segments);
  for (auto& [seg, id] : segments) {
    if (id >= 0) {
      ids.push_back(id);
      continue;
    }
    std::vector<std::string> pieces{impl_->normalizer(seg)};
    impl_->pre_tokenizer(pieces);
    for (const auto& p : pieces) {
      if (!p.empty()) impl_->Bpe(p, &ids);
    }
  }
  if (add_special_tokens) ids.insert(ids.end(), impl_->suffix_ids.begin(), impl_->suffix_ids.end());
  return ids;
}

absl::StatusOr<std::string> Tokenizer::Decode(const std::vector<int32_t>& ids, bool skip_special_tokens) const {
  std::vector<std::string> tokens;
  for (int32_t id : ids) {
    // Ids without a token (a model's vocabulary is often padded past the tokenizer's) are skipped, as HF does.
    if (id < 0 || static_cast<size_t>(id) >= impl_->id_to_token.size() || impl_->id_to_token[id].empty()) continue;
    if (skip_special_tokens && IsSpecial(id)) continue;
    tokens.push_back(impl_->id_to_token[id]);
  }
  std::string out;
  for (const auto& s : impl_->decoder(std::move(tokens))) out += s;
  return out;
}

std::optional<int32_t> Tokenizer::TokenToId(const std::string& token) const {
  for (const auto& a : impl_->added) {
    if (a.content == token) return a.id;
  }
  auto it = impl_->vocab.find(token);
  if (it == impl_->vocab.end()) return std::nullopt;
  return it->second;
}

std::optional<std::string> Tokenizer::IdToToken(int32_t id) const {
  if (id < 0 || static_cast<size_t>(id) >= impl_->id_to_token.size() || impl_->id_to_token[id].empty()) return std::nullopt;
  return impl_->id_to_token[id];
}

bool Tokenizer::IsSpecial(int32_t id) const {
  auto it = impl_->added_by_id.find(id);
  return it != impl_->added_by_id.end() && impl_->added[it->second].special;
}

int32_t Tokenizer::vocab_size() const { return static_cast<int32_t>(impl_->id_to_token.size()); }

// ------------------------------------------------------------------------------------------ training
const char* kQwenSplit =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

std::string Tokenizer::TrainByteLevelBpe(const std::vector<std::string>& corpus, int num_merges,
                                         const std::vector<std::string>& special_tokens) {
  auto re = Regex::Compile(kQwenSplit, "train").value();
  const auto& bytes = Bytes();
  // Words (as byte-level symbol sequences) with counts.
  std::map<std::vector<std::string>, int64_t> words;
  for (const auto& text : corpus) {
    for (const auto& [piece, m] : re->Split(text)) {
      std::vector<std::string> syms;
      for (unsigned char c : piece) syms.push_back(bytes.to_char[c]);
      if (!syms.empty()) ++words[syms];
    }
  }
  std::vector<std::pair<std::vector<std::string>, int64_t>> ws(words.begin(), words.end());
  json vocab = json::object();
  int32_t next_id = 0;
  for (int b = 0; b < 256; ++b) vocab[bytes.to_char[b]] = next_id++;
  json merges = json::array();
  for (int k = 0; k < num_merges; ++k) {
    std::map<std::pair<std::string, std::string>, int64_t> counts;
    for (const auto& [w, c] : ws) {
      for (size_t i = 0; i + 1 < w.size(); ++i) counts[{w[i], w[i + 1]}] += c;
    }
    if (counts.empty()) break;
    // Most frequent pair; ties go to the smallest pair (std::map order), so training is deterministic.
    auto best = counts.begin();
    for (auto it = counts.begin(); it != counts.end(); ++it) {
      if (it->second > best->second) best = it;
    }
    if (best->second < 2) break;
    const auto [a, b] = best->first;
    const std::string merged = a + b;
    if (!vocab.contains(merged)) vocab[merged] = next_id++;
    merges.push_back(json::array({a, b}));
    for (auto& [w, c] : ws) {
      std::vector<std::string> nw;
      for (size_t i = 0; i < w.size(); ++i) {
        if (i + 1 < w.size() && w[i] == a && w[i + 1] == b) {
          nw.push_back(merged);
          ++i;
        } else {
          nw.push_back(w[i]);
        }
      }
      w.swap(nw);
    }
  }
  json added = json::array();
  for (const auto& s : special_tokens) {
    added.push_back({{"id", next_id++}, {"content", s}, {"single_word", false}, {"lstrip", false}, {"rstrip", false},
                     {"normalized", false}, {"special", true}});
  }
  json byte_level = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", false}, {"use_regex", false}};
  json tok = {
      {"version", "1.0"},
      {"truncation", nullptr},
      {"padding", nullptr},
      {"added_tokens", added},
      {"normalizer", {{"type", "NFC"}}},
      {"pre_tokenizer",
       {{"type", "Sequence"},
        {"pretokenizers",
         json::array({{{"type", "Split"}, {"pattern", {{"Regex", kQwenSplit}}}, {"behavior", "Isolated"}, {"invert", false}},
                      byte_level})}}},
      {"post_processor", byte_level},
      {"decoder", byte_level},
      {"model",
       {{"type", "BPE"},
        {"dropout", nullptr},
        {"unk_token", nullptr},
        {"continuing_subword_prefix", ""},
        {"end_of_word_suffix", ""},
        {"fuse_unk", false},
        {"byte_fallback", false},
        {"ignore_merges", false},
        {"vocab", vocab},
        {"merges", merges}}}};
  return tok.dump(2);
}

}  // namespace rlhf::text
