#include "common/vec_math.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace rlhf::vec {

float Bf16ToFloat(uint16_t h) {
  const uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

uint16_t FloatToBf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof bits);
  if (std::isnan(f)) return static_cast<uint16_t>((bits >> 16) | 0x40);
  bits += 0x7fff + ((bits >> 16) & 1);
  return static_cast<uint16_t>(bits >> 16);
}

namespace {

inline float At(const float* p, int64_t i) { return p[i]; }
inline float At(const uint16_t* p, int64_t i) { return Bf16ToFloat(p[i]); }

template <typename T>
float DotPlain(const float* a, const T* b, int64_t n) {
  float s[4] = {0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    for (int j = 0; j < 4; ++j) s[j] += a[i + j] * At(b, i + j);
  }
  for (; i < n; ++i) s[0] += a[i] * At(b, i);
  return (s[0] + s[1]) + (s[2] + s[3]);
}

template <typename T>
void AxpyPlain(float a, const T* v, float* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] += a * At(v, i);
}

template <typename T>
void RowScoresPlain(const float* q, int64_t nq, const T* rows, int64_t m, int64_t n, float scale, float* scores) {
  for (int64_t j = 0; j < m; ++j) {
    for (int64_t g = 0; g < nq; ++g) scores[g * m + j] = scale * DotPlain(q + g * n, rows + j * n, n);
  }
}

template <typename T>
void WeightedRowSumPlain(const float* w, int64_t nq, const T* rows, int64_t m, int64_t n, float* out) {
  for (int64_t j = 0; j < m; ++j) {
    for (int64_t g = 0; g < nq; ++g) {
      if (w[g * m + j] != 0.f) AxpyPlain(w[g * m + j], rows + j * n, out + g * n, n);
    }
  }
}

float MaxPlain(const float* x, int64_t n) {
  float m = -std::numeric_limits<float>::infinity();
  for (int64_t i = 0; i < n; ++i) m = std::max(m, x[i]);
  return m;
}

double ExpShiftedPlain(const float* x, int64_t n, float shift, float* out) {
  double sum = 0;
  for (int64_t i = 0; i < n; ++i) {
    const float e = std::exp(x[i] - shift);
    if (out != nullptr) out[i] = e;
    sum += e;
  }
  return sum;
}

double SumPlain(const float* x, int64_t n) {
  double s = 0;
  for (int64_t i = 0; i < n; ++i) s += x[i];
  return s;
}

double ZeroBelowPlain(float* x, int64_t n, float floor) {
  double s = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (x[i] < floor) x[i] = 0.f;
    s += x[i];
  }
  return s;
}

inline float SiluMulOne(float g, float u) { return g / (1.f + std::exp(-g)) * u; }

// The value of v in T (bf16 rounds, f32 keeps it), and a float stored as T.
inline float Round(float v, const float*) { return v; }
inline float Round(float v, const uint16_t*) { return Bf16ToFloat(FloatToBf16(v)); }
inline void Put(float* out, int64_t i, float v) { out[i] = v; }
inline void Put(uint16_t* out, int64_t i, float v) { out[i] = FloatToBf16(v); }

// Elements [from, n).
template <typename T>
void SiluMulPlain(const T* g, const T* u, T* out, int64_t n, int64_t from = 0) {
  for (int64_t i = from; i < n; ++i) Put(out, i, SiluMulOne(At(g, i), At(u, i)));
}

template <typename T>
float RmsScale(const T* x, int64_t n, float eps) {
  float s = 0;
  for (int64_t i = 0; i < n; ++i) s += At(x, i) * At(x, i);
  return 1.f / std::sqrt(s / static_cast<float>(n) + eps);
}

// out = w * (x * r) with x * r in T, elements [from, n).
template <typename T>
void RmsApplyPlain(const T* x, const T* w, int64_t n, float r, T* out, int64_t from = 0) {
  for (int64_t i = from; i < n; ++i) Put(out, i, At(w, i) * Round(At(x, i) * r, x));
}

template <typename T>
void RmsNormRowPlain(const T* x, const T* w, int64_t n, float eps, T* out) {
  RmsApplyPlain(x, w, n, RmsScale(x, n, eps), out);
}

// Elements [from, half) of each half.
template <typename T>
void RopeRowPlain(const T* x, const T* c, const T* s, int64_t d, T* out, int64_t from = 0) {
  const int64_t h = d / 2;
  for (int64_t i = from; i < h; ++i) {
    const float a = Round(At(x, i) * At(c, i), x), b = Round(-At(x, i + h) * At(s, i), x);
    const float a2 = Round(At(x, i + h) * At(c, i + h), x), b2 = Round(At(x, i) * At(s, i + h), x);
    Put(out, i, a + b);
    Put(out, i + h, a2 + b2);
  }
}

#if defined(__x86_64__)
#define RLHF_AVX2 __attribute__((target("avx2,fma")))

RLHF_AVX2 inline __m256 Load8(const float* p) { return _mm256_loadu_ps(p); }
RLHF_AVX2 inline __m256 Load8(const uint16_t* p) {
  auto h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

RLHF_AVX2 inline float Sum8(__m256 v) {
  __m128 h = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  h = _mm_add_ps(h, _mm_movehl_ps(h, h));
  h = _mm_add_ss(h, _mm_movehdup_ps(h));
  return _mm_cvtss_f32(h);
}

template <typename T>
RLHF_AVX2 float DotAvx2(const float* a, const T* b, int64_t n) {
  __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), Load8(b + i), s0);
    s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), Load8(b + i + 8), s1);
  }
  for (; i + 8 <= n; i += 8) s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), Load8(b + i), s0);
  float s = Sum8(_mm256_add_ps(s0, s1));
  for (; i < n; ++i) s += a[i] * At(b, i);
  return s;
}

template <typename T>
RLHF_AVX2 void AxpyAvx2(float a, const T* v, float* out, int64_t n) {
  const __m256 av = _mm256_set1_ps(a);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(out + i, _mm256_fmadd_ps(av, Load8(v + i), _mm256_loadu_ps(out + i)));
  for (; i < n; ++i) out[i] += a * At(v, i);
}

// The eight sums of a0 .. a7's lanes, as one vector.
RLHF_AVX2 inline __m256 Sum8x8(__m256 a0, __m256 a1, __m256 a2, __m256 a3, __m256 a4, __m256 a5, __m256 a6,
                               __m256 a7) {
  const __m256 s0123 = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
  const __m256 s4567 = _mm256_hadd_ps(_mm256_hadd_ps(a4, a5), _mm256_hadd_ps(a6, a7));
  return _mm256_add_ps(_mm256_permute2f128_ps(s0123, s4567, 0x20), _mm256_permute2f128_ps(s0123, s4567, 0x31));
}

// Eight rows at a time: their dot products with q accumulate in eight vectors, summed across lanes together.
template <typename T>
RLHF_AVX2 void RowScoresAvx2(const float* q, int64_t nq, const T* rows, int64_t m, int64_t n, float scale,
                             float* scores) {
  const __m256 sv = _mm256_set1_ps(scale);
  for (int64_t g = 0; g < nq; ++g) {
    const float* qg = q + g * n;
    int64_t j = 0;
    if (n % 8 == 0) {
      for (; j + 8 <= m; j += 8) {
        __m256 a[8];
        for (auto& v : a) v = _mm256_setzero_ps();
        for (int64_t i = 0; i < n; i += 8) {
          const __m256 qv = _mm256_loadu_ps(qg + i);
          for (int t = 0; t < 8; ++t) a[t] = _mm256_fmadd_ps(qv, Load8(rows + (j + t) * n + i), a[t]);
        }
        _mm256_storeu_ps(scores + g * m + j,
                         _mm256_mul_ps(sv, Sum8x8(a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7])));
      }
    }
    for (; j < m; ++j) scores[g * m + j] = scale * DotAvx2(qg, rows + j * n, n);
  }
}

// 32 columns of out at a time stay in registers while every row adds into them.
template <typename T>
RLHF_AVX2 void WeightedRowSumAvx2(const float* w, int64_t nq, const T* rows, int64_t m, int64_t n, float* out) {
  for (int64_t g = 0; g < nq; ++g) {
    const float* wg = w + g * m;
    float* og = out + g * n;
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
      __m256 a0 = _mm256_loadu_ps(og + i), a1 = _mm256_loadu_ps(og + i + 8), a2 = _mm256_loadu_ps(og + i + 16),
             a3 = _mm256_loadu_ps(og + i + 24);
      for (int64_t j = 0; j < m; ++j) {
        if (wg[j] == 0.f) continue;
        const __m256 wv = _mm256_set1_ps(wg[j]);
        const T* r = rows + j * n + i;
        a0 = _mm256_fmadd_ps(wv, Load8(r), a0);
        a1 = _mm256_fmadd_ps(wv, Load8(r + 8), a1);
        a2 = _mm256_fmadd_ps(wv, Load8(r + 16), a2);
        a3 = _mm256_fmadd_ps(wv, Load8(r + 24), a3);
      }
      _mm256_storeu_ps(og + i, a0);
      _mm256_storeu_ps(og + i + 8, a1);
      _mm256_storeu_ps(og + i + 16, a2);
      _mm256_storeu_ps(og + i + 24, a3);
    }
    if (i < n) {
      for (int64_t j = 0; j < m; ++j) {
        if (wg[j] != 0.f) AxpyAvx2(wg[j], rows + j * n + i, og + i, n - i);
      }
    }
  }
}

RLHF_AVX2 float MaxAvx2(const float* x, int64_t n) {
  __m256 m0 = _mm256_set1_ps(-std::numeric_limits<float>::infinity()), m1 = m0;
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    m0 = _mm256_max_ps(m0, _mm256_loadu_ps(x + i));
    m1 = _mm256_max_ps(m1, _mm256_loadu_ps(x + i + 8));
  }
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, _mm256_max_ps(m0, m1));
  float m = MaxPlain(lanes, 8);
  for (; i < n; ++i) m = std::max(m, x[i]);
  return m;
}

// exp(x) for x <= 88: Cody-Waite reduction x = k ln2 + r, a degree-6 polynomial for e^r, then 2^k through the
// exponent bits. Inputs below -87.3 (where expf is subnormal or 0) give 0.
RLHF_AVX2 inline __m256 Exp8(__m256 x) {
  const __m256 lo = _mm256_set1_ps(-87.3f);
  const __m256 zero_mask = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
  x = _mm256_min_ps(_mm256_max_ps(x, lo), _mm256_set1_ps(88.3f));
  const __m256 k = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(k, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(k, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 y = _mm256_set1_ps(1.9875691500e-4f);
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.3981999507e-3f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(8.3334519073e-3f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(4.1665795894e-2f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.6666665459e-1f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(5.0000001201e-1f));
  y = _mm256_fmadd_ps(y, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.f)));
  const __m256i pow2 = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(k), _mm256_set1_epi32(127)), 23);
  y = _mm256_mul_ps(y, _mm256_castsi256_ps(pow2));
  return _mm256_andnot_ps(zero_mask, y);
}

// A long sum of 8-float vectors: float lanes, folded into double every 2048 values so that they stay far from
// their rounding limit.
struct LaneSum {
  __m256 acc;
  double sum = 0;
  int block = 0;
  RLHF_AVX2 LaneSum() : acc(_mm256_setzero_ps()) {}
  RLHF_AVX2 void Add(__m256 v) {
    acc = _mm256_add_ps(acc, v);
    if (++block == 256) {
      sum += Sum8(acc);
      acc = _mm256_setzero_ps();
      block = 0;
    }
  }
  RLHF_AVX2 double Total() const { return sum + Sum8(acc); }
};

RLHF_AVX2 double ExpShiftedAvx2(const float* x, int64_t n, float shift, float* out) {
  const __m256 s = _mm256_set1_ps(shift);
  LaneSum sum;
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 e = Exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i), s));
    if (out != nullptr) _mm256_storeu_ps(out + i, e);
    sum.Add(e);
  }
  return sum.Total() + ExpShiftedPlain(x + i, n - i, shift, out == nullptr ? nullptr : out + i);
}

RLHF_AVX2 double SumAvx2(const float* x, int64_t n) {
  LaneSum sum;
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) sum.Add(_mm256_loadu_ps(x + i));
  return sum.Total() + SumPlain(x + i, n - i);
}

RLHF_AVX2 double ZeroBelowAvx2(float* x, int64_t n, float floor) {
  const __m256 f = _mm256_set1_ps(floor);
  LaneSum sum;
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_loadu_ps(x + i);
    const __m256 kept = _mm256_andnot_ps(_mm256_cmp_ps(v, f, _CMP_LT_OQ), v);
    _mm256_storeu_ps(x + i, kept);
    sum.Add(kept);
  }
  return sum.Total() + ZeroBelowPlain(x + i, n - i, floor);
}

// g / (1 + exp(-g)) * u; exp(-g) overflows to +inf for g below -88.3, which gives -0 like silu's limit.
RLHF_AVX2 inline __m256 SiluMul8(__m256 g, __m256 u) {
  const __m256 e = Exp8(_mm256_sub_ps(_mm256_setzero_ps(), g));
  const __m256 big = _mm256_cmp_ps(g, _mm256_set1_ps(-88.f), _CMP_LT_OQ);  // Exp8 clamps at 88.3: treat as inf
  const __m256 s = _mm256_div_ps(g, _mm256_add_ps(_mm256_set1_ps(1.f), e));
  return _mm256_mul_ps(_mm256_andnot_ps(big, s), u);
}

// Nearest bf16 of 8 floats (ties to even; the activations here are finite), as 8 uint16 in a 128-bit vector.
RLHF_AVX2 inline __m128i ToBf16x8(__m256 v) {
  __m256i b = _mm256_castps_si256(v);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(b, 16), _mm256_set1_epi32(1));
  b = _mm256_srli_epi32(_mm256_add_epi32(b, _mm256_add_epi32(_mm256_set1_epi32(0x7fff), lsb)), 16);
  return _mm_packus_epi32(_mm256_castsi256_si128(b), _mm256_extracti128_si256(b, 1));
}

// The bf16 values of 8 floats widened back to floats.
RLHF_AVX2 inline __m256 RoundToBf16(__m256 v) {
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(ToBf16x8(v)), 16));
}

// Round and Put of 8 lanes.
inline __m256 RoundLanes(__m256 v, const float*) { return v; }
RLHF_AVX2 inline __m256 RoundLanes(__m256 v, const uint16_t*) { return RoundToBf16(v); }
RLHF_AVX2 inline void Store8(float* p, __m256 v) { _mm256_storeu_ps(p, v); }
RLHF_AVX2 inline void Store8(uint16_t* p, __m256 v) {
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), ToBf16x8(v));
}

template <typename T>
RLHF_AVX2 void SiluMulAvx2(const T* g, const T* u, T* out, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) Store8(out + i, SiluMul8(Load8(g + i), Load8(u + i)));
  SiluMulPlain(g, u, out, n, i);
}

template <typename T>
RLHF_AVX2 float RmsScaleAvx2(const T* x, int64_t n, float eps, int64_t* done) {
  __m256 acc = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 v = Load8(x + i);
    acc = _mm256_fmadd_ps(v, v, acc);
  }
  float s = Sum8(acc);
  for (int64_t j = i; j < n; ++j) s += At(x, j) * At(x, j);
  *done = i;
  return 1.f / std::sqrt(s / static_cast<float>(n) + eps);
}

template <typename T>
RLHF_AVX2 void RmsNormRowAvx2(const T* x, const T* w, int64_t n, float eps, T* out) {
  int64_t i = 0;
  const float r = RmsScaleAvx2(x, n, eps, &i);
  const __m256 rv = _mm256_set1_ps(r);
  for (int64_t j = 0; j + 8 <= i; j += 8) {
    Store8(out + j, _mm256_mul_ps(Load8(w + j), RoundLanes(_mm256_mul_ps(Load8(x + j), rv), x)));
  }
  RmsApplyPlain(x, w, n, r, out, i);
}

template <typename T>
RLHF_AVX2 void RopeRowAvx2(const T* x, const T* c, const T* s, int64_t d, T* out) {
  const int64_t h = d / 2;
  const __m256 neg = _mm256_set1_ps(-0.f);
  int64_t i = 0;
  for (; i + 8 <= h; i += 8) {
    const __m256 x1 = Load8(x + i), x2 = Load8(x + i + h);
    const __m256 lo = _mm256_add_ps(RoundLanes(_mm256_mul_ps(x1, Load8(c + i)), x),
                                    RoundLanes(_mm256_mul_ps(_mm256_xor_ps(x2, neg), Load8(s + i)), x));
    const __m256 hi = _mm256_add_ps(RoundLanes(_mm256_mul_ps(x2, Load8(c + i + h)), x),
                                    RoundLanes(_mm256_mul_ps(x1, Load8(s + i + h)), x));
    Store8(out + i, lo);
    Store8(out + i + h, hi);
  }
  RopeRowPlain(x, c, s, d, out, i);
}

bool HaveAvx2() {
  static const bool yes = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return yes;
}
#define RLHF_DISPATCH(fast, plain) return HaveAvx2() ? fast : plain
#else
#define RLHF_DISPATCH(fast, plain) return plain
#endif

}  // namespace

float Dot(const float* a, const float* b, int64_t n) { RLHF_DISPATCH(DotAvx2(a, b, n), DotPlain(a, b, n)); }
float Dot(const float* a, const uint16_t* b, int64_t n) { RLHF_DISPATCH(DotAvx2(a, b, n), DotPlain(a, b, n)); }
void Axpy(float a, const float* v, float* out, int64_t n) {
  RLHF_DISPATCH(AxpyAvx2(a, v, out, n), AxpyPlain(a, v, out, n));
}
void Axpy(float a, const uint16_t* v, float* out, int64_t n) {
  RLHF_DISPATCH(AxpyAvx2(a, v, out, n), AxpyPlain(a, v, out, n));
}
void RowScores(const float* q, int64_t nq, const float* rows, int64_t m, int64_t n, float scale, float* scores) {
  RLHF_DISPATCH(RowScoresAvx2(q, nq, rows, m, n, scale, scores), RowScoresPlain(q, nq, rows, m, n, scale, scores));
}
void RowScores(const float* q, int64_t nq, const uint16_t* rows, int64_t m, int64_t n, float scale, float* scores) {
  RLHF_DISPATCH(RowScoresAvx2(q, nq, rows, m, n, scale, scores), RowScoresPlain(q, nq, rows, m, n, scale, scores));
}
void WeightedRowSum(const float* w, int64_t nq, const float* rows, int64_t m, int64_t n, float* out) {
  RLHF_DISPATCH(WeightedRowSumAvx2(w, nq, rows, m, n, out), WeightedRowSumPlain(w, nq, rows, m, n, out));
}
void WeightedRowSum(const float* w, int64_t nq, const uint16_t* rows, int64_t m, int64_t n, float* out) {
  RLHF_DISPATCH(WeightedRowSumAvx2(w, nq, rows, m, n, out), WeightedRowSumPlain(w, nq, rows, m, n, out));
}
float Max(const float* x, int64_t n) { RLHF_DISPATCH(MaxAvx2(x, n), MaxPlain(x, n)); }
double ExpShifted(const float* x, int64_t n, float shift, float* out) {
  RLHF_DISPATCH(ExpShiftedAvx2(x, n, shift, out), ExpShiftedPlain(x, n, shift, out));
}

double Sum(const float* x, int64_t n) { RLHF_DISPATCH(SumAvx2(x, n), SumPlain(x, n)); }
double ZeroBelow(float* x, int64_t n, float floor) {
  RLHF_DISPATCH(ZeroBelowAvx2(x, n, floor), ZeroBelowPlain(x, n, floor));
}

void SiluMul(const float* g, const float* u, float* out, int64_t n) {
  RLHF_DISPATCH(SiluMulAvx2(g, u, out, n), SiluMulPlain(g, u, out, n));
}
void SiluMul(const uint16_t* g, const uint16_t* u, uint16_t* out, int64_t n) {
  RLHF_DISPATCH(SiluMulAvx2(g, u, out, n), SiluMulPlain(g, u, out, n));
}

void RmsNormRow(const float* x, const float* w, int64_t n, float eps, float* out) {
  RLHF_DISPATCH(RmsNormRowAvx2(x, w, n, eps, out), RmsNormRowPlain(x, w, n, eps, out));
}
void RmsNormRow(const uint16_t* x, const uint16_t* w, int64_t n, float eps, uint16_t* out) {
  RLHF_DISPATCH(RmsNormRowAvx2(x, w, n, eps, out), RmsNormRowPlain(x, w, n, eps, out));
}

void RopeRow(const float* x, const float* c, const float* s, int64_t d, float* out) {
  RLHF_DISPATCH(RopeRowAvx2(x, c, s, d, out), RopeRowPlain(x, c, s, d, out));
}
void RopeRow(const uint16_t* x, const uint16_t* c, const uint16_t* s, int64_t d, uint16_t* out) {
  RLHF_DISPATCH(RopeRowAvx2(x, c, s, d, out), RopeRowPlain(x, c, s, d, out));
}

}  // namespace rlhf::vec
