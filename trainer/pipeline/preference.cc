// The stages on preference data: reward_model (Bradley-Terry, optional margin and centring, a frozen
// backbone), and the DPO family (dpo with its loss types, orpo, simpo, cpo, rrhf) on preference pairs, kto
// on unpaired completions (kto data, or pairs split into a desirable and an undesirable completion).
// Reference log-probs (dpo, kto) are computed once per dataset and cached in the stage directory.
#include <spdlog/spdlog.h>

#include <filesystem>
#include <numeric>

#include "trainer/algo/preference.h"
#include "trainer/pipeline/stage.h"

namespace rlhf::trainer {

namespace fs = std::filesystem;

absl::Status RunPreference(Pipeline& p, int64_t index, const std::string& stage) {
  const bool rm = stage == "reward_model", kto = stage == "kto";
  const bool with_ref = stage == "dpo" || kto;
  // One set of fields for both kinds of stage: the reward model's keys, or the preference loss's.
  PreferenceConfig cfg;
  RewardModelConfig rmc;
  if (rm) {
    rmc = RewardModelConfig::Spec().Read(*p.config);
    static_cast<OfflineConfig&>(cfg) = rmc;
  } else {
    cfg = PreferenceConfig::Spec(stage).Read(*p.config);
  }
  const auto dc = DataSection(stage).Read(*p.config);
  const auto oc = OptimSection(stage + ".optim").Read(*p.config);
  const std::string start = cfg.model.empty() ? p.policy : cfg.model;
  {
    MemoryPlan plan;
    plan.frozen_models = stage == "dpo" || stage == "kto" ? 1 : 0;  // the reference, while its log-probs are computed
    plan.micro_batch_rows = rm || stage != "kto" ? 2 * cfg.micro_batch_size : cfg.micro_batch_size;
    plan.tokens_per_row = cfg.max_length;
    RETURN_IF_ERROR(CheckMemory(p, stage, start, plan));
  }
  ASSIGN_OR_RETURN(auto net, LoadForTraining(start, rm ? std::optional<model::Head>(model::Head::kSequenceClassification)
                                                       : std::nullopt,
                                             p.seed));
  if (rm && rmc.freeze_backbone) {
    for (auto& prm : net->named_parameters(true)) {
      if (prm.key().rfind("score.", 0) != 0) prm.value().set_requires_grad(false);
    }
  }
  ASSIGN_OR_RETURN(auto tools, text::ModelText::Load(p.tokenizer_dir));
  ASSIGN_OR_RETURN(auto ds, LoadData(dc, stage, kto ? std::initializer_list<data::Kind>{data::Kind::kKto, data::Kind::kPreference}
                                                    : std::initializer_list<data::Kind>{data::Kind::kPreference}));
  std::vector<size_t> every(ds.examples().size());
  std::iota(every.begin(), every.end(), 0);
  absl::Status st;
  // Rows: pairs (chosen i, rejected i) for the paired losses; for kto the completions of each example with
  // their labels, rows_of[i] naming example i's rows.
  std::vector<TokenSeq> chosen, rejected, rows;
  std::vector<float> desirable;
  std::vector<std::vector<size_t>> rows_of(every.size());
  if (!kto || ds.kind() == data::Kind::kPreference) {
    chosen = Tokenize(ds, every, tools, cfg.max_length, &data::Example::chosen, &st);
    RETURN_IF_ERROR(st);
    rejected = Tokenize(ds, every, tools, cfg.max_length, &data::Example::rejected, &st);
    RETURN_IF_ERROR(st);
  }
  if (kto) {
    if (ds.kind() == data::Kind::kPreference) {
      for (size_t i = 0; i < every.size(); ++i) {
        rows_of[i] = {rows.size(), rows.size() + 1};
        rows.push_back(std::move(chosen[i])), desirable.push_back(1.f);
        rows.push_back(std::move(rejected[i])), desirable.push_back(0.f);
      }
      chosen.clear(), rejected.clear();
    } else {
      rows = Tokenize(ds, every, tools, cfg.max_length, &data::Example::completion, &st);
      RETURN_IF_ERROR(st);
      for (size_t i = 0; i < every.size(); ++i) {
        rows_of[i] = {i};
        desirable.push_back(ds.examples()[i].label.value_or(false) ? 1.f : 0.f);
      }
    }
  }
  std::vector<float> margins(every.size(), 0.f);
  if (rm && !rmc.margin_field.empty()) {
    for (size_t i = 0; i < every.size(); ++i) {
      const auto& ex = ds.examples()[i];
      if (!ex.extra.contains(rmc.margin_field) || !ex.extra[rmc.margin_field].is_number()) {
        return absl::InvalidArgumentError(absl::StrCat(dc.path, ":", ex.line, ": no numeric '", rmc.margin_field, "' field"));
      }
      margins[i] = ex.extra[rmc.margin_field].get<float>();
    }
  }
  // Reference sequence log-probs of every row, computed once (and cached) with the frozen reference.
  const std::string ref_dir = cfg.reference.empty() ? start : cfg.reference;
  // KTO's reference point needs the reference on the mismatched pairs of every batch: kept loaded.
  model::Transformer reference{nullptr};
  if (kto) {
    ASSIGN_OR_RETURN(reference, LoadFrozen(ref_dir));
  }
  std::vector<float> ref_c, ref_r, ref_rows;
  if (with_ref) {
    std::vector<const TokenSeq*> seqs;
    for (const auto* v : {&chosen, &rejected, &rows}) {
      for (const auto& x : *v) seqs.push_back(&x);
    }
    ASSIGN_OR_RETURN(auto all, ReferenceLogProbs(p, index, stage, ref_dir, reference, cfg.reference_cache, seqs,
                                                 cfg.micro_batch_size * 2, tools.pad));
    auto at = all.begin();
    ref_c.assign(at, at + static_cast<std::ptrdiff_t>(chosen.size())), at += static_cast<std::ptrdiff_t>(chosen.size());
    ref_r.assign(at, at + static_cast<std::ptrdiff_t>(rejected.size())), at += static_cast<std::ptrdiff_t>(rejected.size());
    ref_rows.assign(at, all.end());
  }

  auto train_idx = ds.Indices(data::Split::kTrain), held_idx = ds.Indices(data::Split::kHeldout);
  Learner learner(p.group, p.bucket_bytes);
  const std::string model_name = rm ? "reward_model" : "policy";
  learner.AddModel(model_name, net, oc, 1);
  std::unique_ptr<Objective> objective;
  if (rm) {
    objective = std::make_unique<RewardObjective>(net, rmc.centering);
  } else if (kto) {
    algo::KtoOptions o;
    o.beta = cfg.beta;
    o.desirable_weight = cfg.desirable_weight;
    o.undesirable_weight = cfg.undesirable_weight;
    objective = std::make_unique<KtoObjective>(net, o);
  } else {
    PairLossConfig c;
    c.loss = stage == "dpo" ? PairLoss::kDpo : stage == "orpo" ? PairLoss::kOrpo : stage == "simpo" ? PairLoss::kSimpo
           : stage == "cpo" ? PairLoss::kCpo : PairLoss::kRrhf;
    c.dpo.type = cfg.loss_type;
    c.dpo.beta = cfg.beta;
    c.dpo.label_smoothing = cfg.label_smoothing;
    c.dpo.ipo_length_normalize = cfg.ipo_length_normalize;
    c.beta = cfg.beta;
    c.gamma = cfg.gamma;
    c.alpha = cfg.alpha;
    if (stage == "dpo") c.rpo_alpha = cfg.alpha;
    c.label_smoothing = cfg.label_smoothing;
    c.sft_weight = cfg.sft_weight;
    objective = std::make_unique<PairObjective>(net, c);
  }
  // KTO: z0 = max(0, mean over the batch (all ranks) of policy - reference log-probs of mismatched pairs),
  // each row's prompt with the completion of the same row of the next example, under the current policy
  // and without gradient. (Pairs give two rows per example: the next row has the same prompt.)
  const size_t rows_per_example = ds.kind() == data::Kind::kPreference ? 2 : 1;
  auto kto_z0 = [&](const std::vector<size_t>& row_idx) -> absl::StatusOr<double> {
    std::vector<TokenSeq> mm;
    const auto partner = MismatchPartners(row_idx.size(), rows_per_example);
    for (size_t k = 0; k < row_idx.size(); ++k) mm.push_back(PromptWithCompletion(rows[row_idx[k]], rows[row_idx[partner[k]]]));
    std::vector<const TokenSeq*> ptr;
    for (const auto& x : mm) ptr.push_back(&x);
    double sum = 0;
    RETURN_IF_ERROR(GuardExceptions("kto reference point", [&]() -> absl::Status {
      auto lp = SequenceLogProbs(*net, ptr, cfg.micro_batch_size, tools.pad);
      auto ref = SequenceLogProbs(*reference, ptr, cfg.micro_batch_size, tools.pad);
      for (size_t k = 0; k < lp.size(); ++k) sum += static_cast<double>(lp[k]) - ref[k];
      return absl::OkStatus();
    }));
    ASSIGN_OR_RETURN(auto tot, p.group->SumDoubles({sum, static_cast<double>(ptr.size())}));
    return tot[1] > 0 ? std::max(0.0, tot[0] / tot[1]) : 0.0;
  };
  auto build = [&](const std::vector<size_t>& ex) -> absl::StatusOr<std::vector<MicroBatch>> {
    std::vector<MicroBatch> out;
    double z0 = 0;
    if (kto) {
      std::vector<size_t> all_rows;
      for (size_t e : ex) all_rows.insert(all_rows.end(), rows_of[e].begin(), rows_of[e].end());
      ASSIGN_OR_RETURN(z0, kto_z0(all_rows));
    }
    for (size_t i = 0; i < ex.size(); i += static_cast<size_t>(cfg.micro_batch_size)) {
      const size_t end = std::min(ex.size(), i + static_cast<size_t>(cfg.micro_batch_size));
      if (kto) {
        std::vector<const TokenSeq*> r;
        std::vector<float> ref, des;
        for (size_t j = i; j < end; ++j) {
          for (size_t k : rows_of[ex[j]]) r.push_back(&rows[k]), ref.push_back(ref_rows[k]), des.push_back(desirable[k]);
        }
        auto mb = PadRows(r, tools.pad);
        mb.fields["ref"] = torch::tensor(ref), mb.fields["desirable"] = torch::tensor(des);
        mb.fields["z0"] = torch::tensor({static_cast<float>(z0)});
        out.push_back(std::move(mb));
        continue;
      }
      std::vector<const TokenSeq*> c, r;
      std::vector<float> mg, rc, rr;
      for (size_t j = i; j < end; ++j) {
        c.push_back(&chosen[ex[j]]), r.push_back(&rejected[ex[j]]);
        mg.push_back(margins[ex[j]]);
        if (with_ref) rc.push_back(ref_c[ex[j]]), rr.push_back(ref_r[ex[j]]);
      }
      auto mb = PairRows(c, r, tools.pad);
      if (rm && !rmc.margin_field.empty()) mb.fields["margin"] = torch::tensor(mg);
      if (with_ref) mb.fields["ref_chosen"] = torch::tensor(rc), mb.fields["ref_rejected"] = torch::tensor(rr);
      out.push_back(std::move(mb));
    }
    return out;
  };
  OfflineTask task;
  task.stage = stage;
  task.stage_index = index;
  task.cfg = cfg;
  task.n_train = static_cast<int64_t>(train_idx.size());
  task.objective = objective.get();
  task.order = [&](int64_t epoch) { return ds.Shuffled(data::Split::kTrain, p.seed, static_cast<uint64_t>(epoch)); };
  task.micro = build;
  task.evaluate = [&]() -> absl::StatusOr<std::map<std::string, double>> {
    auto [lo, hi] = ShardRange(held_idx.size(), p.group->rank(), p.group->size());
    std::vector<size_t> mine(held_idx.begin() + static_cast<std::ptrdiff_t>(lo), held_idx.begin() + static_cast<std::ptrdiff_t>(hi));
    StepMetrics m;
    // Every rank reports the same names, also one without held-out examples.
    m.AddSum("loss", 0);
    for (const char* k : {"reward_chosen", "reward_rejected"}) m.AddMean(k, 0, 0);
    for (const char* k : {"accuracy", "margin"}) {
      if (!kto) m.AddMean(k, 0, 0);
    }
    if (kto) m.AddMean("kl", 0, 0);
    double units = 0;  // the objective's normaliser over the held-out split: pairs, or kto rows
    for (size_t e : held_idx) units += kto ? static_cast<double>(rows_of[e].size()) : 1.0;
    const std::vector<double> totals = {units};
    ASSIGN_OR_RETURN(auto batches, build(mine));
    RETURN_IF_ERROR(GuardExceptions(stage + " eval", [&]() -> absl::Status {
      torch::NoGradGuard ng;
      for (const auto& mb : batches) objective->Loss(mb, totals, m);
      return absl::OkStatus();
    }));
    return m.Reduce(*p.group);
  };
  RETURN_IF_ERROR(RunOffline(p, learner, task));
  const std::string out = (fs::path(StageDir(p, index, stage)) / "model").string();
  RETURN_IF_ERROR(SaveStageModel(p, *net, out));
  (rm ? p.reward_model : p.policy) = out;
  return absl::OkStatus();
}

}  // namespace rlhf::trainer
