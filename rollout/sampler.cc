#include "rollout/sampler.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <limits>

namespace rlhf::rollout {

namespace {
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

uint64_t SplitMix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// The smallest probability of a row's kept set: with the row sorted in descending order, the first q_k whose
// running mass q_1 + ... + q_k reaches `need`. No sort: a histogram of the mass over value buckets finds the
// bucket where the running mass crosses `need`, then a selection by mass (three-way quickselect) among that
// bucket's values; expected O(V) per row, flat or peaked.
float SmallestKept(const float* row, int64_t V, double need, std::vector<float>* scratch) {
  constexpr int kBuckets = 2048;
  float top = 0;
  for (int64_t i = 0; i < V; ++i) top = std::max(top, row[i]);
  if (!(top > 0)) return 0;
  const float scale = (kBuckets - 1) / top;
  auto bucket = [&](float x) { return std::min(kBuckets - 1, std::max(0, static_cast<int>(x * scale))); };
  std::vector<double> mass(kBuckets, 0.0);
  for (int64_t i = 0; i < V; ++i) mass[bucket(row[i])] += row[i];
  int b = kBuckets - 1;
  for (; b > 0 && mass[b] < need; --b) need -= mass[b];
  auto& v = *scratch;
  v.clear();
  for (int64_t i = 0; i < V; ++i) {
    if (bucket(row[i]) == b) v.push_back(row[i]);
  }
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

}  // namespace

torch::Tensor TopK(const torch::Tensor& logits, int64_t k) {
  if (k <= 0 || k >= logits.size(-1)) return logits;
  auto kth = std::get<0>(logits.topk(k, -1)).select(-1, k - 1).unsqueeze(-1);  // [N, 1]
  return logits.masked_fill(logits.lt(kth), kNegInf);
}

torch::Tensor TopP(const torch::Tensor& logits, double p) {
  if (p >= 1.0) return logits;
  // Keep every token at least as probable as the smallest kept one (ties at the edge all stay).
  auto probs = torch::softmax(logits.to(torch::kFloat32), -1).contiguous();
  const int64_t N = probs.size(0), V = probs.size(-1);
  auto threshold = torch::empty({N, 1}, torch::kFloat32);
  const float* in = probs.data_ptr<float>();
  float* out = threshold.data_ptr<float>();
  at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scratch;
    for (int64_t r = begin; r < end; ++r) out[r] = SmallestKept(in + r * V, V, p, &scratch);
  });
  return logits.masked_fill(probs.lt(threshold), kNegInf);
}

torch::Tensor MinP(const torch::Tensor& logits, double min_p) {
  if (min_p <= 0) return logits;
  auto probs = torch::softmax(logits, -1);
  auto threshold = std::get<0>(probs.max(-1, /*keepdim=*/true)) * min_p;
  return logits.masked_fill(probs.lt(threshold), kNegInf);
}

torch::Tensor Truncate(const torch::Tensor& scaled, const SamplingParams& p) {
  return MinP(TopP(TopK(scaled, p.top_k), p.top_p), p.min_p);
}

uint64_t StreamSeed(uint64_t run_seed, const std::string& prompt_id, int64_t sample_index) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : prompt_id) h = (h ^ c) * 1099511628211ull;
  return SplitMix64(SplitMix64(run_seed ^ SplitMix64(h)) + static_cast<uint64_t>(sample_index));
}

double StreamUniform(uint64_t stream_seed, uint64_t step) {
  return static_cast<double>(SplitMix64(stream_seed + SplitMix64(step)) >> 11) * (1.0 / 9007199254740992.0);
}

Draw Sample(const torch::Tensor& logits_in, const SamplingParams& p, const std::vector<uint64_t>& seeds,
            const std::vector<uint64_t>& steps) {
  torch::NoGradGuard ng;
  auto logits = logits_in.to(torch::kFloat32);
  const int64_t N = logits.size(0);
  Draw d;
  if (p.temperature <= 0) {
    d.tokens = logits.argmax(-1);
    d.logprobs = torch::log_softmax(logits, -1).gather(1, d.tokens.unsqueeze(1)).squeeze(1);
    return d;
  }
  auto scaled = logits / p.temperature;
  auto logp = torch::log_softmax(scaled, -1);  // before truncation: what the importance ratios use
  auto probs = torch::softmax(Truncate(scaled, p), -1);
  auto cdf = probs.cumsum(-1);  // [N, V] f32: its rounding (~1e-7) is far below any sampling effect
  std::vector<float> u(N);
  for (int64_t i = 0; i < N; ++i) u[i] = static_cast<float>(StreamUniform(seeds.at(i), steps.at(i)));
  auto target = torch::tensor(u, torch::kFloat32).unsqueeze(1) * cdf.select(-1, -1).unsqueeze(1);
  auto idx = torch::searchsorted(cdf, target, /*out_int32=*/false, /*right=*/true).squeeze(1);
  idx = idx.clamp_max(logits.size(-1) - 1);
  // Never land on a removed token (possible only through rounding at the very end of the CDF).
  auto last_kept = (probs.gt(0).to(torch::kInt64) * torch::arange(logits.size(-1), torch::kInt64)).argmax(-1);
  idx = torch::where(probs.gather(1, idx.unsqueeze(1)).squeeze(1).gt(0), idx, last_kept);
  d.tokens = idx;
  d.logprobs = logp.gather(1, idx.unsqueeze(1)).squeeze(1);
  return d;
}

}  // namespace rlhf::rollout
