#include "trainer/algo/preference.h"

namespace rlhf::algo {

namespace F = torch::nn::functional;

namespace {
PreferenceOutput WithMetrics(torch::Tensor loss, const torch::Tensor& rc, const torch::Tensor& rr) {
  PreferenceOutput o;
  o.loss = std::move(loss);
  o.rewards_chosen = rc.detach();
  o.rewards_rejected = rr.detach();
  o.accuracy = o.rewards_chosen.gt(o.rewards_rejected).to(rc.scalar_type()).mean();
  o.margin = (o.rewards_chosen - o.rewards_rejected).mean();
  return o;
}

// -(1-e) logsig(x) - e logsig(-x), per element.
torch::Tensor SmoothedSigmoidLoss(const torch::Tensor& x, double e) {
  return -(1 - e) * F::logsigmoid(x) - e * F::logsigmoid(-x);
}
}  // namespace

torch::Tensor Log1mExp(const torch::Tensor& x) {
  // log(1 - e^x): log(-expm1(x)) near 0, log1p(-exp(x)) far from it.
  return torch::where(x.gt(-0.6931471805599453), torch::log(-torch::expm1(x)), torch::log1p(-torch::exp(x)));
}

absl::StatusOr<DpoLoss> ParseDpoLoss(const std::string& name) {
  if (name == "sigmoid") return DpoLoss::kSigmoid;
  if (name == "ipo") return DpoLoss::kIpo;
  if (name == "hinge") return DpoLoss::kHinge;
  if (name == "robust") return DpoLoss::kRobust;
  return absl::InvalidArgumentError(absl::StrCat("unknown DPO loss '", name, "'; use sigmoid, ipo, hinge or robust"));
}

PreferenceOutput DpoLossFn(const torch::Tensor& lp_c, const torch::Tensor& lp_r, const torch::Tensor& ref_c,
                           const torch::Tensor& ref_r, const DpoOptions& o, const torch::Tensor& len_c,
                           const torch::Tensor& len_r) {
  auto delta_c = lp_c - ref_c.detach();
  auto delta_r = lp_r - ref_r.detach();
  auto D = delta_c - delta_r;
  const double b = o.beta, e = o.label_smoothing;
  torch::Tensor losses;
  switch (o.type) {
    case DpoLoss::kSigmoid: losses = SmoothedSigmoidLoss(b * D, e); break;
    case DpoLoss::kHinge: losses = torch::relu(1 - b * D); break;
    case DpoLoss::kRobust:
      TORCH_CHECK(e < 0.5, "robust DPO needs label_smoothing < 0.5");
      losses = (-(1 - e) * F::logsigmoid(b * D) + e * F::logsigmoid(-b * D)) / (1 - 2 * e);
      break;
    case DpoLoss::kIpo: {
      auto x = D;
      if (o.ipo_length_normalize) {
        TORCH_CHECK(len_c.defined() && len_r.defined(), "IPO with length normalisation needs completion lengths");
        x = delta_c / len_c.to(D.scalar_type()) - delta_r / len_r.to(D.scalar_type());
      }
      losses = (x - 1 / (2 * b)).pow(2);
      break;
    }
  }
  return WithMetrics(losses.mean(), b * delta_c, b * delta_r);
}

PreferenceOutput KtoLossFn(const torch::Tensor& lp, const torch::Tensor& ref, const torch::Tensor& desirable,
                           const torch::Tensor& kl_lp, const torch::Tensor& kl_ref, const KtoOptions& o) {
  auto z0 = (kl_lp - kl_ref).mean().clamp_min(0).detach();
  auto ratio = lp - ref.detach();
  auto d = desirable.to(torch::kBool);
  auto loss_d = 1 - torch::sigmoid(o.beta * (ratio - z0));
  auto loss_u = 1 - torch::sigmoid(o.beta * (z0 - ratio));
  auto losses = torch::where(d, o.desirable_weight * loss_d, o.undesirable_weight * loss_u);
  PreferenceOutput out;
  out.loss = losses.mean();
  auto rewards = (o.beta * ratio).detach();
  out.rewards_chosen = rewards.masked_select(d);
  out.rewards_rejected = rewards.masked_select(d.logical_not());
  auto mc = out.rewards_chosen.numel() ? out.rewards_chosen.mean() : torch::zeros({}, rewards.options());
  auto mr = out.rewards_rejected.numel() ? out.rewards_rejected.mean() : torch::zeros({}, rewards.options());
  out.margin = mc - mr;
  out.accuracy = mc.gt(mr).to(rewards.scalar_type());
  return out;
}

PreferenceOutput OrpoLossFn(const torch::Tensor& avg_c, const torch::Tensor& avg_r, const torch::Tensor& nll_chosen,
                            double beta) {
  auto log_odds = (avg_c - avg_r) - (Log1mExp(avg_c) - Log1mExp(avg_r));
  auto loss = nll_chosen.mean() - beta * F::logsigmoid(log_odds).mean();
  return WithMetrics(loss, beta * avg_c, beta * avg_r);
}

PreferenceOutput SimpoLossFn(const torch::Tensor& avg_c, const torch::Tensor& avg_r, double beta, double gamma,
                             double label_smoothing) {
  auto x = beta * (avg_c - avg_r) - gamma;
  return WithMetrics(SmoothedSigmoidLoss(x, label_smoothing).mean(), beta * avg_c, beta * avg_r);
}

PreferenceOutput CpoLossFn(const torch::Tensor& lp_c, const torch::Tensor& lp_r, const torch::Tensor& nll_chosen,
                           double beta, double alpha, double label_smoothing) {
  auto loss = SmoothedSigmoidLoss(beta * (lp_c - lp_r), label_smoothing).mean() + alpha * nll_chosen.mean();
  return WithMetrics(loss, beta * lp_c, beta * lp_r);
}

torch::Tensor RrhfLossFn(const torch::Tensor& p, const torch::Tensor& rewards, const torch::Tensor& nll_best,
                         double sft_weight) {
  TORCH_CHECK(p.dim() == 2 && p.sizes() == rewards.sizes(), "RRHF: p and rewards must be [B, K]");
  // pairs (i, j) with r_i < r_j: penalise p_i > p_j.
  auto diff = p.unsqueeze(2) - p.unsqueeze(1);                                 // [B, K, K]: p_i - p_j
  auto worse = rewards.unsqueeze(2).lt(rewards.unsqueeze(1)).to(p.scalar_type());  // r_i < r_j
  auto rank = (torch::relu(diff) * worse).sum({1, 2}).mean();
  return rank + sft_weight * nll_best.mean();
}

PreferenceOutput BradleyTerryLossFn(const torch::Tensor& r_c, const torch::Tensor& r_r, const torch::Tensor& margin,
                                    double centering) {
  auto x = r_c - r_r;
  if (margin.defined()) x = x - margin.to(x.scalar_type());
  auto loss = -F::logsigmoid(x).mean();
  if (centering > 0) loss = loss + centering * (r_c + r_r).pow(2).mean();
  return WithMetrics(loss, r_c, r_r);
}

}  // namespace rlhf::algo
