#include "trainer/learner.h"

#include <chrono>
#include <cmath>
#include <functional>

#include "absl/strings/str_cat.h"

namespace rlhf::trainer {

const torch::Tensor& MicroBatch::field(const std::string& name) const {
  auto it = fields.find(name);
  TORCH_CHECK(it != fields.end(), "micro-batch lacks field '", name, "'");
  return it->second;
}

void StepMetrics::AddMean(const std::string& name, double sum, double count) {
  auto& m = means_[name];
  m.first += sum;
  m.second += count;
}

void StepMetrics::AddSum(const std::string& name, double value) { sums_[name] += value; }

absl::StatusOr<std::map<std::string, double>> StepMetrics::Reduce(comm::Group& group) const {
  std::vector<double> v;
  std::string names;
  for (const auto& [k, m] : means_) v.push_back(m.first), v.push_back(m.second), names += k + ";";
  for (const auto& [k, s] : sums_) v.push_back(s), names += k + "|";
  // The same names in the same order on every rank, or the sums would mix metrics.
  const double h = static_cast<double>(std::hash<std::string>{}(names) % 1000003);
  v.push_back(h);
  ASSIGN_OR_RETURN(v, group.SumDoubles(std::move(v)));
  if (v.back() != h * group.size()) {
    return absl::InternalError("ranks report different metric names: an objective adds metrics conditionally");
  }
  std::map<std::string, double> out;
  size_t i = 0;
  for (const auto& [k, m] : means_) {
    out[k] = v[i + 1] > 0 ? v[i] / v[i + 1] : 0.0;
    i += 2;
  }
  for (const auto& [k, s] : sums_) out[k] = v[i++];
  return out;
}

Learner::Learner(std::shared_ptr<comm::Group> group, int64_t bucket_bytes)
    : group_(std::move(group)), bucket_bytes_(bucket_bytes) {}

void Learner::AddModel(const std::string& name, model::Transformer net, const OptimConfig& optim,
                       int64_t total_steps) {
  Trained t;
  t.name = name;
  t.net = net;
  t.optim = optim;
  t.total_steps = total_steps;
  std::vector<std::pair<std::string, torch::Tensor>> params;
  for (const auto& p : net->named_parameters(true)) params.emplace_back(p.key(), p.value());
  t.opt = std::make_unique<AdamW>(std::move(params), optim);
  net->train();
  models_.push_back(std::move(t));
}

void Learner::SetTotalSteps(int64_t total_steps) {
  for (auto& m : models_) m.total_steps = total_steps;
}

Learner::Trained* Learner::Find(const std::string& name) {
  for (auto& m : models_) {
    if (m.name == name) return &m;
  }
  return nullptr;
}

absl::StatusOr<StepResult> Learner::Step(const std::vector<MicroBatch>& micro, Objective& objective) {
  if (micro.empty()) return absl::InvalidArgumentError("a step needs at least one micro-batch on every rank");
  const auto start = std::chrono::steady_clock::now();
  StepResult result;
  StepMetrics metrics;
  for (auto& m : models_) m.opt->ZeroGrad();  // in place; gradients of the last step stay until here

  // 1. Global normalisers.
  std::vector<double> totals;
  for (const auto& mb : micro) {
    auto n = objective.Normalizers(mb);
    if (totals.empty()) totals.assign(n.size(), 0.0);
    for (size_t i = 0; i < n.size(); ++i) totals[i] += n[i];
  }
  ASSIGN_OR_RETURN(totals, group_->SumDoubles(std::move(totals)));

  // 2. Forward + backward per micro-batch.
  bool finite = true;
  double tokens = 0;
  RETURN_IF_ERROR(GuardExceptions("training step", [&]() -> absl::Status {
    for (const auto& mb : micro) {
      torch::Tensor loss = objective.Loss(mb, totals, metrics);
      if (!std::isfinite(loss.item<double>())) finite = false;
      loss.backward();
      tokens += mb.attention_mask.defined() ? mb.attention_mask.sum().item<double>() : static_cast<double>(mb.ids.numel());
    }
    return absl::OkStatus();
  }));
  metrics.AddSum("tokens", tokens);

  // 3. Gradients of every model, all-reduced in buckets.
  std::vector<std::vector<torch::Tensor>> grads(models_.size());
  std::vector<torch::Tensor> all;
  for (size_t i = 0; i < models_.size(); ++i) {
    for (const auto& [name, p] : models_[i].opt->params()) {
      if (!p.grad().defined()) p.mutable_grad() = torch::zeros_like(p);  // same buckets on every rank
      grads[i].push_back(p.grad());
      all.push_back(p.grad());
    }
  }
  // 4. The finiteness flag (from each model's local gradient norm), all-reduced before the gradients.
  std::vector<double> norms(models_.size());
  for (size_t i = 0; i < models_.size(); ++i) {
    norms[i] = GradNorm(grads[i]);
    if (!std::isfinite(norms[i])) finite = false;
  }
  ASSIGN_OR_RETURN(auto bad, group_->SumDoubles({finite ? 0.0 : 1.0}));
  if (bad[0] > 0) {
    result.skipped = true;
    ++skipped_;  // the next step zeroes the gradients
  } else {
    RETURN_IF_ERROR(comm::AllReduceBucketed(*group_, all, bucket_bytes_));
    // 5. Clip and step each model.
    for (size_t i = 0; i < models_.size(); ++i) {
      auto& m = models_[i];
      const double norm = group_->size() == 1 ? norms[i] : GradNorm(grads[i]);  // of the summed gradient
      if (!std::isfinite(norm)) return absl::InternalError("gradient norm is not finite after the all-reduce");
      ClipGrads(grads[i], norm, m.optim.max_grad_norm);
      const double lr = LearningRate(m.optim, steps_ - skipped_, m.total_steps);
      m.opt->Step(lr);
      metrics.AddMean("grad_norm/" + m.name, group_->rank() == 0 ? norm : 0.0, group_->rank() == 0 ? 1.0 : 0.0);
      metrics.AddMean("lr/" + m.name, group_->rank() == 0 ? lr : 0.0, group_->rank() == 0 ? 1.0 : 0.0);
    }
  }
  if (result.skipped) {
    for (auto& m : models_) {
      metrics.AddMean("grad_norm/" + m.name, 0, 0);
      metrics.AddMean("lr/" + m.name, 0, 0);
    }
  }
  ++steps_;
  ASSIGN_OR_RETURN(result.metrics, metrics.Reduce(*group_));
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  result.metrics["step_seconds"] = secs;
  result.metrics["tokens_per_second"] = secs > 0 ? result.metrics["tokens"] / secs : 0.0;
  result.metrics["skipped_steps"] = static_cast<double>(skipped_);
  return result;
}

absl::StatusOr<torch::Tensor> GlobalWhiten(comm::Group& group, const torch::Tensor& x, const torch::Tensor& mask) {
  torch::NoGradGuard no_grad;
  auto m = mask.to(x.scalar_type());
  ASSIGN_OR_RETURN(auto s, group.SumDoubles({(x * m).sum().item<double>(), m.sum().item<double>()}));
  const double n = s[1];
  const double mean = n > 0 ? s[0] / n : 0.0;
  ASSIGN_OR_RETURN(auto q, group.SumDoubles({((x - mean).pow(2) * m).sum().item<double>()}));
  double var = n > 0 ? q[0] / n : 0.0;
  var = var * n / std::max(n - 1, 1.0);
  return (x - mean) * (1.0 / std::sqrt(var + 1e-8)) * m;
}

}  // namespace rlhf::trainer
