// Inference products y = x W^T on CPU with the weights as models store them ([out, in], row after row), where
// LibTorch's own kernels leave most of the machine unused.
//
// bf16 on AMX tiles. LibTorch 1.13 multiplies bf16 through oneDNN. On VMs whose CPUID hides the tile palette
// (leaf 0x1d), oneDNN's AMX kernels configure no tiles and fault, so runtime.cc caps oneDNN at AVX512-BF16:
// about 160 GFLOP/s on 2 cores, below f32, because vdpbf16ps issues at half the rate of an f32 FMA here. The
// tiles work once the process asks the OS for the tile state and loads palette 1 itself, which this kernel
// does: about 1 TFLOP/s on the decode's 64-row products (bench/decode_bench --profile).
#pragma once

#include <cstdint>

namespace rlhf::model {

// True when this process can run AmxLinearBf16: the CPU reports AMX-TILE, AMX-BF16 and AVX512-BF16, the OS
// enables the tile state and grants it to the process (arch_prctl), and a probe in a child process computes a
// known product. RLHF_AMX=0 in the environment turns it off. Decided once per process.
bool AmxUsable();

// y[m, n] = bias[n] + sum_k x[m, k] w[n, k] for m < M, n < N, with x [M, K], w [N, K] and y [M, N] row-major
// bf16 (raw bits), bias [N] bf16 or null. Accumulates in f32 and rounds y to the nearest bf16. K must be a
// multiple of 32. Needs AmxUsable(); runs on LibTorch's intra-op threads.
void AmxLinearBf16(const uint16_t* x, int64_t M, int64_t K, const uint16_t* w, int64_t N, const uint16_t* bias,
                   uint16_t* y);

// True when the AVX-512 kernels (Avx512LinearF32, decode attention) can run here: the CPU reports AVX-512 F, BW
// and VL and the OS enables their state. RLHF_AVX512=0 in the environment turns them off.
bool Avx512Usable();

// y[m, n] = bias[n] + sum_k x[m, k] w[n, k] in f32 (x [M, K], w [N, K], y [M, N] row-major; bias [N] or null),
// for few rows of x (the decode's batch): the weights are read in place, where BLAS packs them first. K must
// be a multiple of 16. Needs Avx512Usable(); runs on LibTorch's intra-op threads.
void Avx512LinearF32(const float* x, int64_t M, int64_t K, const float* w, int64_t N, const float* bias, float* y);

}  // namespace rlhf::model
