// Small vector loops of the inference kernels (decode attention, sampling), with AVX2/FMA versions chosen at
// run time on CPUs that have them and portable loops elsewhere; the build needs no -march flag.
#pragma once

#include <cstdint>

namespace rlhf::vec {

// bf16 values are stored as their upper 16 bits of an IEEE float.
float Bf16ToFloat(uint16_t h);

float Dot(const float* a, const float* b, int64_t n);
float Dot(const float* a, const uint16_t* b_bf16, int64_t n);
// out[i] += a * v[i]
void Axpy(float a, const float* v, float* out, int64_t n);
void Axpy(float a, const uint16_t* v_bf16, float* out, int64_t n);

// max_i x[i]; -inf for n == 0.
float Max(const float* x, int64_t n);
// out[i] = exp(x[i] - shift) (out may be null), and returns the sum in double. exp of -inf is 0; the AVX2
// version is within 2 ulp of expf.
double ExpShifted(const float* x, int64_t n, float shift, float* out);

}  // namespace rlhf::vec
