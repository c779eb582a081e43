#include "trainer/objectives.h"

namespace rlhf::trainer {

namespace {
model::ForwardOptions Options(const MicroBatch& mb) {
  model::ForwardOptions o;
  o.attention_mask = mb.attention_mask;
  o.position_ids = mb.position_ids;
  o.segment_ids = mb.segment_ids;
  return o;
}
torch::Tensor Targets(const MicroBatch& mb) { return mb.target_mask.slice(1, 1).to(torch::kFloat32); }  // [B, T-1]
double D(const torch::Tensor& t) { return t.item<double>(); }
}  // namespace

model::TokenStats RowTokenStats(model::TransformerImpl& net, const MicroBatch& mb, double temperature,
                                bool want_entropy) {
  auto hidden = net.Hidden(mb.ids, Options(mb));                    // [B, T, C]
  return net.TokenLogProbs(hidden.slice(1, 0, -1), mb.ids.slice(1, 1), temperature, want_entropy);  // [B, T-1]
}

torch::Tensor RowValues(model::TransformerImpl& critic, const MicroBatch& mb) {
  auto hidden = critic.Hidden(mb.ids, Options(mb));                 // [B, T, C]
  return critic.Scores(hidden.slice(1, 0, -1)).squeeze(-1).to(torch::kFloat32);  // [B, T-1]
}

// ---- SFT -------------------------------------------------------------------------------------------
std::vector<double> SftObjective::Normalizers(const MicroBatch& mb) const { return {D(Targets(mb).sum())}; }

torch::Tensor SftObjective::Loss(const MicroBatch& mb, const std::vector<double>& totals, StepMetrics& metrics) {
  auto m = Targets(mb);
  auto stats = RowTokenStats(*policy_, mb, 1.0, false);
  auto nll = -(stats.logprobs * m).sum();
  const double n = std::max(totals[0], 1.0);
  auto loss = nll / n;
  metrics.AddSum("loss", D(loss.detach()));
  metrics.AddSum("target_tokens", D(m.sum()));
  return loss;
}

// ---- reward model -------------------------------------------------------------------------------------
std::vector<double> RewardObjective::Normalizers(const MicroBatch& mb) const {
  return {static_cast<double>(mb.rows() / 2)};
}

torch::Tensor RewardObjective::Loss(const MicroBatch& mb, const std::vector<double>& totals, StepMetrics& metrics) {
  const int64_t p = mb.rows() / 2;
  auto hidden = rm_->Hidden(mb.ids, Options(mb));
  auto r = rm_->SequenceScores(hidden, mb.attention_mask).to(torch::kFloat32);  // [2P]
  auto rc = r.slice(0, 0, p), rr = r.slice(0, p);
  auto it = mb.fields.find("margin");
  auto out = algo::BradleyTerryLossFn(rc, rr, it == mb.fields.end() ? torch::Tensor() : it->second, centering_);
  auto loss = out.loss * (static_cast<double>(p) / std::max(totals[0], 1.0));
  metrics.AddSum("loss", D(loss.detach()));
  metrics.AddMean("accuracy", D(out.accuracy) * p, p);
  metrics.AddMean("margin", D(out.margin) * p, p);
  metrics.AddMean("reward_chosen", D(rc.detach().sum()), p);
  metrics.AddMean("reward_rejected", D(rr.detach().sum()), p);
  return loss;
}

// ---- DPO family ------------------------------------------------------------------------------------------
std::vector<double> PairObjective::Normalizers(const MicroBatch& mb) const { return {static_cast<double>(mb.rows() / 2)}; }

torch::Tensor PairObjective::Loss(const MicroBatch& mb, const std::vector<double>& totals, StepMetrics& metrics) {
  const int64_t p = mb.rows() / 2;
  const auto& c = config_;
  auto m = Targets(mb);
  auto stats = RowTokenStats(*policy_, mb, 1.0, false);
  auto seq = (stats.logprobs * m).sum(1);  // [2P]
  auto len = m.sum(1).clamp_min(1);
  auto avg = seq / len;
  auto seq_c = seq.slice(0, 0, p), seq_r = seq.slice(0, p);
  auto avg_c = avg.slice(0, 0, p), avg_r = avg.slice(0, p);
  auto nll_c = -avg_c;
  algo::PreferenceOutput out;
  switch (c.loss) {
    case PairLoss::kDpo:
      out = algo::DpoLossFn(seq_c, seq_r, mb.field("ref_chosen"), mb.field("ref_rejected"), c.dpo, len.slice(0, 0, p),
                            len.slice(0, p));
      if (c.rpo_alpha > 0) out.loss = out.loss + c.rpo_alpha * nll_c.mean();  // RPO
      break;
    case PairLoss::kOrpo:
      out = algo::OrpoLossFn(avg_c, avg_r, nll_c, c.beta);
      break;
    case PairLoss::kSimpo:
      out = algo::SimpoLossFn(avg_c, avg_r, c.beta, c.gamma, c.label_smoothing);
      break;
    case PairLoss::kCpo:
      out = algo::CpoLossFn(seq_c, seq_r, nll_c, c.beta, c.alpha, c.label_smoothing);
      break;
    case PairLoss::kRrhf: {
      auto scores = torch::stack({avg_c, avg_r}, 1);  // [P, 2]
      auto rewards = torch::tensor({1.f, 0.f}).expand({p, 2});
      out.loss = algo::RrhfLossFn(scores, rewards, nll_c, c.sft_weight);
      out.rewards_chosen = avg_c.detach();
      out.rewards_rejected = avg_r.detach();
      out.accuracy = avg_c.gt(avg_r).to(torch::kFloat32).mean().detach();
      out.margin = (avg_c - avg_r).mean().detach();
      break;
    }
  }
  auto loss = out.loss * (static_cast<double>(p) / std::max(totals[0], 1.0));
  metrics.AddSum("loss", D(loss.detach()));
  metrics.AddMean("accuracy", D(out.accuracy) * p, p);
  metrics.AddMean("margin", D(out.margin) * p, p);
  metrics.AddMean("reward_chosen", D(out.rewards_chosen.sum()), p);
  metrics.AddMean("reward_rejected", D(out.rewards_rejected.sum()), p);
  return loss;
}

std::vector<double> KtoObjective::Normalizers(const MicroBatch& mb) const { return {static_cast<double>(mb.rows())}; }

torch::Tensor KtoObjective::Loss(const MicroBatch& mb, const std::vector<double>& totals, StepMetrics& metrics) {
  const int64_t b = mb.rows();
  auto m = Targets(mb);
  auto seq = (RowTokenStats(*policy_, mb, 1.0, false).logprobs * m).sum(1);  // [B]
  auto z0 = mb.field("z0").to(torch::kFloat32);
  auto out = algo::KtoLossFn(seq, mb.field("ref"), mb.field("desirable"), z0, torch::zeros_like(z0), options_);
  auto loss = out.loss * (static_cast<double>(b) / std::max(totals[0], 1.0));
  metrics.AddSum("loss", D(loss.detach()));
  metrics.AddMean("reward_chosen", D(out.rewards_chosen.sum()), static_cast<double>(out.rewards_chosen.numel()));
  metrics.AddMean("reward_rejected", D(out.rewards_rejected.sum()), static_cast<double>(out.rewards_rejected.numel()));
  metrics.AddMean("kl", D(z0.clamp_min(0).sum()) * static_cast<double>(b), static_cast<double>(b));
  return loss;
}

// ---- PPO family ------------------------------------------------------------------------------------------
std::vector<double> PpoObjective::Normalizers(const MicroBatch& mb) const {
  auto m = Targets(mb);
  return {algo::LocalDenominator(m, config_.aggregation, config_.norm_length), D(m.sum())};
}

torch::Tensor PpoObjective::Loss(const MicroBatch& mb, const std::vector<double>& totals, StepMetrics& metrics) {
  const auto& c = config_;
  auto m = Targets(mb);                                   // [B, T-1]
  auto shifted = [&](const char* name) { return mb.field(name).slice(1, 1).to(torch::kFloat32); };
  const double denom = totals[0], ntok = std::max(totals[1], 1.0);
  const double local_tok = D(m.sum());

  auto stats = RowTokenStats(*policy_, mb, c.temperature, /*want_entropy=*/true);
  auto old = shifted("old_logprobs");
  auto adv = shifted("advantages");
  torch::Tensor behaviour;
  if (c.policy.tis_cap > 0) behaviour = shifted("behaviour");
  auto pg = algo::PolicyLoss(stats.logprobs, old, adv, m, c.policy, c.aggregation, denom, behaviour);
  torch::Tensor loss = pg.loss;
  metrics.AddSum("pg_loss", D(pg.loss.detach()));
  metrics.AddMean("clip_fraction", D(pg.clip_fraction) * local_tok, local_tok);
  metrics.AddMean("approx_kl", D(pg.approx_kl) * local_tok, local_tok);
  metrics.AddMean("ratio_mean", D(pg.ratio_mean) * local_tok, local_tok);
  if (pg.tis_weight_mean.defined()) {
    metrics.AddMean("tis_weight_mean", D(pg.tis_weight_mean) * local_tok, local_tok);
    metrics.AddMean("tis_truncated_fraction", D(pg.tis_truncated_fraction) * local_tok, local_tok);
  }
  metrics.AddMean("entropy", D((stats.entropy.detach() * m).sum()), local_tok);

  if (c.ent_coef > 0) {
    auto ent = algo::EntropyBonus(stats.entropy, m, c.ent_coef, c.aggregation, denom);
    loss = loss + ent;
    metrics.AddSum("entropy_loss", D(ent.detach()));
  }
  if (c.kl_in_loss) {
    auto ref = shifted("ref_logprobs");
    auto kl = algo::KlLoss(stats.logprobs, ref, m, c.kl_beta, c.kl, c.aggregation, denom);
    loss = loss + kl;
    metrics.AddSum("kl_loss", D(kl.detach()));
  }
  if (!critic_.is_empty()) {
    auto values = RowValues(*critic_, mb);
    auto vf = algo::ValueLoss(values, shifted("old_values"), shifted("returns"), m, c.value_clip, c.vclip,
                              c.aggregation, denom, adv);
    loss = loss + c.vf_coef * vf.loss;
    metrics.AddSum("vf_loss", D(vf.loss.detach()));
    metrics.AddMean("vf_clip_fraction", D(vf.clip_fraction) * local_tok, local_tok);
  }
  (void)ntok;
  metrics.AddSum("loss", D(loss.detach()));
  return loss;
}

}  // namespace rlhf::trainer
