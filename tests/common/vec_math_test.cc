#include "common/vec_math.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

namespace rlhf::vec {
namespace {

uint16_t ToBf16(float f) {  // truncation: the test compares against the same bf16 values widened
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof bits);
  return static_cast<uint16_t>(bits >> 16);
}

TEST(VecMath, ExpShiftedIsExpfWithinTwoUlpAndZeroFarBelow) {
  std::vector<float> x;
  for (float v = -100.f; v <= 20.f; v += 0.0137f) x.push_back(v);
  x.push_back(-std::numeric_limits<float>::infinity());
  x.push_back(0.f);
  std::vector<float> out(x.size());
  const float shift = 3.f;
  const double sum = ExpShifted(x.data(), static_cast<int64_t>(x.size()), shift, out.data());
  double want_sum = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    const float want = std::exp(x[i] - shift);
    want_sum += want;
    if (x[i] - shift < -87.3f) {
      EXPECT_LE(out[i], 1e-37f) << x[i];  // at most expf's own (sub)normal value, 0 on the vector path
    } else {
      EXPECT_NEAR(out[i], want, 2.5e-7f * want) << "x = " << x[i];
    }
  }
  EXPECT_NEAR(sum, want_sum, 1e-6 * want_sum);
  EXPECT_EQ(ExpShifted(x.data(), static_cast<int64_t>(x.size()), shift, nullptr), sum);
}

TEST(VecMath, DotAxpyAndMaxOnF32AndBf16WithTails) {
  std::mt19937 gen(7);
  std::normal_distribution<float> nd;
  for (int64_t n : {1, 7, 8, 17, 64, 67}) {
    std::vector<float> a(n), b(n), out(n, 0.5f);
    std::vector<uint16_t> b16(n);
    for (int64_t i = 0; i < n; ++i) {
      a[i] = nd(gen);
      b[i] = nd(gen);
      b16[i] = ToBf16(b[i]);
    }
    double dot = 0, dot16 = 0;
    for (int64_t i = 0; i < n; ++i) {
      dot += a[i] * b[i];
      dot16 += a[i] * Bf16ToFloat(b16[i]);
    }
    EXPECT_NEAR(Dot(a.data(), b.data(), n), dot, 1e-5) << n;
    EXPECT_NEAR(Dot(a.data(), b16.data(), n), dot16, 1e-5) << n;
    auto out16 = out;
    Axpy(0.25f, b.data(), out.data(), n);
    Axpy(-2.f, b16.data(), out16.data(), n);
    for (int64_t i = 0; i < n; ++i) {
      EXPECT_FLOAT_EQ(out[i], 0.5f + 0.25f * b[i]);
      EXPECT_FLOAT_EQ(out16[i], 0.5f - 2.f * Bf16ToFloat(b16[i]));
    }
    b[n / 2] = 100.f;
    EXPECT_EQ(Max(b.data(), n), 100.f);
  }
  EXPECT_EQ(Max(nullptr, 0), -std::numeric_limits<float>::infinity());
}

TEST(VecMath, RowScoresAndWeightedRowSumAreSmallProducts) {
  std::mt19937 gen(9);
  std::normal_distribution<float> nd;
  for (auto [m, n] : std::vector<std::pair<int64_t, int64_t>>{{5, 20}, {19, 64}, {16, 40}}) {
  const int64_t nq = 3;
  std::vector<float> q(nq * n), rows(m * n), w(nq * m);
  std::vector<uint16_t> rows16(m * n);
  for (auto& v : q) v = nd(gen);
  for (int64_t i = 0; i < m * n; ++i) {
    rows[i] = nd(gen);
    rows16[i] = ToBf16(rows[i]);
  }
  for (auto& v : w) v = nd(gen);
  w[4] = 0.f;  // a masked column
  std::vector<float> scores(nq * m), scores16(nq * m), out(nq * n, 1.f), out16(nq * n, 1.f);
  RowScores(q.data(), nq, rows.data(), m, n, 0.5f, scores.data());
  RowScores(q.data(), nq, rows16.data(), m, n, 0.5f, scores16.data());
  WeightedRowSum(w.data(), nq, rows.data(), m, n, out.data());
  WeightedRowSum(w.data(), nq, rows16.data(), m, n, out16.data());
  for (int64_t g = 0; g < nq; ++g) {
    for (int64_t j = 0; j < m; ++j) {
      double want = 0, want16 = 0;
      for (int64_t i = 0; i < n; ++i) {
        want += q[g * n + i] * rows[j * n + i];
        want16 += q[g * n + i] * Bf16ToFloat(rows16[j * n + i]);
      }
      EXPECT_NEAR(scores[g * m + j], 0.5 * want, 1e-5) << m << " x " << n;
      EXPECT_NEAR(scores16[g * m + j], 0.5 * want16, 1e-5) << m << " x " << n;
    }
    for (int64_t i = 0; i < n; ++i) {
      double want = 1, want16 = 1;
      for (int64_t j = 0; j < m; ++j) {
        want += w[g * m + j] * rows[j * n + i];
        want16 += w[g * m + j] * Bf16ToFloat(rows16[j * n + i]);
      }
      EXPECT_NEAR(out[g * n + i], want, 1e-4) << m << " x " << n;
      EXPECT_NEAR(out16[g * n + i], want16, 1e-4);
    }
  }
  }
}

TEST(VecMath, SumAndZeroBelowMatchTheDoubleLoop) {
  std::mt19937 gen(11);
  std::uniform_real_distribution<float> u(0.f, 1.f);
  for (int64_t n : {0, 1, 7, 8, 9, 2047, 2048, 2049, 32000}) {
    std::vector<float> x(n);
    for (auto& v : x) v = u(gen);
    double want = 0, kept_sum = 0;
    std::vector<float> kept = x;
    for (auto& v : kept) {
      want += v;
      if (v < 0.25f) v = 0.f;
      kept_sum += v;
    }
    EXPECT_NEAR(Sum(x.data(), n), want, 1e-6 * (1 + want)) << n;
    std::vector<float> y = x;
    EXPECT_NEAR(ZeroBelow(y.data(), n, 0.25f), kept_sum, 1e-6 * (1 + kept_sum)) << n;
    EXPECT_EQ(y, kept) << n;  // exactly the values below the floor are zeroed
  }
}

TEST(VecMath, SiluMulIsTheGatedActivation) {
  std::mt19937 gen(12);
  std::uniform_real_distribution<float> u(-12.f, 12.f);
  for (int64_t n : {1, 8, 13, 1000}) {
    std::vector<float> g(n), up(n), out(n);
    for (auto& v : g) v = u(gen);
    for (auto& v : up) v = u(gen);
    g[0] = -100.f;  // far below: silu is -0
    SiluMul(g.data(), up.data(), out.data(), n);
    std::vector<uint16_t> g16(n), u16(n), out16(n);
    for (int64_t i = 0; i < n; ++i) {
      g16[i] = FloatToBf16(g[i]);
      u16[i] = FloatToBf16(up[i]);
    }
    SiluMul(g16.data(), u16.data(), out16.data(), n);
    for (int64_t i = 0; i < n; ++i) {
      const double want = g[i] / (1 + std::exp(-static_cast<double>(g[i]))) * up[i];
      EXPECT_NEAR(out[i], want, 1e-6 * (1 + std::abs(want))) << g[i] << " " << up[i];
      const double g_b = Bf16ToFloat(g16[i]), u_b = Bf16ToFloat(u16[i]);
      const double want16 = g_b / (1 + std::exp(-g_b)) * u_b;
      // Rounded once: within half a bf16 step (at most 2^-8 relative) of the exact product of the bf16 inputs.
      EXPECT_NEAR(Bf16ToFloat(out16[i]), want16, std::abs(want16) / 256 + 1e-30) << g_b << " " << u_b;
    }
  }
  EXPECT_EQ(FloatToBf16(1.f), 0x3f80);
  EXPECT_EQ(FloatToBf16(Bf16ToFloat(0x3f80) + std::ldexp(1.f, -8)), 0x3f80);  // a tie goes to the even 0x3f80
  EXPECT_EQ(FloatToBf16(Bf16ToFloat(0x3f81) + std::ldexp(1.f, -8)), 0x3f82);  // and from odd 0x3f81 up to 0x3f82
}

TEST(VecMath, RmsNormRowIsTheModelsRmsNorm) {
  std::mt19937 gen(13);
  std::normal_distribution<float> nd(0.f, 2.f);
  for (int64_t n : {1, 8, 13, 768}) {
    std::vector<float> x(n), w(n), out(n);
    for (auto& v : x) v = nd(gen);
    for (auto& v : w) v = nd(gen);
    RmsNormRow(x.data(), w.data(), n, 1e-6f, out.data());
    double ss = 0;
    for (float v : x) ss += static_cast<double>(v) * v;
    const double r = 1 / std::sqrt(ss / n + 1e-6);
    for (int64_t i = 0; i < n; ++i) EXPECT_NEAR(out[i], w[i] * x[i] * r, 1e-5 * (1 + std::abs(w[i] * x[i] * r)));
    std::vector<uint16_t> x16(n), w16(n), out16(n);
    for (int64_t i = 0; i < n; ++i) {
      x16[i] = FloatToBf16(x[i]);
      w16[i] = FloatToBf16(w[i]);
    }
    RmsNormRow(x16.data(), w16.data(), n, 1e-6f, out16.data());
    double ss16 = 0;
    for (uint16_t v : x16) ss16 += static_cast<double>(Bf16ToFloat(v)) * Bf16ToFloat(v);
    const double r16 = 1 / std::sqrt(ss16 / n + 1e-6);
    for (int64_t i = 0; i < n; ++i) {
      // Two bf16 roundings (x * r, then w * that): within about two bf16 steps.
      const double want = Bf16ToFloat(w16[i]) * Bf16ToFloat(x16[i]) * r16;
      EXPECT_NEAR(Bf16ToFloat(out16[i]), want, std::abs(want) / 64 + 1e-6) << i;
    }
  }
}

TEST(VecMath, RopeRowIsRotateHalf) {
  std::mt19937 gen(14);
  std::normal_distribution<float> nd(0.f, 1.f);
  for (int64_t d : {2, 8, 16, 24, 64, 128}) {
    std::vector<float> x(d), c(d), s(d), out(d);
    for (auto& v : x) v = nd(gen);
    for (auto& v : c) v = nd(gen);
    for (auto& v : s) v = nd(gen);
    RopeRow(x.data(), c.data(), s.data(), d, out.data());
    std::vector<uint16_t> x16(d), c16(d), s16(d), out16(d);
    for (int64_t i = 0; i < d; ++i) {
      x16[i] = FloatToBf16(x[i]);
      c16[i] = FloatToBf16(c[i]);
      s16[i] = FloatToBf16(s[i]);
    }
    RopeRow(x16.data(), c16.data(), s16.data(), d, out16.data());
    const int64_t h = d / 2;
    auto round = [](float v) { return Bf16ToFloat(FloatToBf16(v)); };
    for (int64_t i = 0; i < d; ++i) {
      const float rot = i < h ? -x[i + h] : x[i - h];
      // f32: the scalar tail may fuse a product into the sum (one rounding fewer).
      EXPECT_NEAR(out[i], x[i] * c[i] + rot * s[i], 2e-7 * (std::abs(x[i] * c[i]) + std::abs(rot * s[i]))) << d << " " << i;
      const float rot16 = i < h ? -Bf16ToFloat(x16[i + h]) : Bf16ToFloat(x16[i - h]);
      const float want16 = round(round(Bf16ToFloat(x16[i]) * Bf16ToFloat(c16[i])) + round(rot16 * Bf16ToFloat(s16[i])));
      EXPECT_EQ(Bf16ToFloat(out16[i]), want16) << d << " " << i;
    }
  }
}

}  // namespace
}  // namespace rlhf::vec
