#include "common/model/decode_attention.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <limits>
#include <vector>

#include "common/model/avx512.h"
#include "common/model/cpu_linear.h"
#include "common/vec_math.h"

namespace rlhf::model {

namespace {

// Scores [G, len] of the query heads against the attended columns, in place: masked columns get -inf (the row's
// own column, the last, is always seen), then each head's softmax.
void Softmax(int64_t G, int64_t len, const bool* valid, float* scores) {
  for (int64_t j = 0; j + 1 < len; ++j) {
    if (valid[j]) continue;
    for (int64_t g = 0; g < G; ++g) scores[g * len + j] = -std::numeric_limits<float>::infinity();
  }
  for (int64_t g = 0; g < G; ++g) {
    float* s = scores + g * len;
    const float m = vec::Max(s, len);  // finite: the row's own column is always seen
    const float inv = static_cast<float>(1.0 / vec::ExpShifted(s, len, m, s));
    for (int64_t j = 0; j < len; ++j) s[j] *= inv;
  }
}

#if defined(__x86_64__)
// ---------------------------------------------------------------------------------------------------
// AVX-512 version of one (row, kv head) pair, for head_dim a multiple of 16. Each cache row is loaded (and
// widened from bf16) once for up to three query heads at a time, where the AVX2 loops load it once per query
// head; bf16 caches were bound by those widenings (6.6 ms of a 40 ms batch-64 step).

using avx512::Load16;

// scores[g * len + j] = scale * q_g . row_j for GN query heads (q: GN x D) and rows j0 .. j0 + 7.
template <int GN, typename T>
RLHF_AVX512_TARGET void Scores8(const float* q, const T* rows, int64_t D, int64_t len, int64_t j0, float scale,
                         float* scores) {
  __m512 acc[GN][8];
#pragma GCC unroll 3
  for (int g = 0; g < GN; ++g) {
#pragma GCC unroll 8
    for (int t = 0; t < 8; ++t) acc[g][t] = _mm512_setzero_ps();
  }
  for (int64_t c = 0; c < D; c += 16) {
    __m512 qv[GN];
#pragma GCC unroll 3
    for (int g = 0; g < GN; ++g) qv[g] = _mm512_loadu_ps(q + g * D + c);
#pragma GCC unroll 8
    for (int t = 0; t < 8; ++t) {
      __m512 r = Load16(rows + (j0 + t) * D + c);
      asm("" : "+v"(r));  // loaded once for the GN heads (GCC would fold the load into each multiply-add)
#pragma GCC unroll 3
      for (int g = 0; g < GN; ++g) acc[g][t] = _mm512_fmadd_ps(qv[g], r, acc[g][t]);
    }
  }
#pragma GCC unroll 3
  for (int g = 0; g < GN; ++g) {
    float sums[8];
    avx512::LaneSums8(acc[g], sums);
    for (int t = 0; t < 8; ++t) scores[g * len + j0 + t] = scale * sums[t];
  }
}

// out_g (D values, C = D / 16 vectors) = sum_j p[g * len + j] row_j for GN query heads.
template <int GN, int C, typename T>
RLHF_AVX512_TARGET void WeightedSum(const float* p, const T* rows, int64_t len, float* out) {
  __m512 acc[GN][C];
#pragma GCC unroll 12
  for (int g = 0; g < GN; ++g) {
#pragma GCC unroll 16
    for (int c = 0; c < C; ++c) acc[g][c] = _mm512_setzero_ps();
  }
  for (int64_t j = 0; j < len; ++j) {
#pragma GCC unroll 16
    for (int c = 0; c < C; ++c) {
      __m512 r = Load16(rows + j * C * 16 + c * 16);
      asm("" : "+v"(r));
#pragma GCC unroll 12
      for (int g = 0; g < GN; ++g) acc[g][c] = _mm512_fmadd_ps(_mm512_set1_ps(p[g * len + j]), r, acc[g][c]);
    }
  }
#pragma GCC unroll 12
  for (int g = 0; g < GN; ++g) {
#pragma GCC unroll 16
    for (int c = 0; c < C; ++c) _mm512_storeu_ps(out + g * C * 16 + c * 16, acc[g][c]);
  }
}

// WeightedSum for n (1 .. N) heads at once.
template <int N, int C, typename T>
RLHF_AVX512_TARGET void WeightedSumN(int64_t n, const float* p, const T* rows, int64_t len, float* out) {
  if (n == N) {
    WeightedSum<N, C>(p, rows, len, out);
  } else if constexpr (N > 1) {
    WeightedSumN<N - 1, C>(n, p, rows, len, out);
  }
}

// The query heads in groups that keep the accumulators in registers: three for the scores (24 of them),
// 24 / C for the value sums.
template <int C, typename T>
RLHF_AVX512_TARGET void PairAvx512(const float* q, int64_t G, const T* keys, const T* values, int64_t len, float scale,
                            const bool* valid, float* scores, float* out) {
  constexpr int64_t D = C * 16;
  int64_t j = 0;
  for (; j + 8 <= len; j += 8) {
    int64_t g = 0;
    for (; g + 3 <= G; g += 3) Scores8<3>(q + g * D, keys, D, len, j, scale, scores + g * len);
    if (G - g == 2) Scores8<2>(q + g * D, keys, D, len, j, scale, scores + g * len);
    if (G - g == 1) Scores8<1>(q + g * D, keys, D, len, j, scale, scores + g * len);
  }
  for (; j < len; ++j) {
    for (int64_t g = 0; g < G; ++g) scores[g * len + j] = scale * vec::Dot(q + g * D, keys + j * D, D);
  }
  Softmax(G, len, valid, scores);
  constexpr int kGroup = 24 / C > 0 ? 24 / C : 1;
  for (int64_t g = 0; g < G; g += kGroup) {
    WeightedSumN<kGroup, C>(std::min<int64_t>(kGroup, G - g), scores + g * len, values, len, out + g * D);
  }
}

template <typename T>
bool TryPairAvx512(int64_t D, const float* q, int64_t G, const T* keys, const T* values, int64_t len, float scale,
                   const bool* valid, float* scores, float* out) {
  switch (D) {
    case 32: PairAvx512<2>(q, G, keys, values, len, scale, valid, scores, out); return true;
    case 64: PairAvx512<4>(q, G, keys, values, len, scale, valid, scores, out); return true;
    case 128: PairAvx512<8>(q, G, keys, values, len, scale, valid, scores, out); return true;
    case 256: PairAvx512<16>(q, G, keys, values, len, scale, valid, scores, out); return true;
    default: return false;
  }
}
#endif

template <typename T>
void Run(const DecodeAttentionArgs& a) {
  const int64_t K = a.kv_heads, G = a.groups, D = a.head_dim, S = a.capacity, H = K * G;
  const T* keys = static_cast<const T*>(a.keys);
  const T* values = static_cast<const T*>(a.values);
  int64_t max_len = 1;
  for (int64_t r = 0; r < a.rows; ++r) max_len = std::max(max_len, a.lengths[r]);
  const bool wide = Avx512Usable();
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
#if defined(__x86_64__)
      // The next pair's keys and values are fetched into L1 while this pair is computed: each pair reads its own
      // cache slot, where the hardware prefetcher starts cold (batch-64 bf16 step: 3.6 against 6.2 ms).
      if (pair + 1 < end) {
        const int64_t r2 = (pair + 1) / K, kh2 = (pair + 1) % K;
        const int64_t offset = (a.slots[r2] * K + kh2) * S * D;
        const int64_t bytes = a.lengths[r2] * D * static_cast<int64_t>(sizeof(T));
        const char* next_keys = reinterpret_cast<const char*>(keys + offset);
        const char* next_values = reinterpret_cast<const char*>(values + offset);
        for (int64_t o = 0; o < bytes; o += 64) {
          _mm_prefetch(next_keys + o, _MM_HINT_T0);
          _mm_prefetch(next_values + o, _MM_HINT_T0);
        }
      }
      if (wide && TryPairAvx512(D, q, G, kbase, vbase, len, a.scale, valid, scores.data(), out)) continue;
#endif
      vec::RowScores(q, G, kbase, len, D, a.scale, scores.data());
      Softmax(G, len, valid, scores.data());
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
