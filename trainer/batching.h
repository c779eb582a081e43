// From token sequences to micro-batches: right padding, packing of short examples into rows (attention kept
// inside each example by segment ids, positions restarting per example), and sharding of a global batch
// over data-parallel ranks. Dimension key: N sequences, B rows, T tokens per row.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <vector>

#include "trainer/learner.h"

namespace rlhf::trainer {

// One sequence with the tokens trained on (target[t] = 1: token t is predicted from t - 1 and scored).
struct TokenSeq {
  std::vector<int32_t> ids;
  std::vector<uint8_t> target;
};

// Right-padded rows, one sequence per row: ids [B, T] (pad with pad_id), attention_mask, target_mask.
MicroBatch PadRows(const std::vector<const TokenSeq*>& seqs, int32_t pad_id);

// Packs sequences (in order, first fit) into rows of at most max_len tokens, then groups rows into
// micro-batches of `rows_per_micro` rows. Sequences longer than max_len are cut to max_len.
std::vector<MicroBatch> PackRows(const std::vector<const TokenSeq*>& seqs, int64_t max_len, int64_t rows_per_micro,
                                 int32_t pad_id);

// Consecutive chunks of `micro` items: [0, micro), [micro, 2 micro), ...
std::vector<std::vector<size_t>> Chunks(const std::vector<size_t>& items, int64_t micro);

// This rank's contiguous part of a global batch of `n` items: [rank * n / size, (rank + 1) * n / size).
std::pair<size_t, size_t> ShardRange(size_t n, int rank, int size);

// KTO's mismatched pairs over n rows laid out as examples of `rows_per_example` consecutive rows (2 for
// preference pairs: chosen, rejected): row k's prompt goes with the completion of partner[k], the same
// row of the next example (cyclically), so prompt and completion come from different examples whenever
// there are two or more.
std::vector<size_t> MismatchPartners(size_t n, size_t rows_per_example);

// A sequence made of `a`'s prompt (the tokens before its first target) and `b`'s completion.
TokenSeq PromptWithCompletion(const TokenSeq& a, const TokenSeq& b);

// Rows `rows` of a padded micro-batch (every [B, ...] tensor and field), columns cut to the longest row.
MicroBatch SelectRows(const MicroBatch& full, const std::vector<int64_t>& rows);

}  // namespace rlhf::trainer
