// Small vector loops of the inference kernels (decode attention, sampling), with AVX2/FMA versions chosen at
// run time on CPUs that have them and portable loops elsewhere; the build needs no -march flag.
#pragma once

#include <cstdint>

namespace rlhf::vec {

// bf16 values are stored as their upper 16 bits of an IEEE float.
float Bf16ToFloat(uint16_t h);
// Nearest bf16 (ties to even); NaN stays NaN.
uint16_t FloatToBf16(float f);

float Dot(const float* a, const float* b, int64_t n);
float Dot(const float* a, const uint16_t* b_bf16, int64_t n);
// out[i] += a * v[i]
void Axpy(float a, const float* v, float* out, int64_t n);
void Axpy(float a, const uint16_t* v_bf16, float* out, int64_t n);

// Small products against the rows of a matrix stored row after row (m rows of n values, f32 or bf16), for
// attention over a cache: scores[g * m + j] = scale * dot(q_g, row_j) for g < nq queries (q: nq x n), and
// out_g += sum_j w[g * m + j] * row_j (out: nq x n). One call per block keeps the loops inside the vector code.
void RowScores(const float* q, int64_t nq, const float* rows, int64_t m, int64_t n, float scale, float* scores);
void RowScores(const float* q, int64_t nq, const uint16_t* rows_bf16, int64_t m, int64_t n, float scale,
               float* scores);
void WeightedRowSum(const float* w, int64_t nq, const float* rows, int64_t m, int64_t n, float* out);
void WeightedRowSum(const float* w, int64_t nq, const uint16_t* rows_bf16, int64_t m, int64_t n, float* out);

// max_i x[i]; -inf for n == 0.
float Max(const float* x, int64_t n);
// out[i] = exp(x[i] - shift) (out may be null), and returns the sum in double. exp of -inf is 0; the AVX2
// version is within 2 ulp of expf.
double ExpShifted(const float* x, int64_t n, float shift, float* out);

// Sum of x[0..n) in double; the AVX2 version adds in float lanes, folded into double every 2048 values.
double Sum(const float* x, int64_t n);
// x[i] = 0 where x[i] < floor (in place); returns the sum of what is left, as Sum does.
double ZeroBelow(float* x, int64_t n, float floor);

// out[i] = silu(g[i]) * u[i] = g[i] / (1 + exp(-g[i])) * u[i], the gated MLP's activation, in f32; the bf16
// version reads and writes bf16 and rounds once, at the end. out may alias g or u.
void SiluMul(const float* g, const float* u, float* out, int64_t n);
void SiluMul(const uint16_t* g, const uint16_t* u, uint16_t* out, int64_t n);

// One row of RMSNorm as the model computes it: out = w * (x * r) with r = 1 / sqrt(mean(x^2) + eps), in f32.
// The bf16 version widens x, rounds x * r to bf16 and then w * that to bf16, as the model's dtype conversions
// and bf16 product do.
void RmsNormRow(const float* x, const float* w, int64_t n, float eps, float* out);
void RmsNormRow(const uint16_t* x, const uint16_t* w, int64_t n, float eps, uint16_t* out);

// One row of rotate-half rotary embedding (d even): out = x * cos + rotate_half(x) * sin, rotate_half(x) being
// (-x[d/2:], x[:d/2]). The bf16 version rounds both products and their sum to bf16, as bf16 tensors do.
void RopeRow(const float* x, const float* cos, const float* sin, int64_t d, float* out);
void RopeRow(const uint16_t* x, const uint16_t* cos, const uint16_t* sin, int64_t d, uint16_t* out);

}  // namespace rlhf::vec
