#include "trainer/optim.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/match.h"

namespace rlhf::trainer {

void OptimConfig::AddTo(config::Section<OptimConfig>& s) {
  using O = OptimConfig;
  s.Add("lr", &O::lr, "peak learning rate", config::AtLeast(0));
  s.Add("weight_decay", &O::weight_decay, "AdamW decoupled weight decay (not applied to norms and biases)",
        config::AtLeast(0));
  s.Add("beta1", &O::beta1, "AdamW beta1", config::InRange(0, 1));
  s.Add("beta2", &O::beta2, "AdamW beta2", config::InRange(0, 1));
  s.Add("eps", &O::eps, "AdamW epsilon", config::AtLeast(0));
  s.Add("warmup_steps", &O::warmup_steps, "linear warmup from 0 over this many optimizer steps", config::AtLeast(0));
  s.Add("min_lr_ratio", &O::min_lr_ratio, "the cosine schedule ends at lr * min_lr_ratio", config::InRange(0, 1));
  s.AddChoice("schedule", &O::schedule, {{"cosine", O::Schedule::kCosine}, {"constant", O::Schedule::kConstant}},
              "after warmup: cosine | constant");
  s.Add("max_grad_norm", &O::max_grad_norm, "clip the global gradient norm to this; 0 = no clipping",
        config::AtLeast(0));
}

double LearningRate(const OptimConfig& c, int64_t step, int64_t total_steps) {
  if (c.warmup_steps > 0 && step < c.warmup_steps) {
    return c.lr * static_cast<double>(step + 1) / static_cast<double>(c.warmup_steps);
  }
  if (c.schedule == OptimConfig::Schedule::kConstant || total_steps <= c.warmup_steps) return c.lr;
  // HF's cosine schedule: progress 0 at the end of warmup, 1 one step after the last.
  double progress = static_cast<double>(step - c.warmup_steps) / static_cast<double>(total_steps - c.warmup_steps);
  progress = std::min(1.0, std::max(0.0, progress));
  double cosine = 0.5 * (1.0 + std::cos(M_PI * progress));
  return c.lr * (c.min_lr_ratio + (1.0 - c.min_lr_ratio) * cosine);
}

bool AdamW::DecayApplies(const std::string& name) {
  return !(absl::StrContains(name, "norm") || absl::EndsWith(name, ".bias"));
}

AdamW::AdamW(std::vector<std::pair<std::string, torch::Tensor>> params, const OptimConfig& config)
    : config_(config) {
  for (auto& [name, p] : params) {
    if (!p.requires_grad()) continue;
    params_.emplace_back(name, p);
    // Moments in f32 whatever the parameter dtype.
    exp_avg_.push_back(torch::zeros(p.sizes(), p.options().dtype(torch::kFloat32)));
    exp_avg_sq_.push_back(torch::zeros(p.sizes(), p.options().dtype(torch::kFloat32)));
  }
}

void AdamW::ZeroGrad() {
  // In place: the gradient buffers are reused by the next backward (no fresh pages every step).
  torch::NoGradGuard no_grad;
  for (auto& [name, p] : params_) {
    if (p.grad().defined()) p.mutable_grad().zero_();
  }
}

void AdamW::Step(double lr) {
  torch::NoGradGuard no_grad;
  ++step_;
  const double bc1 = 1.0 - std::pow(config_.beta1, static_cast<double>(step_));
  const double bc2 = 1.0 - std::pow(config_.beta2, static_cast<double>(step_));
  const double step_size = lr / bc1;
  const double bc2_sqrt = std::sqrt(bc2);
  for (size_t i = 0; i < params_.size(); ++i) {
    auto& [name, p] = params_[i];
    if (!p.grad().defined()) continue;
    auto g = p.grad().to(torch::kFloat32);
    auto& m = exp_avg_[i];
    auto& v = exp_avg_sq_[i];
    // torch.optim.AdamW (single-tensor path): decay, moments, bias-corrected step.
    auto w = p.dtype() == torch::kFloat32 ? p : p.to(torch::kFloat32);
    if (config_.weight_decay > 0 && DecayApplies(name)) w.mul_(1.0 - lr * config_.weight_decay);
    m.lerp_(g, 1.0 - config_.beta1);
    v.mul_(config_.beta2).addcmul_(g, g, 1.0 - config_.beta2);
    auto denom = (v.sqrt() / bc2_sqrt).add_(config_.eps);
    w.addcdiv_(m, denom, -step_size);
    if (!w.is_same(p)) p.copy_(w);
  }
}

std::map<std::string, torch::Tensor> AdamW::StateTensors() const {
  std::map<std::string, torch::Tensor> out;
  for (size_t i = 0; i < params_.size(); ++i) {
    out[params_[i].first + ".exp_avg"] = exp_avg_[i];
    out[params_[i].first + ".exp_avg_sq"] = exp_avg_sq_[i];
  }
  return out;
}

absl::Status AdamW::LoadState(const std::map<std::string, torch::Tensor>& tensors, int64_t steps) {
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < params_.size(); ++i) {
    for (auto* pair : {&exp_avg_, &exp_avg_sq_}) {
      std::string key = params_[i].first + (pair == &exp_avg_ ? ".exp_avg" : ".exp_avg_sq");
      auto it = tensors.find(key);
      if (it == tensors.end()) return absl::DataLossError(absl::StrCat("optimizer state lacks ", key));
      if (it->second.sizes() != (*pair)[i].sizes()) {
        return absl::DataLossError(absl::StrCat("optimizer state ", key, " has the wrong shape"));
      }
      (*pair)[i].copy_(it->second);
    }
  }
  step_ = steps;
  return absl::OkStatus();
}

double GradNorm(const std::vector<torch::Tensor>& grads) {
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> norms;
  for (const auto& g : grads) {
    if (g.defined()) norms.push_back((g.scalar_type() == torch::kFloat32 ? g : g.to(torch::kFloat32)).norm().reshape({1}));
  }
  if (norms.empty()) return 0.0;
  // Non-finite entries make the norm non-finite: the caller's finiteness test.
  return torch::cat(norms).to(torch::kFloat64).norm().item<double>();
}

void ClipGrads(const std::vector<torch::Tensor>& grads, double norm, double max_norm) {
  if (max_norm <= 0) return;
  const double coef = max_norm / (norm + 1e-6);
  if (coef >= 1.0) return;
  torch::NoGradGuard no_grad;
  for (const auto& g : grads) {
    if (g.defined()) g.mul_(coef);
  }
}

}  // namespace rlhf::trainer
