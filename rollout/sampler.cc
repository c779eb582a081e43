#include "rollout/sampler.h"

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
}  // namespace

torch::Tensor TopK(const torch::Tensor& logits, int64_t k) {
  if (k <= 0 || k >= logits.size(-1)) return logits;
  auto kth = std::get<0>(logits.topk(k, -1)).select(-1, k - 1).unsqueeze(-1);  // [N, 1]
  return logits.masked_fill(logits.lt(kth), kNegInf);
}

torch::Tensor TopP(const torch::Tensor& logits, double p) {
  if (p >= 1.0) return logits;
  auto probs = torch::softmax(logits, -1);
  // The kept set is the most probable tokens whose preceding mass is < p. Find the smallest kept
  // probability per row from the top 256 when they reach p (peaked distributions: no full sort), else
  // from a sort of that row; then keep every token at least that probable (ties at the edge all stay).
  const int64_t V = logits.size(-1);
  auto smallest_kept = [&](const torch::Tensor& sorted) {  // sorted [n, k] descending
    auto before = sorted.cumsum(-1) - sorted;
    auto count = before.lt(p).sum(-1, /*keepdim=*/true).clamp_min(1);  // >= 1: the top token always stays
    return sorted.gather(-1, count - 1);                                  // [n, 1]
  };
  const int64_t k = std::min<int64_t>(V, 256);
  auto top = std::get<0>(probs.topk(k, -1));
  auto threshold = smallest_kept(top);
  auto uncovered = top.sum(-1).lt(p).nonzero().squeeze(1);
  if (uncovered.numel() > 0 && k < V) {
    auto rows = probs.index_select(0, uncovered);
    auto sorted = std::get<0>(rows.sort(-1, /*descending=*/true));
    threshold.index_copy_(0, uncovered, smallest_kept(sorted));
  }
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
