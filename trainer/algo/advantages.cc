#include "trainer/algo/advantages.h"

#include "trainer/algo/masked.h"

namespace rlhf::algo {

namespace {
// Index of the last response token of each row [B] (0 for an empty row) and whether the row has one.
std::pair<torch::Tensor, torch::Tensor> LastToken(const torch::Tensor& mask) {
  const int64_t T = mask.size(1);
  auto pos = torch::arange(T, torch::TensorOptions().dtype(torch::kInt64).device(mask.device()));
  auto m = mask.to(torch::kInt64);
  return {(pos.unsqueeze(0) * m).argmax(1), m.sum(1) > 0};
}

torch::Tensor Groups(const torch::Tensor& x, int64_t g) {
  TORCH_CHECK(g > 0 && x.dim() == 1 && x.size(0) % g == 0, "scores [N] must hold whole groups of ", g);
  return x.view({-1, g});
}
}  // namespace

torch::Tensor TokenRewards(const torch::Tensor& score, const torch::Tensor& kl, const torch::Tensor& mask,
                           double beta, double score_clip) {
  torch::NoGradGuard ng;
  auto m = mask.to(score.scalar_type());
  auto s = score_clip > 0 ? score.clamp(-score_clip, score_clip) : score;
  auto r = kl.defined() ? -beta * kl.to(score.scalar_type()) * m : torch::zeros_like(m);
  auto [last, has] = LastToken(mask);
  auto add = torch::zeros_like(m).scatter(1, last.unsqueeze(1), (s * has.to(s.scalar_type())).unsqueeze(1));
  return r + add;
}

GaeOutput Gae(const torch::Tensor& rewards, const torch::Tensor& values, const torch::Tensor& mask, double gamma,
              double lambda, MaskedGae masked) {
  torch::NoGradGuard ng;
  const int64_t T = rewards.size(1);
  auto m = mask.to(rewards.scalar_type());
  auto r = rewards * m;
  auto v = values.detach().to(rewards.scalar_type()) * m;
  auto adv = torch::zeros_like(r);
  auto next_value = torch::zeros_like(r.select(1, 0));
  auto last = torch::zeros_like(next_value);
  for (int64_t t = T - 1; t >= 0; --t) {
    auto mt = m.select(1, t);
    auto delta = r.select(1, t) + gamma * next_value - v.select(1, t);
    auto cur = delta + gamma * lambda * last;
    if (masked == MaskedGae::kSkip) {
      next_value = v.select(1, t) * mt + (1 - mt) * next_value;
      last = cur * mt + (1 - mt) * last;
    } else {
      next_value = v.select(1, t);
      last = cur;
    }
    adv.select(1, t).copy_(last);
  }
  adv = adv * m;
  return {adv, (adv + v) * m};
}

absl::StatusOr<GroupAdvantage> ParseGroupAdvantage(const std::string& name) {
  if (name == "grpo") return GroupAdvantage::kGrpo;
  if (name == "dr_grpo") return GroupAdvantage::kDrGrpo;
  if (name == "rloo") return GroupAdvantage::kRloo;
  return absl::InvalidArgumentError(absl::StrCat("unknown group advantage '", name, "'; use grpo, dr_grpo or rloo"));
}

torch::Tensor GroupAdvantages(const torch::Tensor& scores, int64_t G, GroupAdvantage kind, double eps) {
  torch::NoGradGuard ng;
  auto r = Groups(scores, G);
  if (G == 1 && kind != GroupAdvantage::kDrGrpo) return torch::zeros_like(scores);
  auto mean = r.mean(1, /*keepdim=*/true);
  torch::Tensor a;
  switch (kind) {
    case GroupAdvantage::kGrpo: a = (r - mean) / (r.std(1, /*unbiased=*/true, /*keepdim=*/true) + eps); break;
    case GroupAdvantage::kDrGrpo: a = r - mean; break;
    case GroupAdvantage::kRloo: a = r - (r.sum(1, true) - r) / static_cast<double>(G - 1); break;
  }
  return a.reshape({-1});
}

torch::Tensor BroadcastToTokens(const torch::Tensor& seq_adv, const torch::Tensor& mask) {
  return seq_adv.unsqueeze(1) * mask.to(seq_adv.scalar_type());
}

torch::Tensor ReturnToGo(const torch::Tensor& rewards, const torch::Tensor& mask, double gamma) {
  torch::NoGradGuard ng;
  auto m = mask.to(rewards.scalar_type());
  auto r = rewards * m;
  auto out = torch::zeros_like(r);
  auto run = torch::zeros_like(r.select(1, 0));
  for (int64_t t = r.size(1) - 1; t >= 0; --t) {
    run = r.select(1, t) + gamma * run;
    out.select(1, t).copy_(run);
  }
  return out * m;
}

torch::Tensor ReinforcePlusPlus(const torch::Tensor& scores, const torch::Tensor& kl, const torch::Tensor& mask,
                                double beta, double gamma, int64_t group_size) {
  torch::NoGradGuard ng;
  auto s = scores;
  if (group_size > 0) s = (Groups(scores, group_size) - Groups(scores, group_size).mean(1, true)).reshape({-1});
  auto returns = ReturnToGo(TokenRewards(s, kl, mask, beta), mask, gamma);
  return Whiten(returns, mask);
}

torch::Tensor ProcessAdvantages(const torch::Tensor& step_rewards, const torch::Tensor& step_ends,
                                const torch::Tensor& mask, int64_t G, double eps) {
  torch::NoGradGuard ng;
  const int64_t N = step_rewards.size(0), S = step_rewards.size(1), T = mask.size(1);
  TORCH_CHECK(step_ends.sizes() == step_rewards.sizes(), "step_ends must be [N, S] like step_rewards");
  TORCH_CHECK(N % G == 0, "process advantages need whole groups");
  auto present = step_ends.ge(0).to(step_rewards.scalar_type());                 // [N, S]
  auto pg = present.view({N / G, G * S});
  auto rg = step_rewards.view({N / G, G * S}) * pg;
  auto n = pg.sum(1, true);                                                        // [N/G, 1]
  auto mean = rg.sum(1, true) / n.clamp_min(1);
  auto var = ((rg - mean).pow(2) * pg).sum(1, true) / (n - 1).clamp_min(1);
  auto norm = ((rg - mean) / (var.sqrt() + eps)) * pg * n.ge(2).to(rg.scalar_type());  // groups with < 2 steps: 0
  norm = norm.view({N, S});
  auto pos = torch::arange(T, step_ends.options().dtype(torch::kInt64)).view({1, 1, T});
  auto covers = pos.le(step_ends.to(torch::kInt64).unsqueeze(2)).to(norm.scalar_type());  // [N, S, T]
  return (norm.unsqueeze(2) * covers).sum(1) * mask.to(norm.scalar_type());
}

torch::Tensor GroupsWithSignal(const torch::Tensor& scores, int64_t G) {
  auto r = Groups(scores, G);
  return std::get<0>(r.max(1)).ne(std::get<0>(r.min(1)));
}

torch::Tensor OverlongPenalty(const torch::Tensor& lengths, int64_t max_len, int64_t cache_len) {
  TORCH_CHECK(cache_len > 0 && cache_len <= max_len, "overlong shaping needs 0 < cache_len <= max_len");
  auto L = lengths.to(torch::kFloat64);
  const double start = static_cast<double>(max_len - cache_len);
  auto linear = (start - L) / static_cast<double>(cache_len);
  auto p = torch::where(L.le(start), torch::zeros_like(L), linear);
  return torch::where(L.gt(static_cast<double>(max_len)), -torch::ones_like(L), p);
}

void RunningMeanStd::Update(const torch::Tensor& x) {
  auto d = x.detach().to(torch::kFloat64).reshape({-1});
  const double n = static_cast<double>(d.numel());
  if (n == 0) return;
  const double bm = d.mean().item<double>();
  const double bv = d.var(/*unbiased=*/false).item<double>();
  const double tot = count_ + n;
  const double delta = bm - mean_;
  const double m2 = var_ * count_ + bv * n + delta * delta * count_ * n / tot;
  mean_ += delta * n / tot;
  var_ = m2 / tot;
  count_ = tot;
}

torch::Tensor RunningMeanStd::Normalize(const torch::Tensor& x, double clip, double eps) const {
  auto y = (x - mean_) / std::sqrt(var_ + eps);
  return clip > 0 ? y.clamp(-clip, clip) : y;
}

}  // namespace rlhf::algo
