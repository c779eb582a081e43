#include "rollout/sampler.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>

#include "common/hash.h"
#include "common/vec_math.h"

namespace rlhf::rollout {

namespace {
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

uint64_t SplitMix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// The smallest probability of a row's kept set: with the row (of values >= 0) sorted in descending order, the
// first q_k whose running mass q_1 + ... + q_k reaches `need`. No sort: the bit pattern of a non-negative
// float is monotone in its value, so a histogram of the mass over the top 13 bits (exponent and 4 mantissa
// bits) finds the bucket where the running mass crosses `need`; a second one over the next 8 bits of that
// bucket's values narrows it to values within 1/4096 of each other (a near-flat row puts most of the vocabulary
// in one first-level bucket); then a selection by mass (three-way quickselect) among those. Expected O(V).
float SmallestKept(const float* row, int64_t V, double need, std::vector<float>* scratch) {
  const float top = vec::Max(row, V);
  if (!(top > 0)) return 0;
  if (!(need > 0)) return top;  // p = 0: the first token alone reaches it
  auto bits = [](float x) {
    uint32_t u;
    std::memcpy(&u, &x, sizeof u);
    return u;
  };
  // Index of the highest bucket whose mass, with that of the buckets above it, reaches `need`, taking the
  // mass above it out of `need`; -1 when all of them together fall short (rounding).
  auto crossing = [&need](const std::vector<double>& mass) {
    for (int b = static_cast<int>(mass.size()) - 1; b >= 0; --b) {
      if (mass[b] > 0 && mass[b] >= need) return b;
      need -= mass[b];
    }
    return -1;
  };
  // Four interleaved histograms: runs of values in one bucket (a flat row) would otherwise chain every add on
  // the one before it.
  const size_t buckets = (bits(top) >> 19) + 1;
  std::vector<double> parts(4 * buckets, 0.0);
  int64_t i = 0;
  for (; i + 4 <= V; i += 4) {
    for (int j = 0; j < 4; ++j) parts[j * buckets + (bits(row[i + j]) >> 19)] += row[i + j];
  }
  for (; i < V; ++i) parts[bits(row[i]) >> 19] += row[i];
  std::vector<double> mass(buckets);
  for (size_t b = 0; b < buckets; ++b) {
    mass[b] = (parts[b] + parts[buckets + b]) + (parts[2 * buckets + b] + parts[3 * buckets + b]);
  }
  const int b = crossing(mass);
  if (b < 0) return 0;  // the whole row is needed
  auto& v = *scratch;
  v.clear();
  for (int64_t k = 0; k < V; ++k) {
    if (static_cast<int>(bits(row[k]) >> 19) == b) v.push_back(row[k]);
  }
  std::vector<double> fine(256, 0.0);
  for (float x : v) fine[(bits(x) >> 11) & 255] += x;
  const int f = crossing(fine);
  if (f < 0) return *std::min_element(v.begin(), v.end());  // the whole bucket is needed
  v.erase(std::remove_if(v.begin(), v.end(), [&](float x) { return static_cast<int>((bits(x) >> 11) & 255) != f; }),
          v.end());
  size_t lo = 0, hi = v.size();
  uint64_t state = 0x9E3779B97F4A7C15ull;
  while (true) {
    state = SplitMix64(state);
    const float pivot = v[lo + state % (hi - lo)];
    // [lo, gt): greater than the pivot, [gt, lt): equal, [lt, hi): smaller.
    size_t gt = lo, i = lo, lt = hi;
    double mass_gt = 0, mass_eq = 0;
    while (i < lt) {
      const float x = v[i];
      if (x > pivot) {
        std::swap(v[gt++], v[i++]);
        mass_gt += x;
      } else if (x < pivot) {
        std::swap(v[i], v[--lt]);
      } else {
        mass_eq += x;
        ++i;
      }
    }
    if (mass_gt >= need) {
      hi = gt;  // need > 0, so this part is not empty
    } else if (mass_gt + mass_eq >= need || lt == hi) {
      return pivot;  // crossing inside the ties (or rounding left the total short: keep everything)
    } else {
      need -= mass_gt + mass_eq;
      lo = lt;
    }
  }
}

// Per-thread buffers of the row functions.
struct Scratch {
  std::vector<float> x, w, tmp;
};

// The kept weights of one row of tempered logits x: w[i] = exp(x[i] - max) for tokens that top-k, then top-p,
// then min-p keep (each stage on the distribution the previous one left), 0 for the rest. The most probable
// token is always kept, so the largest weight is 1. Returns the sum of the kept weights; *log_norm gets
// log sum_i exp(x[i]), the normaliser before truncation.
double TruncateRow(const float* x, int64_t V, const SamplingParams& p, float* w, std::vector<float>* scratch,
                   double* log_norm) {
  const float m = vec::Max(x, V);
  float kth = kNegInf;  // top-k: keep x >= the k-th largest (ties at the edge all stay)
  if (p.top_k > 0 && p.top_k < V) {
    scratch->assign(x, x + V);
    std::nth_element(scratch->begin(), scratch->begin() + (p.top_k - 1), scratch->end(), std::greater<float>());
    kth = (*scratch)[p.top_k - 1];
  }
  const double all = vec::ExpShifted(x, V, m, w);
  *log_norm = m + std::log(all);
  double total = all;
  if (kth > kNegInf) {
    total = 0;
    for (int64_t i = 0; i < V; ++i) {
      if (x[i] < kth) w[i] = 0.f;
      total += w[i];
    }
  }
  if (p.top_p < 1.0) {  // keep every token at least as probable as the smallest kept one
    total = vec::ZeroBelow(w, V, SmallestKept(w, V, p.top_p * total, scratch));
  }
  if (p.min_p > 0) {  // p_i >= min_p * p_max, and the largest weight is exp(0) = 1
    total = vec::ZeroBelow(w, V, static_cast<float>(p.min_p));
  }
  return total;
}

// The first index whose running sum of w (weights >= 0 in vocabulary order, some > 0) passes target; the last
// positive weight should rounding leave target past the end. Blocks of 64 whose sum leaves the running sum at
// or below target are skipped whole.
int64_t InverseCdf(const float* w, int64_t V, double target) {
  constexpr int64_t kBlock = 64;
  double cdf = 0;
  for (int64_t b = 0; b < V; b += kBlock) {
    const int64_t n = std::min(kBlock, V - b);
    const double block = vec::Sum(w + b, n);
    if (cdf + block <= target) {
      cdf += block;
      continue;
    }
    for (int64_t i = b; i < b + n; ++i) {
      if (w[i] == 0.f) continue;
      cdf += w[i];
      if (cdf > target) return i;
    }
  }
  for (int64_t i = V - 1; i > 0; --i) {
    if (w[i] > 0.f) return i;
  }
  return 0;
}

// Runs fn(row, r, scratch) over the rows of a contiguous f32 [N, V] matrix on the intra-op thread pool.
template <typename Fn>
void ForRows(const torch::Tensor& m, Fn fn) {
  const int64_t N = m.size(0), V = m.size(1);
  const float* data = m.data_ptr<float>();
  at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
    Scratch scratch;
    for (int64_t r = begin; r < end; ++r) fn(data + r * V, r, &scratch);
  });
}

}  // namespace

torch::Tensor Truncate(const torch::Tensor& scaled, const SamplingParams& p) {
  auto x = scaled.to(torch::kFloat32).contiguous();
  auto kept = torch::empty_like(x);
  const int64_t V = x.size(-1);
  float* w = kept.data_ptr<float>();
  ForRows(x, [&](const float* row, int64_t r, Scratch* scratch) {
    double log_norm;
    (void)TruncateRow(row, V, p, w + r * V, &scratch->tmp, &log_norm);
  });
  return scaled.masked_fill(kept.eq(0), kNegInf);
}

torch::Tensor TopK(const torch::Tensor& logits, int64_t k) {
  SamplingParams p;
  p.top_k = k;
  return Truncate(logits, p);
}

torch::Tensor TopP(const torch::Tensor& logits, double top_p) {
  SamplingParams p;
  p.top_p = top_p;
  return Truncate(logits, p);
}

torch::Tensor MinP(const torch::Tensor& logits, double min_p) {
  SamplingParams p;
  p.min_p = min_p;
  return Truncate(logits, p);
}

uint64_t StreamSeed(uint64_t run_seed, const std::string& prompt_id, int64_t sample_index) {
  return SplitMix64(SplitMix64(run_seed ^ SplitMix64(Fnv1a64(prompt_id))) + static_cast<uint64_t>(sample_index));
}

double StreamUniform(uint64_t stream_seed, uint64_t step) {
  return static_cast<double>(SplitMix64(stream_seed + SplitMix64(step)) >> 11) * (1.0 / 9007199254740992.0);
}

Draw Sample(const torch::Tensor& logits_in, const SamplingParams& p, const std::vector<uint64_t>& seeds,
            const std::vector<uint64_t>& steps) {
  torch::NoGradGuard ng;
  auto logits = logits_in.to(torch::kFloat32).contiguous();
  TORCH_CHECK(logits.dim() == 2, "Sample: logits must be [N, V]");
  const int64_t N = logits.size(0), V = logits.size(1);
  TORCH_CHECK(static_cast<int64_t>(seeds.size()) >= N && static_cast<int64_t>(steps.size()) >= N,
              "Sample: one stream seed and step per row");
  Draw d;
  d.tokens = torch::empty({N}, torch::kInt64);
  d.logprobs = torch::empty({N}, torch::kFloat32);
  int64_t* tok = d.tokens.data_ptr<int64_t>();
  float* lp = d.logprobs.data_ptr<float>();
  const bool greedy = p.temperature <= 0;
  const float temperature = greedy ? 1.f : static_cast<float>(p.temperature);
  // One pass per row over its V logits at a time, in place of tensor stages that each read the whole batch.
  ForRows(logits, [&](const float* row, int64_t r, Scratch* scratch) {
    scratch->w.resize(V);
    const float* w = scratch->w.data();
    const float* x = row;  // the tempered logits: the row itself at temperature 1
    if (temperature != 1.f) {
      scratch->x.resize(V);
      for (int64_t i = 0; i < V; ++i) scratch->x[i] = row[i] / temperature;
      x = scratch->x.data();
    }
    int64_t pick = 0;
    double log_norm = 0;
    if (greedy) {
      const float m = vec::Max(x, V);
      pick = std::find(x, x + V, m) - x;  // the first of tied maxima, as argmax
      log_norm = m + std::log(vec::ExpShifted(x, V, m, nullptr));
    } else {
      const double total = TruncateRow(x, V, p, scratch->w.data(), &scratch->tmp, &log_norm);
      pick = InverseCdf(w, V, StreamUniform(seeds[r], steps[r]) * total);
    }
    tok[r] = pick;
    // Before truncation, under softmax(logits / T): what the importance ratios use.
    lp[r] = static_cast<float>(x[pick] - log_norm);
  });
  return d;
}

}  // namespace rlhf::rollout
