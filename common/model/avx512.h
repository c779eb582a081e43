// AVX-512 pieces shared by the CPU inference kernels (cpu_linear.cc, decode_attention.cc). Inline functions
// compiled for AVX-512 through target attributes: callers check Avx512Usable() (cpu_linear.h) before use, and
// the build needs no -march flag. x86-64 only.
#pragma once

#if defined(__x86_64__)
#include <immintrin.h>

#include <cstdint>

#define RLHF_AVX512_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,fma")))

namespace rlhf::model::avx512 {

// 16 values widened to f32: f32 as they are, bf16 (upper halves of f32) shifted into place.
RLHF_AVX512_TARGET inline __m512 Load16(const float* p) { return _mm512_loadu_ps(p); }
RLHF_AVX512_TARGET inline __m512 Load16(const uint16_t* p) {
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

// Pairwise folds: lanes of x and y combined so that each half (quarter) of the result sums two of x's or y's.
RLHF_AVX512_TARGET inline __m512 FoldHalves(__m512 x, __m512 y) {
  return _mm512_add_ps(_mm512_shuffle_f32x4(x, y, 0x44), _mm512_shuffle_f32x4(x, y, 0xEE));
}
RLHF_AVX512_TARGET inline __m512 FoldQuarters(__m512 x, __m512 y) {
  return _mm512_add_ps(_mm512_shuffle_f32x4(x, y, 0x88), _mm512_shuffle_f32x4(x, y, 0xDD));
}

// The lane sums of a[0..7], to sums[0..7]: folds of vector pairs, one store.
RLHF_AVX512_TARGET inline void LaneSums8(const __m512* a, float* sums) {
  const __m512 u0 = FoldQuarters(FoldHalves(a[0], a[1]), FoldHalves(a[2], a[3]));  // quarter q: row q, 4 lanes
  const __m512 u1 = FoldQuarters(FoldHalves(a[4], a[5]), FoldHalves(a[6], a[7]));  // quarter q: row 4 + q
  __m512 v = _mm512_add_ps(_mm512_unpacklo_ps(u0, u1), _mm512_unpackhi_ps(u0, u1));
  v = _mm512_add_ps(v, _mm512_shuffle_ps(v, v, 0x4E));  // lanes 4q, 4q + 1: rows q and 4 + q
  alignas(64) float t[16];
  _mm512_store_ps(t, v);
  for (int q = 0; q < 4; ++q) {
    sums[q] = t[4 * q];
    sums[q + 4] = t[4 * q + 1];
  }
}

}  // namespace rlhf::model::avx512

#endif
