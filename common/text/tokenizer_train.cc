// Training a byte-level BPE tokenizer (`rlhf train-tokenizer`) in HF tokenizers' format.
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "common/text/tokenizer.h"
#include "common/text/tokenizer_parts.h"

namespace rlhf::text {

using nlohmann::json;
using namespace internal;  // NOLINT: the pipeline parts of this library

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
