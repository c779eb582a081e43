// Batched no-grad forwards of token rows (a prompt and a completion) through a model: rows sorted by
// (temperature, length) and cut into batches of at most `batch_tokens` padded tokens, right-padded, with no
// attention mask when a batch has no padding (the faster causal path).
#pragma once

#include <cstdint>
#include <vector>

#include "common/model/transformer.h"
#include "rlhf/sample.pb.h"

namespace rlhf::scoring {

struct TokenRow {
  const int32_t* prompt = nullptr;
  int64_t prompt_len = 0;
  const int32_t* completion = nullptr;
  int64_t completion_len = 0;
  float temperature = 1.f;  // <= 0 is taken as 1
  int64_t size() const { return prompt_len + completion_len; }
};

// The token rows of samples (they must outlive the rows).
std::vector<TokenRow> RowsOf(const std::vector<const Sample*>& samples);

// Per row, the log-probs of its completion tokens at its temperature (log-softmax in f32); a completion
// token at position 0 has no prediction and gets 0.
std::vector<std::vector<float>> CompletionLogProbs(model::Transformer& net, const std::vector<TokenRow>& rows,
                                                   int64_t batch_tokens);

// Per row, the score head (num_labels 1) at its last token.
std::vector<float> LastTokenScores(model::Transformer& net, const std::vector<TokenRow>& rows, int64_t batch_tokens);

// Per row, the score head (num_labels 1) at each of its completion tokens.
std::vector<std::vector<float>> CompletionTokenScores(model::Transformer& net, const std::vector<TokenRow>& rows,
                                                      int64_t batch_tokens);

}  // namespace rlhf::scoring
