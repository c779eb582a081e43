// The sft stage: supervised fine-tuning on prompt/completion or messages data, the loss on the completion
// tokens only, optionally with several examples packed per row; held-out loss and perplexity.
#include <spdlog/spdlog.h>

#include <filesystem>
#include <numeric>

#include "trainer/pipeline/stage.h"

namespace rlhf::trainer {

namespace fs = std::filesystem;

absl::Status RunSft(Pipeline& p, int64_t index, const std::string& stage) {
  const auto cfg = SftConfig::Spec().Read(*p.config);
  const auto dc = DataSection(stage).Read(*p.config);
  const auto oc = OptimSection(stage + ".optim").Read(*p.config);
  const std::string start = cfg.model.empty() ? p.policy : cfg.model;
  ASSIGN_OR_RETURN(auto policy, LoadForTraining(start, std::nullopt, p.seed));
  ASSIGN_OR_RETURN(auto tools, text::ModelText::Load(p.tokenizer_dir));
  ASSIGN_OR_RETURN(auto ds, LoadData(dc, stage, {data::Kind::kPromptCompletion, data::Kind::kMessages}));
  absl::Status st;
  auto train_idx = ds.Indices(data::Split::kTrain), held_idx = ds.Indices(data::Split::kHeldout);
  auto all = Tokenize(ds, [&] { std::vector<size_t> v(ds.examples().size()); std::iota(v.begin(), v.end(), 0); return v; }(),
                      tools, cfg.max_length, &data::Example::completion, &st);
  RETURN_IF_ERROR(st);
  Learner learner(p.group, p.bucket_bytes);
  learner.AddModel("policy", policy, oc, 1);
  SftObjective objective(policy);
  OfflineTask task;
  task.stage = stage;
  task.stage_index = index;
  task.cfg = cfg;
  task.n_train = static_cast<int64_t>(train_idx.size());
  task.objective = &objective;
  task.order = [&](int64_t epoch) { return ds.Shuffled(data::Split::kTrain, p.seed, static_cast<uint64_t>(epoch)); };
  auto build = [&](const std::vector<size_t>& ex) -> std::vector<MicroBatch> {
    std::vector<const TokenSeq*> seqs;
    for (size_t i : ex) seqs.push_back(&all[i]);
    if (cfg.packing) return PackRows(seqs, cfg.max_length, cfg.micro_batch_size, tools.pad);
    std::vector<MicroBatch> out;
    for (size_t i = 0; i < seqs.size(); i += static_cast<size_t>(cfg.micro_batch_size)) {
      std::vector<const TokenSeq*> part(seqs.begin() + static_cast<std::ptrdiff_t>(i),
                                        seqs.begin() + static_cast<std::ptrdiff_t>(std::min(seqs.size(), i + static_cast<size_t>(cfg.micro_batch_size))));
      out.push_back(PadRows(part, tools.pad));
    }
    return out;
  };
  task.micro = [&](const std::vector<size_t>& ex) -> absl::StatusOr<std::vector<MicroBatch>> { return build(ex); };
  task.evaluate = [&]() -> absl::StatusOr<std::map<std::string, double>> {
    auto [lo, hi] = ShardRange(held_idx.size(), p.group->rank(), p.group->size());
    double nll = 0, tokens = 0;
    RETURN_IF_ERROR(GuardExceptions("sft eval", [&]() -> absl::Status {
      torch::NoGradGuard ng;
      std::vector<size_t> mine(held_idx.begin() + static_cast<std::ptrdiff_t>(lo), held_idx.begin() + static_cast<std::ptrdiff_t>(hi));
      for (const auto& mb : build(mine)) {
        auto m = mb.target_mask.slice(1, 1);
        auto lp = RowTokenStats(*policy, mb, 1.0, false).logprobs;
        nll -= (lp * m).sum().item<double>();
        tokens += m.sum().item<double>();
      }
      return absl::OkStatus();
    }));
    ASSIGN_OR_RETURN(auto s, p.group->SumDoubles({nll, tokens}));
    if (s[1] == 0) return std::map<std::string, double>{};
    return std::map<std::string, double>{{"loss", s[0] / s[1]}, {"perplexity", std::exp(s[0] / s[1])}};
  };
  RETURN_IF_ERROR(RunOffline(p, learner, task));
  const std::string out = (fs::path(StageDir(p, index, stage)) / "model").string();
  RETURN_IF_ERROR(SaveStageModel(p, *policy, out));
  p.policy = out;
  return absl::OkStatus();
}

}  // namespace rlhf::trainer
