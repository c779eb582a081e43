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

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_format.h"
#include "common/text/tokenizer_parts.h"
#include "common/text/utf8.h"

namespace rlhf::text {

using nlohmann::json;

using namespace internal;  // NOLINT: the pipeline parts of this library


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
  mutable std::unordered_map<std::string, std::vector<int32_t>> cache ABSL_GUARDED_BY(cache_mu);

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

}  // namespace rlhf::text
