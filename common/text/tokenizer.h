// Hugging Face tokenizer.json, read and applied exactly as HF tokenizers does for the BPE models in use:
// byte-level BPE (GPT-2, Qwen2/3, Llama 3: Split regex + ByteLevel pre-tokenizers, ignore_merges) and
// SentencePiece-style BPE with byte fallback (Prepend/Replace normalizers, ByteFallback/Fuse/Strip
// decoders); NFC/NFD/NFKC/NFKD/Lowercase normalizers; added and special tokens (split out of the text
// before anything else, lstrip/rstrip honoured); TemplateProcessing post-processors (BOS/EOS).
// Anything else in a tokenizer.json is refused with the component named, never ignored.
//
// Thread-safety: a Tokenizer is immutable after construction; Encode/Decode may run from many threads.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace rlhf::text {

class TokenizerImpl;

class Tokenizer {
 public:
  // `path`: a tokenizer.json file, or a folder holding one. NOT_FOUND / INVALID_ARGUMENT naming the file
  // and the unsupported component.
  static absl::StatusOr<Tokenizer> FromFile(const std::string& path);
  static absl::StatusOr<Tokenizer> FromJson(const std::string& json_text, const std::string& origin);

  // Token ids of `text`. add_special_tokens applies the post-processor (e.g. a BOS); special tokens
  // written inside the text are always recognised, as in HF.
  std::vector<int32_t> Encode(std::string_view text, bool add_special_tokens = true) const;
  // Text of `ids` (skip_special_tokens drops special added tokens). Invalid UTF-8 becomes U+FFFD. Ids
  // without a token (models often pad their vocabulary past the tokenizer's) are skipped, as HF does.
  absl::StatusOr<std::string> Decode(const std::vector<int32_t>& ids, bool skip_special_tokens = false) const;

  std::optional<int32_t> TokenToId(const std::string& token) const;
  std::optional<std::string> IdToToken(int32_t id) const;
  bool IsSpecial(int32_t id) const;
  // 1 + the largest id of the vocabulary and the added tokens.
  int32_t vocab_size() const;

  // Trains a byte-level BPE tokenizer (Qwen2-style split regex, no normalizer) with `num_merges` merges
  // on `corpus`, with `special_tokens` as added special tokens after the 256 byte tokens and the merges.
  // Returns the tokenizer.json text (HF tokenizers loads it and encodes identically).
  static std::string TrainByteLevelBpe(const std::vector<std::string>& corpus, int num_merges,
                                       const std::vector<std::string>& special_tokens);

  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;
  ~Tokenizer();

 private:
  explicit Tokenizer(std::unique_ptr<TokenizerImpl> impl);
  std::unique_ptr<TokenizerImpl> impl_;
};

}  // namespace rlhf::text
