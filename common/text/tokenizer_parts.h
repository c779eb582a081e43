// The parts of a tokenizer.json pipeline (common/text only): GPT-2's byte map, compiled ICU regexes, and the
// normalizer, pre-tokenizer and decoder stages built from their JSON. tokenizer.cc assembles them with the
// BPE model; tokenizer_train.cc trains a byte-level BPE with them.
#pragma once

#include <unicode/regex.h>
#include <unicode/unistr.h>

#include <array>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "common/status.h"

namespace rlhf::text::internal {

// GPT-2's reversible map of the 256 byte values to printable unicode characters.
struct ByteMap {
  std::array<std::string, 256> to_char;           // byte -> UTF-8 of its character
  std::unordered_map<uint32_t, uint8_t> to_byte;  // code point -> byte
  ByteMap();
};
const ByteMap& Bytes();

// The code points of UTF-8 text, each as its UTF-8 bytes.
std::vector<std::string> Chars(std::string_view s);
std::string Utf8(const icu::UnicodeString& u);
// INVALID_ARGUMENT: "<origin>: <what> is not supported".
absl::Status Unsupported(const std::string& origin, const std::string& what);

// A compiled ICU regex (shared; matchers are made per call, so it is thread-safe).
struct Regex {
  std::unique_ptr<icu::RegexPattern> pattern;
  static absl::StatusOr<std::shared_ptr<Regex>> Compile(const std::string& re, const std::string& origin);
  // Pieces of `s` with whether each is a match, in order, covering s.
  std::vector<std::pair<std::string, bool>> Split(const std::string& s) const;
};

// The stages of the pipeline, built from tokenizer.json's "normalizer", "pre_tokenizer" and "decoder".
using Normalizer = std::function<std::string(const std::string&)>;
using PreTokenizer = std::function<void(std::vector<std::string>&)>;
using Decoder = std::function<std::vector<std::string>(std::vector<std::string>)>;
absl::StatusOr<Normalizer> MakeNormalizer(const nlohmann::json& j, const std::string& origin);
absl::StatusOr<PreTokenizer> MakePreTokenizer(const nlohmann::json& j, const std::string& origin);
absl::StatusOr<Decoder> MakeDecoder(const nlohmann::json& j, const std::string& origin);

}  // namespace rlhf::text::internal
