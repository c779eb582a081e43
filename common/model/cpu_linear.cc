#include "common/model/cpu_linear.h"

#include "common/model/avx512.h"

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <vector>

#if defined(__x86_64__) && defined(__linux__)
#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>
#define RLHF_HAVE_AMX_CODE 1
#endif

namespace rlhf::model {

#if defined(RLHF_HAVE_AMX_CODE)
namespace {

#define RLHF_AMX_TARGET __attribute__((target("amx-tile,amx-bf16,avx512f,avx512bw,avx512vl,avx512bf16")))

constexpr int kArchReqXcompPerm = 0x1023;  // arch_prctl: ask for an extended state component
constexpr int kXfeatureTileData = 18;

struct alignas(64) TileConfig {
  uint8_t palette = 0, start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// All eight tiles as 16 rows of 64 bytes, palette 1's largest shape.
RLHF_AMX_TARGET void ConfigureTiles() {
  TileConfig cfg;
  cfg.palette = 1;
  for (int t = 0; t < 8; ++t) {
    cfg.rows[t] = 16;
    cfg.colsb[t] = 64;
  }
  // GCC 12's _tile_loadconfig tells the compiler that it reads 8 bytes only; without this barrier the stores
  // above may be dropped and the tiles stay unconfigured (the next tile instruction then raises SIGILL).
  asm volatile("" : : "r"(&cfg) : "memory");
  _tile_loadconfig(&cfg);
}

RLHF_AMX_TARGET void ReleaseTiles() { _tile_release(); }

// In place: r[i] lane j becomes r[j] lane i (a 16 x 16 transpose of 32-bit values).
RLHF_AMX_TARGET inline void Transpose16(__m512i* r) {
  __m512i t[16], u[16], v[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 4; ++i) {
    u[4 * i] = _mm512_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
    u[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
    u[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
    u[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
  }
  for (int h = 0; h < 2; ++h) {
    for (int k = 0; k < 4; ++k) {
      v[8 * h + k] = _mm512_shuffle_i32x4(u[8 * h + k], u[8 * h + 4 + k], 0x88);
      v[8 * h + 4 + k] = _mm512_shuffle_i32x4(u[8 * h + k], u[8 * h + 4 + k], 0xdd);
    }
  }
  for (int k = 0; k < 8; ++k) {
    r[k] = _mm512_shuffle_i32x4(v[k], v[8 + k], 0x88);
    r[8 + k] = _mm512_shuffle_i32x4(v[k], v[8 + k], 0xdd);
  }
}

// x in the layout of AMX's second operand. For k block kb (32 values) and row block j (16 rows) a 16 x 16
// block of 32-bit pairs: line r, column i holds (x[16j + i][32kb + 2r], x[16j + i][32kb + 2r + 1]), that is
// the transpose of the rows' 64-byte slices. Rows at or past M are zeros.
RLHF_AMX_TARGET void PackRows(const uint16_t* x, int64_t M, int64_t K, int64_t row_blocks, uint32_t* packed) {
  const int64_t k_blocks = K / 32;
  for (int64_t j = 0; j < row_blocks; ++j) {
    for (int64_t kb = 0; kb < k_blocks; ++kb) {
      __m512i r[16];
      for (int i = 0; i < 16; ++i) {
        const int64_t m = j * 16 + i;
        r[i] = m < M ? _mm512_loadu_si512(x + m * K + kb * 32) : _mm512_setzero_si512();
      }
      Transpose16(r);
      uint32_t* block = packed + (kb * row_blocks + j) * 256;
      for (int i = 0; i < 16; ++i) _mm512_storeu_si512(block + i * 16, r[i]);
    }
  }
}

// c[t] (t < MB, 16 x 16 f32: weight row n, x row i) = the 16 weight rows at w times the MB row blocks from
// j0 on. Tiles 0-3 accumulate, tile 4 holds the weights, tiles 5-7 the rows. When next is set, the next block's
// 16 weight rows (contiguous, 32 K bytes) are prefetched into L2, 1 KB per k block: the tile loads read 16
// rows at a stride, which the hardware prefetcher follows poorly. Measured on 24 layers' worth of decode
// products from memory: 370 against 285 GFLOP/s, and 508 against 485 in a quieter run; into L2 rather than L1
// (whose fill buffers then stall the loop), 517 and 539 against 453 and 522.
template <int MB>
RLHF_AMX_TARGET void TileBlock(const uint16_t* w, int64_t K, const uint32_t* packed, int64_t row_blocks, int64_t j0,
                               float* c, const char* next = nullptr) {
  _tile_zero(0);
  if constexpr (MB > 1) _tile_zero(1);
  if constexpr (MB > 2) _tile_zero(2);
  if constexpr (MB > 3) _tile_zero(3);
  const int64_t w_stride = K * 2;
  for (int64_t kb = 0; kb < K / 32; ++kb) {
    if (next != nullptr) {
      for (int64_t off = kb * 1024; off < (kb + 1) * 1024; off += 64) _mm_prefetch(next + off, _MM_HINT_T1);
    }
    _tile_loadd(4, w + kb * 32, w_stride);
    const uint32_t* b = packed + (kb * row_blocks + j0) * 256;
    _tile_loadd(5, b, 64);
    _tile_dpbf16ps(0, 4, 5);
    if constexpr (MB > 1) {
      _tile_loadd(6, b + 256, 64);
      _tile_dpbf16ps(1, 4, 6);
    }
    if constexpr (MB > 2) {
      _tile_loadd(7, b + 512, 64);
      _tile_dpbf16ps(2, 4, 7);
    }
    if constexpr (MB > 3) {
      _tile_loadd(5, b + 768, 64);
      _tile_dpbf16ps(3, 4, 5);
    }
  }
  _tile_stored(0, c, 64);
  if constexpr (MB > 1) _tile_stored(1, c + 256, 64);
  if constexpr (MB > 2) _tile_stored(2, c + 512, 64);
  if constexpr (MB > 3) _tile_stored(3, c + 768, 64);
}

void RunBlock(int mb, const uint16_t* w, int64_t K, const uint32_t* packed, int64_t row_blocks, int64_t j0,
              float* c, const char* next) {
  switch (mb) {
    case 1: TileBlock<1>(w, K, packed, row_blocks, j0, c, next); break;
    case 2: TileBlock<2>(w, K, packed, row_blocks, j0, c, next); break;
    case 3: TileBlock<3>(w, K, packed, row_blocks, j0, c, next); break;
    default: TileBlock<4>(w, K, packed, row_blocks, j0, c, next); break;
  }
}

// Writes the MB blocks of c (weight row n, x row i) to y's rows 16 j0 .. as bf16, with the bias added in f32:
// a gather takes one x row's 16 outputs across the block's weight rows.
RLHF_AMX_TARGET void StoreBlock(const float* c, int mb, int64_t j0, int64_t M, int64_t N, int64_t n0, int64_t valid,
                                const uint16_t* bias, uint16_t* y) {
  const __m512i idx = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                         _mm512_set1_epi32(16));
  const __mmask16 keep = valid >= 16 ? __mmask16(0xffff) : __mmask16((1u << valid) - 1);
  __m512 b = _mm512_setzero_ps();
  if (bias != nullptr) {
    const __m256i raw = _mm256_maskz_loadu_epi16(keep, bias + n0);
    b = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
  }
  for (int t = 0; t < mb; ++t) {
    for (int i = 0; i < 16; ++i) {
      const int64_t m = (j0 + t) * 16 + i;
      if (m >= M) return;
      const __m512 v = _mm512_add_ps(_mm512_i32gather_ps(idx, c + t * 256 + i, 4), b);
      _mm256_mask_storeu_epi16(y + m * N + n0, keep, (__m256i)_mm512_cvtneps_pbh(v));
    }
  }
}

void Linear(const uint16_t* x, int64_t M, int64_t K, const uint16_t* w, int64_t N, const uint16_t* bias,
            uint16_t* y) {
  const int64_t row_blocks = (M + 15) / 16, col_blocks = (N + 15) / 16;
  std::vector<uint32_t> packed(static_cast<size_t>(K / 32 * row_blocks * 256));
  PackRows(x, M, K, row_blocks, packed.data());
  at::parallel_for(0, col_blocks, 1, [&](int64_t begin, int64_t end) {
    ConfigureTiles();
    alignas(64) float c[4 * 256];
    std::vector<uint16_t> tail;  // the last block's weight rows padded with zero rows, when N % 16 != 0
    for (int64_t nb = begin; nb < end; ++nb) {
      const int64_t n0 = nb * 16, valid = std::min<int64_t>(16, N - n0);
      const uint16_t* wb = w + n0 * K;
      if (valid < 16) {
        tail.assign(static_cast<size_t>(16 * K), 0);
        std::copy(wb, wb + valid * K, tail.begin());
        wb = tail.data();
      }
      for (int64_t j0 = 0; j0 < row_blocks; j0 += 4) {
        const int mb = static_cast<int>(std::min<int64_t>(4, row_blocks - j0));
        // The thread's next full block, fetched during this block's first row group.
        const bool fetch = j0 == 0 && nb + 1 < end && n0 + 32 <= N;
        RunBlock(mb, wb, K, packed.data(), row_blocks, j0, c,
                 fetch ? reinterpret_cast<const char*>(w + (n0 + 16) * K) : nullptr);
        StoreBlock(c, mb, j0, M, N, n0, valid, bias, y);
      }
    }
    ReleaseTiles();
  });
}

uint64_t Xcr0() {
  uint32_t lo, hi;
  asm volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (uint64_t{hi} << 32) | lo;
}

// AVX-512 F, BW and VL, reported by the CPU and enabled by the OS (opmask and ZMM state in XCR0).
bool CpuAndOsHaveAvx512() {
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & (1u << 27))) return false;  // OSXSAVE
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
  if (!((b & (1u << 16)) && (b & (1u << 30)) && (b & (1u << 31)))) return false;
  const uint64_t needed = (1u << 1) | (1u << 2) | (7u << 5);  // SSE, AVX, AVX-512 state
  return (Xcr0() & needed) == needed;
}

bool CpuAndOsHaveAmx() {
  if (!CpuAndOsHaveAvx512()) return false;
  unsigned a, b, c, d;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
  const bool amx = (d & (1u << 22)) && (d & (1u << 24));  // AMX-BF16, AMX-TILE
  if (!amx || !__get_cpuid_count(7, 1, &a, &b, &c, &d) || !(a & (1u << 5))) return false;  // AVX512-BF16
  const uint64_t tiles = 3u << 17;  // TILECFG, TILEDATA
  return (Xcr0() & tiles) == tiles;
}

// A product with a known answer, run in a child process: a fault there leaves this process untouched.
bool ProbeInChild() {
  const pid_t pid = fork();
  if (pid < 0) return false;
  if (pid == 0) {
    alignas(64) uint16_t w[16 * 32], x[16 * 32];
    alignas(64) uint32_t packed[256];
    alignas(64) float c[256];
    for (int n = 0; n < 16; ++n) {
      for (int k = 0; k < 32; ++k) {
        w[n * 32 + k] = 0x3f80;                  // 1.0
        x[n * 32 + k] = k == n ? 0x4000 : 0;     // 2.0 on the diagonal
      }
    }
    for (int i = 0; i < 16; ++i) {
      for (int r = 0; r < 16; ++r) std::memcpy(packed + r * 16 + i, x + i * 32 + 2 * r, 4);
    }
    ConfigureTiles();
    TileBlock<1>(w, 32, packed, 1, 0, c);
    ReleaseTiles();
    for (float v : c) {
      if (v != 2.f) _exit(1);
    }
    _exit(0);
  }
  int status = 0;
  if (waitpid(pid, &status, 0) != pid) return false;
  return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

// ---------------------------------------------------------------------------------------------------
// f32 with AVX-512: y = x w^T as dot products along k, no packing. A tile is 8 rows of x by 3 weight rows:
// 24 accumulators, one load of each operand per 16 k, and one cross-lane reduction per tile and k block. A
// thread walks its weight rows in chunks of 96 that stay in L2, and each 8-row tile of x stays in L1 while the
// chunk's weight rows pass under it; k is blocked at 1024 so that the x tile fits.

constexpr int kTileRows = 8;        // rows of x per tile
constexpr int64_t kChunkRows = 96;  // weight rows per L2 chunk (a multiple of 3)
constexpr int64_t kBlockK = 1024;

// y[m0 .. m0 + 7][n0 .. n0 + C - 1] (+)= x rows times weight rows over k in [k0, k1).
template <int C>
RLHF_AVX512_TARGET void DotTile(const float* x, const float* w, float* y, int64_t K, int64_t N, int64_t m0, int64_t n0,
                                int64_t k0, int64_t k1, bool accumulate) {
  __m512 acc[kTileRows][C];
#pragma GCC unroll 8
  for (int r = 0; r < kTileRows; ++r) {
#pragma GCC unroll 3
    for (int c = 0; c < C; ++c) acc[r][c] = _mm512_setzero_ps();
  }
  for (int64_t k = k0; k < k1; k += 16) {
    __m512 wv[C];
#pragma GCC unroll 3
    for (int c = 0; c < C; ++c) wv[c] = _mm512_loadu_ps(w + (n0 + c) * K + k);
#pragma GCC unroll 8
    for (int r = 0; r < kTileRows; ++r) {
      __m512 xv = _mm512_loadu_ps(x + (m0 + r) * K + k);
      // One load per x vector: GCC otherwise folds it into each of the C multiply-adds (3 loads where 1 will do),
      // and the loads, not the multiply-adds, become the limit.
      asm("" : "+v"(xv));
#pragma GCC unroll 3
      for (int c = 0; c < C; ++c) acc[r][c] = _mm512_fmadd_ps(xv, wv[c], acc[r][c]);
    }
  }
#pragma GCC unroll 3
  for (int c = 0; c < C; ++c) {
    __m512 col[kTileRows];
#pragma GCC unroll 8
    for (int r = 0; r < kTileRows; ++r) col[r] = acc[r][c];
    float sums[kTileRows];
    avx512::LaneSums8(col, sums);
    for (int r = 0; r < kTileRows; ++r) {
      float& out = y[(m0 + r) * N + n0 + c];
      out = accumulate ? out + sums[r] : sums[r];
    }
  }
}

// x has Mp rows (a multiple of 8), y as many; columns [n_begin, n_end) of y.
void DotColumns(const float* x, int64_t Mp, int64_t K, const float* w, int64_t N, float* y, int64_t n_begin,
                int64_t n_end) {
  for (int64_t c0 = n_begin; c0 < n_end; c0 += kChunkRows) {
    const int64_t c1 = std::min(n_end, c0 + kChunkRows);
    // The next chunk's weights (contiguous rows) are fetched while this one is computed, a share after each
    // tile: 240 against 210 GFLOP/s at the decode's shapes with the weights coming from memory.
    const char* next = reinterpret_cast<const char*>(w + c1 * K);
    const int64_t next_bytes = (std::min(n_end, c1 + kChunkRows) - c1) * K * 4;
    const int64_t tiles = (K + kBlockK - 1) / kBlockK * (Mp / kTileRows) * ((c1 - c0 + 2) / 3);
    const int64_t share = (next_bytes / tiles + 63) / 64 * 64;
    int64_t fetched = 0;
    auto fetch = [&] {
      for (int64_t end = std::min(next_bytes, fetched + share); fetched < end; fetched += 64) {
        _mm_prefetch(next + fetched, _MM_HINT_T0);
      }
    };
    for (int64_t k0 = 0; k0 < K; k0 += kBlockK) {
      const int64_t k1 = std::min(K, k0 + kBlockK);
      for (int64_t m0 = 0; m0 < Mp; m0 += kTileRows) {
        int64_t n = c0;
        for (; n + 3 <= c1; n += 3, fetch()) DotTile<3>(x, w, y, K, N, m0, n, k0, k1, k0 > 0);
        if (c1 - n == 2) DotTile<2>(x, w, y, K, N, m0, n, k0, k1, k0 > 0);
        if (c1 - n == 1) DotTile<1>(x, w, y, K, N, m0, n, k0, k1, k0 > 0);
      }
    }
  }
}

}  // namespace

bool AmxUsable() {
  static const bool usable = [] {
    const char* env = std::getenv("RLHF_AMX");
    if (env != nullptr && std::strcmp(env, "0") == 0) return false;
    return CpuAndOsHaveAmx() && syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureTileData) == 0 &&
           ProbeInChild();
  }();
  return usable;
}

void AmxLinearBf16(const uint16_t* x, int64_t M, int64_t K, const uint16_t* w, int64_t N, const uint16_t* bias,
                   uint16_t* y) {
  TORCH_CHECK(AmxUsable(), "AmxLinearBf16: AMX is not usable in this process");
  TORCH_CHECK(K > 0 && K % 32 == 0 && M >= 0 && N >= 0, "AmxLinearBf16: K must be a positive multiple of 32");
  if (M == 0 || N == 0) return;
  Linear(x, M, K, w, N, bias, y);
}


bool Avx512Usable() {
  static const bool usable = [] {
    const char* env = std::getenv("RLHF_AVX512");
    if (env != nullptr && std::strcmp(env, "0") == 0) return false;
    return CpuAndOsHaveAvx512();
  }();
  return usable;
}

void Avx512LinearF32(const float* x, int64_t M, int64_t K, const float* w, int64_t N, const float* bias, float* y) {
  TORCH_CHECK(Avx512Usable(), "Avx512LinearF32: AVX-512 is not usable in this process");
  TORCH_CHECK(K > 0 && K % 16 == 0 && M >= 0 && N >= 0, "Avx512LinearF32: K must be a positive multiple of 16");
  if (M == 0 || N == 0) return;
  // Rows padded to a whole tile with zeros, into scratch copies of x and y, when M is not a multiple of 8.
  const int64_t Mp = (M + kTileRows - 1) / kTileRows * kTileRows;
  std::vector<float> xp, yp;
  const float* xs = x;
  float* ys = y;
  if (Mp != M) {
    xp.assign(static_cast<size_t>(Mp * K), 0.f);
    std::copy(x, x + M * K, xp.begin());
    yp.resize(static_cast<size_t>(Mp * N));
    xs = xp.data();
    ys = yp.data();
  }
  // Threads split the weight rows in whole chunks where there are enough of them.
  const int64_t chunks = (N + kChunkRows - 1) / kChunkRows;
  if (chunks >= 2 * at::get_num_threads()) {
    at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
      DotColumns(xs, Mp, K, w, N, ys, begin * kChunkRows, std::min(N, end * kChunkRows));
    });
  } else {
    const int64_t triples = (N + 2) / 3;
    at::parallel_for(0, triples, 1, [&](int64_t begin, int64_t end) {
      DotColumns(xs, Mp, K, w, N, ys, begin * 3, std::min(N, end * 3));
    });
  }
  if (Mp != M) std::copy(yp.begin(), yp.begin() + M * N, y);
  if (bias != nullptr) {
    for (int64_t m = 0; m < M; ++m) {
      for (int64_t n = 0; n < N; ++n) y[m * N + n] += bias[n];
    }
  }
}

#else

bool AmxUsable() { return false; }
bool Avx512Usable() { return false; }
void Avx512LinearF32(const float*, int64_t, int64_t, const float*, int64_t, const float*, float*) {
  TORCH_CHECK(false, "Avx512LinearF32: built without x86-64 Linux support");
}

void AmxLinearBf16(const uint16_t*, int64_t, int64_t, const uint16_t*, int64_t, const uint16_t*, uint16_t*) {
  TORCH_CHECK(false, "AmxLinearBf16: built without x86-64 Linux AMX support");
}

#endif

}  // namespace rlhf::model
