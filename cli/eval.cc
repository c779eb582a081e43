// rlhf eval: greedy accuracy (95% Wilson interval), mean reward and pass@k of a model on a held-out split,
// through the same rollout and scoring services as online training (embedded, or at roles.* addresses).
#include <spdlog/spdlog.h>

#include <filesystem>
#include <fstream>
#include <iostream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "cli/command.h"
#include "common/file.h"
#include "common/data/dataset.h"
#include "common/sample_json.h"
#include "services/coordinator/eval.h"
#include "services/coordinator/roles.h"
#include "services/scoring/scorer.h"
#include "services/scoring/sources.h"

namespace rlhf::cli {

namespace {
struct EvalFilesConfig {
  std::string model;  // the policy to evaluate (HF folder with tokenizer files)
  std::string out;    // generations JSONL; "" = <run dir>/generations.jsonl
  static const config::Section<EvalFilesConfig>& Spec() {
    static const auto* s = [] {
      using E = EvalFilesConfig;
      auto* s = new config::Section<E>("eval");
      s->Add("model", &E::model, "rlhf eval: the policy to evaluate (HF folder with tokenizer files)");
      s->Add("out", &E::out, "rlhf eval: generations JSONL (greedy, then sampled); \"\" = <run dir>/generations.jsonl");
      return s;
    }();
    return *s;
  }
};

}  // namespace

Command EvalCommand() {
  Command c;
  c.name = "eval";
  c.help = "greedy accuracy, mean reward and pass@k of a model on the held-out split of a prompt/answer JSONL";
  c.add_sections = [](config::Schema& s) {
    EvalFilesConfig::Spec().Register(s);
    coordinator::EvalDataSection().Register(s);
    coordinator::EvalConfig::Spec().Register(s);
    coordinator::RegisterRoleKeys(s);
  };
  c.flags = {{"model", "eval.model", "model folder"},
             {"data", "eval.data.path", "prompt/answer JSONL"},
             {"out", "eval.out", "generations JSONL"}};
  c.body = [](const Context& ctx) -> absl::Status {
    const auto files = EvalFilesConfig::Spec().Read(ctx.config);
    auto ec = coordinator::EvalConfig::Spec().Read(ctx.config);
    const auto dc = coordinator::EvalDataSection().Read(ctx.config);
    const auto roles_cfg = coordinator::RolesConfig::Spec().Read(ctx.config);
    const auto reward = scoring::RewardConfig::Spec().Read(ctx.config);
    ec.judged_by = scoring::DescribeJudge(reward, ec.success_part, ec.success_threshold);
    if (files.model.empty()) return absl::InvalidArgumentError("give --model DIR");
    if (dc.path.empty()) return absl::InvalidArgumentError("give --data FILE.jsonl");
    ASSIGN_OR_RETURN(auto prompts, coordinator::LoadEvalPrompts(dc, ec.split, files.model, reward.answer_field));
    ASSIGN_OR_RETURN(auto roles, coordinator::Roles::Start(roles_cfg, ctx.config, files.model, 0));
    int64_t version = 0;
    if (!roles->embedded_rollout()) {
      ASSIGN_OR_RETURN(auto h, CheckHealth(roles->rollout_channels()[0], roles->rpc()));
      version = h.policy_version;
    }
    coordinator::RolloutPool pool(roles->rollout_channels(), roles->rpc(), roles_cfg.retry(), {});
    pool.SetLeases(roles_cfg.leases());
    coordinator::ScorerClient scorer(roles->scorer_channels(), roles->rpc(), roles_cfg.retry());
    ASSIGN_OR_RETURN(auto r, coordinator::Evaluate(pool, scorer, prompts, ec, version, static_cast<uint64_t>(ctx.run.seed)));
    const std::string out = files.out.empty() ? (std::filesystem::path(ctx.run_dir) / "generations.jsonl").string() : files.out;
    RETURN_IF_ERROR(WriteFileAtomic(out, [&](FileSink& f) -> absl::Status {
      for (const auto& s : r.generations) RETURN_IF_ERROR(f.Write(SampleToJson(s) + "\n"));
      return absl::OkStatus();
    }));
    auto j = r.ToJson();
    j["split"] = ec.split;
    j["data"] = dc.path;
    j["model"] = files.model;
    j["generations"] = out;
    RETURN_IF_ERROR(WriteFileAtomic((std::filesystem::path(ctx.run_dir) / "eval.json").string(), j.dump(2) + "\n"));
    std::cout << absl::StrFormat("accuracy %d/%d = %.1f%% (95%% CI %.1f-%.1f%%), mean reward %.4f", r.correct, r.prompts,
                                 100 * r.accuracy, 100 * r.accuracy_low, 100 * r.accuracy_high, r.mean_reward);
    if (r.k > 0) std::cout << absl::StrFormat(", pass@%d %.1f%%", r.k, 100 * r.pass_at_k);
    if (r.errors > 0) std::cout << ", " << r.errors << " prompts failed (counted wrong)";
    std::cout << "\n" << j.dump() << std::endl;
    return absl::OkStatus();
  };
  return c;
}

}  // namespace rlhf::cli
