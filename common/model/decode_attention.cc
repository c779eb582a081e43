#include "common/model/decode_attention.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <limits>
#include <vector>

#include "common/vec_math.h"

namespace rlhf::model {

namespace {

template <typename T>
void Run(const DecodeAttentionArgs& a) {
  const int64_t K = a.kv_heads, G = a.groups, D = a.head_dim, S = a.capacity, H = K * G;
  const T* keys = static_cast<const T*>(a.keys);
  const T* values = static_cast<const T*>(a.values);
  int64_t max_len = 1;
  for (int64_t r = 0; r < a.rows; ++r) max_len = std::max(max_len, a.lengths[r]);
  at::parallel_for(0, a.rows * K, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scores(static_cast<size_t>(G * max_len));
    for (int64_t pair = begin; pair < end; ++pair) {
      const int64_t r = pair / K, kh = pair % K;
      const int64_t slot = a.slots[r], len = a.lengths[r];
      const T* kbase = keys + (slot * K + kh) * S * D;
      const T* vbase = values + (slot * K + kh) * S * D;
      const bool* valid = a.valid + slot * S;
      const float* q = a.q + (r * H + kh * G) * D;
      float* out = a.out + (r * H + kh * G) * D;
      // Scores of the G query heads against every attended column; masked columns get -inf.
      vec::RowScores(q, G, kbase, len, D, a.scale, scores.data());
      for (int64_t j = 0; j + 1 < len; ++j) {  // the row's own (last) column is always seen
        if (valid[j]) continue;
        for (int64_t g = 0; g < G; ++g) scores[g * len + j] = -std::numeric_limits<float>::infinity();
      }
      for (int64_t g = 0; g < G; ++g) {
        float* s = scores.data() + g * len;
        const float m = vec::Max(s, len);  // finite: the row's own column is always seen
        const float inv = static_cast<float>(1.0 / vec::ExpShifted(s, len, m, s));
        for (int64_t j = 0; j < len; ++j) s[j] *= inv;
      }
      std::fill(out, out + G * D, 0.f);
      vec::WeightedRowSum(scores.data(), G, vbase, len, D, out);
    }
  });
}

}  // namespace

void DecodeAttention(const DecodeAttentionArgs& a) {
  if (a.bf16) {
    Run<uint16_t>(a);
  } else {
    Run<float>(a);
  }
}

}  // namespace rlhf::model
