// The sft stage: supervised fine-tuning on prompt/completion or messages data, the loss on the completion
// tokens only, optionally with several examples packed per row; held-out loss and perplexity.
#include <spdlog/spdlog.h>

#include <algorithm>
#include <filesystem>
#include <numeric>

#include "rollout/generator.h"
#include "services/coordinator/eval.h"
#include "services/scoring/scorer.h"
#include "services/scoring/verifiers.h"
#include "trainer/pipeline/stage.h"

namespace rlhf::trainer {

namespace fs = std::filesystem;

absl::Status RunSft(Pipeline& p, int64_t index, const std::string& stage) {
  const auto cfg = SftConfig::Spec().Read(*p.config);
  const auto dc = DataSection(stage).Read(*p.config);
  const auto oc = OptimSection(stage + ".optim").Read(*p.config);
  const std::string start = cfg.model.empty() ? p.policy : cfg.model;
  {
    MemoryPlan plan;
    plan.micro_batch_rows = cfg.micro_batch_size;
    plan.tokens_per_row = cfg.max_length;
    RETURN_IF_ERROR(CheckMemory(p, stage, start, plan));
  }
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
  // Held-out greedy accuracy (sft.accuracy_prompts): rank 0 generates with the policy being trained and
  // compares each completion with the example's as the exact-match reward does; every rank gets its figure.
  std::vector<rollout::PromptInput> acc_prompts;
  std::vector<std::string> acc_truths;
  int64_t acc_new_tokens = 1, acc_capacity = 2;
  task.target_accuracy = cfg.target_accuracy;
  task.patience = cfg.patience;
  if (cfg.accuracy_prompts > 0) {
    for (size_t i : held_idx) {
      if (static_cast<int64_t>(acc_prompts.size()) >= cfg.accuracy_prompts) break;
      const auto& ex = ds.examples()[i];
      std::string truth;
      if (ex.completion.is_string()) {
        truth = ex.completion.get<std::string>();
      } else if (ex.completion.is_array() && !ex.completion.empty() && ex.completion.back().contains("content") &&
                 ex.completion.back()["content"].is_string()) {
        truth = ex.completion.back()["content"].get<std::string>();
      } else {
        continue;
      }
      ASSIGN_OR_RETURN(auto ids, tools.EncodePrompt(ex.prompt));
      const auto& seq = all[i];
      const int64_t completion_tokens = static_cast<int64_t>(std::count(seq.target.begin(), seq.target.end(), 1));
      acc_new_tokens = std::max(acc_new_tokens, completion_tokens + 1);
      acc_capacity = std::max(acc_capacity, static_cast<int64_t>(ids.size()));
      acc_prompts.push_back({ex.prompt_id, static_cast<int64_t>(acc_prompts.size()), std::move(ids)});
      acc_truths.push_back(std::move(truth));
    }
    if (acc_prompts.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(stage, ".accuracy_prompts: the held-out split has no example with "
                                                     "a text completion to compare with"));
    }
    const scoring::ExtractMode mode = PipelineReward(p).extract;
    if (p.rank0()) {
      spdlog::info("{}: held-out greedy accuracy on {} prompts (up to {} new tokens, {} answers) every {} steps", stage,
                   acc_prompts.size(), acc_new_tokens, scoring::ExtractModeName(mode), cfg.eval_every);
    }
    task.accuracy = [&, mode]() -> absl::StatusOr<double> {
      double correct = 0;
      if (p.rank0()) {
        RETURN_IF_ERROR(GuardExceptions("sft accuracy", [&]() -> absl::Status {
          torch::NoGradGuard ng;
          policy->eval();
          rollout::GeneratorOptions go;
          go.slots = 64;
          go.capacity = acc_capacity + acc_new_tokens;
          rollout::Generator gen(policy.get(), &tools.tokenizer, tools.stop_ids, go);
          rollout::SamplingParams greedy;
          greedy.temperature = 0;
          greedy.max_new_tokens = acc_new_tokens;
          greedy.seed = p.seed;
          auto out = gen.Generate(acc_prompts, 1, greedy);
          policy->train();
          if (!out.ok()) return out.status();
          for (const auto& g : *out) {
            correct += scoring::AnswerMatches(g.completion, acc_truths[static_cast<size_t>(g.prompt_index)], mode) ? 1 : 0;
          }
          return absl::OkStatus();
        }));
      }
      ASSIGN_OR_RETURN(auto s, p.group->SumDoubles({correct}));
      const auto n = static_cast<int64_t>(acc_prompts.size()), c = static_cast<int64_t>(s[0]);
      const auto [lo, hi] = coordinator::WilsonInterval(c, n);
      p.stage_eval = {{"prompts", n}, {"correct", c}, {"accuracy", s[0] / static_cast<double>(n)},
                      {"accuracy_ci95", {lo, hi}}, {"step", learner.steps()}};
      return s[0] / static_cast<double>(n);
    };
  }
  RETURN_IF_ERROR(RunOffline(p, learner, task));
  const std::string out = (fs::path(StageDir(p, index, stage)) / "model").string();
  RETURN_IF_ERROR(SaveStageModel(p, *policy, out));
  p.policy = out;
  return absl::OkStatus();
}

}  // namespace rlhf::trainer
