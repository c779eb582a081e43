// The online preference stages, on the step loop of the rl.* keys with another update than PPO's.
#include <spdlog/spdlog.h>

#include <filesystem>

#include "trainer/rl_update.h"
#include "trainer/algo/preference.h"
#include "trainer/pipeline/stage.h"

namespace rlhf::trainer {

namespace fs = std::filesystem;

// online_dpo: G samples per prompt from the current policy, scored; chosen = the best, rejected = the worst
// (groups with equal rewards are filtered), DPO loss against the frozen reference (rl.reference, default the
// starting policy). rft: N samples per prompt; the best one is kept when its reward reaches rft.threshold,
// and the policy takes one SFT step on the kept samples. Both on the online loop of the rl.* keys.
absl::Status RunOnlinePreference(Pipeline& p, int64_t index, const std::string& stage) {
  const auto sc = RlStageConfig::Spec().Read(*p.config);
  const auto rc = RlSection().Read(*p.config);
  const auto po = OptimSection("rl.optim").Read(*p.config);
  const auto data_cfg = DataSection("rl").Read(*p.config);
  const bool dpo = stage == "online_dpo";
  const auto oc = dpo ? OnlinePrefConfig::Dpo().Read(*p.config) : OnlinePrefConfig::Rft().Read(*p.config);
  if (data_cfg.path.empty()) return absl::InvalidArgumentError(absl::StrCat(stage, " is online: set rl.data.path"));
  if (dpo && rc.group_size < 2) return absl::InvalidArgumentError("online_dpo needs rl.group_size >= 2 (a pair per prompt)");
  if (sc.rollout_batch_size % p.group->size() != 0) {
    return absl::InvalidArgumentError("rl.rollout_batch_size must be a multiple of the number of ranks");
  }
  ASSIGN_OR_RETURN(auto op, LoadOnlinePrompts(sc, data_cfg));
  const data::Dataset& ds = op.data;
  const int64_t total = op.total_steps;
  const std::string start = sc.policy.empty() ? p.policy : sc.policy;
  ASSIGN_OR_RETURN(auto tools, text::ModelText::Load(p.tokenizer_dir));
  if (LearnsElsewhere(p)) {  // another process learns: no model here
    OnlineStage s{stage, index, sc, rc.group_size, dpo, &ds, total, start, &tools};
    return RunOnlineStage(p, s);
  }
  ASSIGN_OR_RETURN(auto policy, LoadForTraining(start, std::nullopt, p.seed));
  model::Transformer reference{nullptr};
  if (dpo) {
    ASSIGN_OR_RETURN(reference, LoadFrozen(sc.reference.empty() ? start : sc.reference));
  }
  const int32_t pad = tools.pad;
  Learner learner(p.group, p.bucket_bytes);
  learner.AddModel("policy", policy, po, 1);
  learner.SetTotalSteps(total);
  std::unique_ptr<Objective> objective;
  if (dpo) {
    PairLossConfig c;
    c.loss = PairLoss::kDpo;
    c.dpo.type = oc.loss_type;
    c.dpo.beta = oc.beta;
    objective = std::make_unique<PairObjective>(policy, c);
  } else {
    objective = std::make_unique<SftObjective>(policy);
  }
  auto row = [](const Sample& s, bool trained) {
    TokenSeq q;
    for (int32_t id : s.prompt_ids()) q.ids.push_back(id), q.target.push_back(0);
    for (int32_t id : s.completion_ids()) q.ids.push_back(id), q.target.push_back(trained ? 1 : 0);
    return q;
  };
  const int64_t g = rc.group_size, micro = rc.micro_batch_size;
  OnlineStage s{stage, index, sc, g, dpo, &ds, total, start, &tools, policy.get(), &learner};
  s.trainer.check = [&](const std::vector<Sample>& batch) {
    return CheckSamples(batch, g, policy->config().vocab_size, policy->config().max_position_embeddings);
  };
  s.trainer.step = [&](const std::vector<Sample>& mine, uint64_t) -> absl::StatusOr<std::map<std::string, double>> {
    RETURN_IF_ERROR(s.trainer.check(mine));
    std::vector<MicroBatch> mbs;
    double kept = 0, groups = static_cast<double>(mine.size()) / static_cast<double>(g), reward_sum = 0;
    for (const auto& s : mine) reward_sum += s.reward();
    std::vector<TokenSeq> chosen, rejected, rows;
    for (size_t k = 0; k + static_cast<size_t>(g) <= mine.size(); k += static_cast<size_t>(g)) {
      size_t best = k, worst = k;
      for (size_t i = k; i < k + static_cast<size_t>(g); ++i) {
        if (mine[i].reward() > mine[best].reward()) best = i;
        if (mine[i].reward() < mine[worst].reward()) worst = i;
      }
      if (dpo) {
        const double gap = mine[best].reward() - mine[worst].reward();
        if (!(gap > 0) || gap < oc.min_margin) continue;
        chosen.push_back(row(mine[best], true)), rejected.push_back(row(mine[worst], true));
        kept += 1;
      } else if (mine[best].reward() >= oc.threshold) {
        rows.push_back(row(mine[best], true));
        kept += 1;
      }
    }
    ASSIGN_OR_RETURN(auto tot, p.group->SumDoubles({kept, groups, reward_sum, static_cast<double>(mine.size())}));
    std::map<std::string, double> m;
    m["kept_fraction"] = tot[1] > 0 ? tot[0] / tot[1] : 0.0;
    m["reward_mean"] = tot[3] > 0 ? tot[2] / tot[3] : 0.0;
    m["samples"] = tot[3];
    if (tot[0] == 0) return m;  // nothing to learn from on any rank: no step
    if (dpo) {
      std::vector<const TokenSeq*> all;
      for (const auto* v : {&chosen, &rejected}) {
        for (const auto& x : *v) all.push_back(&x);
      }
      std::vector<float> ref;
      RETURN_IF_ERROR(GuardExceptions("online dpo reference", [&]() -> absl::Status {
        ref = SequenceLogProbs(*reference, all, micro, pad);
        return absl::OkStatus();
      }));
      for (size_t i = 0; i < chosen.size(); i += static_cast<size_t>(micro)) {
        const size_t end = std::min(chosen.size(), i + static_cast<size_t>(micro));
        std::vector<const TokenSeq*> c, r;
        std::vector<float> rcs, rrs;
        for (size_t j = i; j < end; ++j) {
          c.push_back(&chosen[j]), r.push_back(&rejected[j]);
          rcs.push_back(ref[j]), rrs.push_back(ref[chosen.size() + j]);
        }
        auto mb = PairRows(c, r, pad);
        mb.fields["ref_chosen"] = torch::tensor(rcs), mb.fields["ref_rejected"] = torch::tensor(rrs);
        mbs.push_back(std::move(mb));
      }
    } else {
      for (size_t i = 0; i < rows.size(); i += static_cast<size_t>(micro)) {
        std::vector<const TokenSeq*> part;
        for (size_t j = i; j < std::min(rows.size(), i + static_cast<size_t>(micro)); ++j) part.push_back(&rows[j]);
        mbs.push_back(PadRows(part, pad));
      }
    }
    if (mbs.empty()) {
      // This rank kept nothing but others did: it joins the step with a row that trains no token.
      if (dpo) {
        auto q = row(mine[0], false);
        std::vector<const TokenSeq*> one = {&q};
        auto mb = PairRows(one, one, pad);
        mb.fields["ref_chosen"] = torch::zeros({1}), mb.fields["ref_rejected"] = torch::zeros({1});
        mbs.push_back(std::move(mb));
      } else {
        auto q = row(mine[0], false);
        mbs.push_back(PadRows({&q}, pad));
      }
    }
    ASSIGN_OR_RETURN(auto r, learner.Step(mbs, *objective));
    for (const auto& [k, v] : r.metrics) m[k] = v;
    return m;
  };
  if (p.rank0()) spdlog::info("{}: about {} steps of {} prompts x {} samples", stage, total, sc.rollout_batch_size, g);
  s.trainer.finish = [&]() -> absl::StatusOr<std::string> {
    const std::string model = (fs::path(StageDir(p, index, stage)) / "model").string();
    RETURN_IF_ERROR(SaveStageModel(p, *policy, model));
    return model;
  };
  return RunOnlineStage(p, s);
}

}  // namespace rlhf::trainer
