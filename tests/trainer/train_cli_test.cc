// `rlhf train` as users run it, in real processes: data parallelism over 2 ranks (mpirun and env
// bootstrap) against 1 rank, exact resume after a SIGKILL, damaged checkpoints, and a whole pipeline.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "common/model/checkpoint.h"
#include "common/sample_json.h"
#include "tests/test_util.h"

namespace rlhf {
namespace {

namespace fs = std::filesystem;
using testing::ReadFile;
using testing::RunCommand;

const std::string kRlhf = std::string(RLHF_BINARY_DIR) + "/cli/rlhf";

class TrainCli : public ::testing::Test {
 public:
  static std::string dir_;

  static void SetUpTestSuite() {
    dir_ = (fs::temp_directory_path() / ("train-cli-" + std::to_string(getpid()))).string();
    fs::create_directories(dir_);
    std::mt19937 rng(5);
    std::ofstream corpus(dir_ + "/corpus.txt"), sft(dir_ + "/sft.jsonl"), pref(dir_ + "/pref.jsonl"),
        prompts(dir_ + "/prompts.jsonl"), kto(dir_ + "/kto.jsonl");
    for (int i = 0; i < 400; ++i) corpus << rng() % 40 << "+" << rng() % 40 << "=" << rng() % 80 << "\n";
    for (int i = 0; i < 48; ++i) {
      int a = static_cast<int>(rng() % 20), b = static_cast<int>(rng() % 20);
      std::string p = std::to_string(a) + "+" + std::to_string(b) + "=";
      sft << nlohmann::json{{"prompt", p}, {"completion", std::to_string(a + b)}}.dump() << "\n";
      pref << nlohmann::json{{"prompt", p}, {"chosen", std::to_string(a + b)}, {"rejected", std::to_string(a + b + 1)}}.dump()
           << "\n";
      kto << nlohmann::json{{"prompt", p}, {"completion", std::to_string(a + b + (i % 3 == 0))}, {"label", i % 3 != 0}}.dump()
          << "\n";
      if (i < 16) prompts << nlohmann::json{{"prompt", p}, {"answer", std::to_string(a + b)}}.dump() << "\n";
    }
    corpus.close(), sft.close(), pref.close(), prompts.close(), kto.close();
    const std::string q = " --set run.log_level=warn --run-dir " + dir_ + "/runs/";
    auto r = RunCommand(kRlhf + " train-tokenizer --corpus " + dir_ + "/corpus.txt --merges 40 --out " + dir_ + "/tok" + q + "tok");
    ASSERT_EQ(r.code, 0) << r.out;
    r = RunCommand(kRlhf + " init-model --hidden-size 32 --layers 2 --heads 4 --kv-heads 2 --intermediate-size 64 "
                   "--vocab-size 320 --tokenizer " + dir_ + "/tok --seed 3 --out " + dir_ + "/m" + q + "init");
    ASSERT_EQ(r.code, 0) << r.out;
    r = RunCommand(kRlhf + " generate --model " + dir_ + "/m --prompts " + dir_ + "/prompts.jsonl --n 4 --max-new-tokens 6 "
                   "--seed 2 --out " + dir_ + "/gen.jsonl" + q + "gen");
    ASSERT_EQ(r.code, 0) << r.out;
    // Scores: a toy function of the tokens, so that groups have reward variance.
    std::ifstream in(dir_ + "/gen.jsonl");
    std::ofstream out(dir_ + "/scored.jsonl");
    std::string line;
    while (std::getline(in, line)) {
      auto s = SampleFromJson(line);
      ASSERT_TRUE(s.ok()) << s.status();
      int64_t sum = 0;
      for (int32_t id : s->completion_ids()) sum += id;
      s->set_reward(static_cast<float>((sum * 7 + s->sample_index()) % 5) / 4.f);
      (*s->mutable_reward_parts())["toy"] = s->reward();
      out << SampleToJson(*s) << "\n";
    }
  }
  static void TearDownTestSuite() { fs::remove_all(dir_); }

  // Common flags of a small run of `stage`.
  static std::string Args(const std::string& stage) {
    std::string a = " --model " + dir_ + "/m --stages " + stage +
                    " --set run.log_level=warn --set run.threads=1 --set dist.master_addr=127.0.0.1";
    // Adam's first steps are lr * g / (|g| + eps): a larger eps keeps gradients that are 0 up to rounding
    // from turning into +-lr steps that differ between summation orders.
    for (const char* s : {"sft", "reward_model", "rl"}) a += std::string(" --set ") + s + ".optim.eps=1e-3";
    a += " --set sft.data.path=" + dir_ + "/sft.jsonl --set sft.batch_size=8 --set sft.micro_batch_size=2 --set sft.optim.lr=1e-3";
    for (const std::string s : {"dpo", "kto", "orpo", "simpo", "cpo", "rrhf"}) {
      a += " --set " + s + ".data.path=" + dir_ + "/pref.jsonl --set " + s + ".batch_size=8 --set " + s +
           ".micro_batch_size=2 --set " + s + ".optim.lr=1e-3 --set " + s + ".optim.eps=1e-3";
    }
    a += " --set reward_model.data.path=" + dir_ + "/pref.jsonl --set reward_model.batch_size=8 --set reward_model.optim.lr=1e-3";
    a += " --set rl.samples=" + dir_ + "/scored.jsonl --set rl.group_size=4 --set rl.rollout_batch_size=4 "
         "--set rl.micro_batch_size=3 --set rl.optim.lr=1e-3 --set rl.critic_optim.lr=1e-3 --set rl.critic_optim.eps=1e-3";
    return a;
  }

  static std::map<std::string, torch::Tensor> Weights(const std::string& folder) {
    model::LoadOptions lo;
    lo.dtype = torch::kFloat32;
    auto m = model::LoadModel(folder, lo);
    EXPECT_TRUE(m.ok()) << m.status();
    std::map<std::string, torch::Tensor> out;
    if (!m.ok()) return out;
    for (const auto& p : (*m)->named_parameters(true)) out[p.key()] = p.value().detach().clone();
    return out;
  }

  // A task a tiny model learns in a few dozen steps: "a+b=" -> "7" (sevens.jsonl, SFT) and the same prompts
  // with answers (sevens_prompts.jsonl).
  static void WriteSevens() {
    std::ofstream sft(dir_ + "/sevens.jsonl"), prompts(dir_ + "/sevens_prompts.jsonl");
    for (int a = 0; a < 20; ++a) {
      for (int b = 0; b < 10; ++b) {
        const std::string p = std::to_string(a) + "+" + std::to_string(b) + "=";
        sft << nlohmann::json{{"prompt", p}, {"completion", "7"}}.dump() << "\n";
        prompts << nlohmann::json{{"prompt", p}, {"answer", "7"}}.dump() << "\n";
      }
    }
  }

  static std::vector<double> Losses(const std::string& run) {
    std::vector<double> out;
    std::ifstream in(run + "/metrics.jsonl");
    std::string line;
    while (std::getline(in, line)) out.push_back(nlohmann::json::parse(line)["loss"].get<double>());
    return out;
  }
};
std::string TrainCli::dir_;

TEST_F(TrainCli, TwoRanksMakeTheUpdateOfOneRank) {
  // SFT (token losses), DPO (sequence losses), KTO (a reference point all-reduced over ranks), PPO and
  // GRPO (token-level RL losses, global whitening).
  for (const std::string stage : {"sft", "dpo", "kto", "ppo", "grpo"}) {
    const std::string one = dir_ + "/runs/dp1-" + stage, two = dir_ + "/runs/dp2-" + stage;
    const std::string a = Args(stage) + " --set sft.max_steps=2 --set dpo.max_steps=2 --set kto.max_steps=2 --set rl.steps=2";
    auto r = RunCommand("timeout 120 " + kRlhf + " train" + a + " --run-dir " + one);
    ASSERT_EQ(r.code, 0) << r.out;
    r = RunCommand("timeout 120 mpirun --allow-run-as-root --oversubscribe -np 2 " + kRlhf + " train" + a + " --run-dir " + two);
    ASSERT_EQ(r.code, 0) << r.out;
    EXPECT_TRUE(fs::exists(two + "/log-rank1.txt"));
    auto l1 = Losses(one), l2 = Losses(two);
    ASSERT_EQ(l1.size(), 2u) << stage;
    ASSERT_EQ(l2.size(), 2u) << stage;
    for (size_t i = 0; i < l1.size(); ++i) EXPECT_NEAR(l1[i], l2[i], 1e-5) << stage << " step " << i + 1;
    auto w1 = Weights(one + "/0-" + stage + "/model"), w2 = Weights(two + "/0-" + stage + "/model");
    ASSERT_FALSE(w1.empty());
    for (const auto& [k, v] : w1) EXPECT_TRUE(torch::allclose(v, w2[k], 1e-4, 1e-5)) << stage << " " << k;
    // The weights moved (the comparison is not between two untouched models).
    auto w0 = Weights(dir_ + "/m");
    EXPECT_FALSE(torch::allclose(w0["lm_head.weight"], w1["lm_head.weight"], 0, 1e-6)) << stage;
    if (stage == "ppo") {
      auto c1 = Weights(one + "/0-ppo/critic"), c2 = Weights(two + "/0-ppo/critic");
      for (const auto& [k, v] : c1) EXPECT_TRUE(torch::allclose(v, c2[k], 1e-4, 1e-5)) << "critic " << k;
    }
  }
}

TEST_F(TrainCli, EnvBootstrapWithoutMpirun) {
  const std::string one = dir_ + "/runs/env1", two = dir_ + "/runs/env2";
  const std::string a = Args("sft") + " --set sft.max_steps=2";
  auto r = RunCommand("timeout 120 " + kRlhf + " train" + a + " --run-dir " + one);
  ASSERT_EQ(r.code, 0) << r.out;
  const int port = 20000 + static_cast<int>(getpid() % 20000);
  const std::string env = "MASTER_ADDR=127.0.0.1 MASTER_PORT=" + std::to_string(port) + " WORLD_SIZE=2 ";
  r = RunCommand("(" + env + "RANK=1 timeout 120 " + kRlhf + " train" + a + " --run-dir " + two + " > " + dir_ +
                 "/rank1.out 2>&1 &) ; " + env + "RANK=0 timeout 120 " + kRlhf + " train" + a + " --run-dir " + two +
                 "; rc=$?; sleep 1; cat " + dir_ + "/rank1.out; exit $rc");
  ASSERT_EQ(r.code, 0) << r.out;
  auto w1 = Weights(one + "/0-sft/model"), w2 = Weights(two + "/0-sft/model");
  for (const auto& [k, v] : w1) EXPECT_TRUE(torch::allclose(v, w2[k], 1e-4, 1e-5)) << k;
}

// N steps straight == N/2 steps, SIGKILL right after the checkpoint, --resume: bitwise.
void ExpectExactResume(const std::string& dir, const std::string& args, const std::string& stage, int half,
                       const std::vector<std::string>& model_dirs) {
  const std::string straight = dir + "/runs/straight-" + stage, resumed = dir + "/runs/resumed-" + stage;
  auto r = RunCommand("timeout 120 " + kRlhf + " train" + args + " --run-dir " + straight);
  ASSERT_EQ(r.code, 0) << r.out;
  r = RunCommand("RLHF_FAULT_KILL_AFTER_CHECKPOINT=" + std::to_string(half) + " timeout 120 " + kRlhf + " train" + args +
                 " --run-dir " + resumed);
  ASSERT_NE(r.code, 0) << "the fault injection did not kill the run:\n" << r.out;
  EXPECT_FALSE(fs::exists(resumed + "/0-" + stage + "/model")) << "the first run finished";
  EXPECT_EQ(ReadFile(resumed + "/checkpoints/latest"), "step-00-0000000" + std::to_string(half) + "\n");
  // Without --resume the run directory is refused, not overwritten.
  r = RunCommand("timeout 120 " + kRlhf + " train" + args + " --run-dir " + resumed);
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.out.find("--resume"), std::string::npos) << r.out;
  r = RunCommand("timeout 120 " + kRlhf + " train" + args + " --resume --run-dir " + resumed);
  ASSERT_EQ(r.code, 0) << r.out;
  for (const auto& model_dir : model_dirs) {
    auto a = ReadFile(straight + "/0-" + stage + "/" + model_dir + "/model.safetensors");
    auto b = ReadFile(resumed + "/0-" + stage + "/" + model_dir + "/model.safetensors");
    ASSERT_FALSE(a.empty());
    EXPECT_TRUE(a == b) << stage << ": " << model_dir << " weights differ after resume";
  }
  auto la = TrainCli::Losses(straight), lb = TrainCli::Losses(resumed);
  ASSERT_EQ(la.size(), static_cast<size_t>(2 * half));
  ASSERT_EQ(lb.size(), la.size());
  for (size_t i = 0; i < la.size(); ++i) EXPECT_EQ(la[i], lb[i]) << stage << " step " << i + 1;
}

TEST_F(TrainCli, ExactResumeOfSft) {
  ExpectExactResume(dir_,
                    Args("sft") + " --set sft.epochs=2 --set sft.max_steps=6 --set train.save_every=3 "
                                  "--set sft.optim.warmup_steps=2 --set sft.packing=true",
                    "sft", 3, {"model"});
}

TEST_F(TrainCli, ExactResumeOfPpo) {
  const std::string a = Args("ppo") + " --set rl.steps=4 --set rl.ppo_epochs=2 --set rl.minibatch_size=8 "
                        "--set train.save_every=2 --set rl.kl_target=0.01 --set rl.kl_coef=0.1";
  ExpectExactResume(dir_, a, "ppo", 2, {"model", "critic"});
}

TEST_F(TrainCli, ExactResumeOfDpoReusesTheCachedReferenceLogProbs) {
  const std::string a = Args("dpo") + " --set dpo.max_steps=4 --set train.save_every=2";
  ExpectExactResume(dir_, a, "dpo", 2, {"model"});
  const std::string run = dir_ + "/runs/resumed-dpo";
  EXPECT_TRUE(fs::exists(run + "/0-dpo/reference_logprobs.safetensors"));
  // Started again from its last checkpoint: the reference log-probs come from the cache ...
  auto r = RunCommand("RLHF_LOG_LEVEL=info timeout 120 " + kRlhf + " train" + a + " --resume --run-dir " + run);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("reference log-probs of 96 rows from"), std::string::npos) << r.out;
  // ... unless the reference changed: then they are computed again.
  r = RunCommand("RLHF_LOG_LEVEL=info timeout 120 " + kRlhf + " train" + a + " --set dpo.reference=" + run +
                 "/0-dpo/model --resume --run-dir " + run);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("reference log-probs of 96 rows computed"), std::string::npos) << r.out;
}

TEST_F(TrainCli, PipelineEvaluationsAndRlhfEvalAgree) {
  // With eval.data.path the pipeline evaluates the starting policy and each stage's output; `rlhf eval` of
  // the same folder on the same split gives the same figures.
  const std::string run = dir_ + "/runs/pipeline-eval";
  const std::string ev = " --set eval.data.path=" + dir_ + "/prompts.jsonl --set eval.split=all --set eval.max_new_tokens=4"
                         " --set reward.exact_match_weight=1 --set eval.k=2 --set eval.samples=3";
  auto r = RunCommand("timeout 120 " + kRlhf + " train" + Args("sft") + " --set sft.max_steps=2" + ev + " --run-dir " + run);
  ASSERT_EQ(r.code, 0) << r.out;
  auto summary = nlohmann::json::parse(ReadFile(run + "/summary.json"));
  ASSERT_EQ(summary["pipeline_evals"].size(), 2u) << summary.dump();
  EXPECT_EQ(summary["pipeline_evals"][0]["after"], "start");
  EXPECT_EQ(summary["pipeline_evals"][1]["after"], "0-sft");
  EXPECT_EQ(summary["eval_after"], summary["pipeline_evals"][1]["eval"]);
  EXPECT_EQ(summary["eval_after"]["prompts"], 16);
  EXPECT_EQ(summary["eval_after"]["k"], 2);
  EXPECT_TRUE(fs::exists(run + "/eval_0-sft.jsonl"));
  r = RunCommand("timeout 120 " + kRlhf + " eval --model " + run + "/0-sft/model --data " + dir_ + "/prompts.jsonl" + ev +
                 " --set run.log_level=warn --set run.threads=1 --run-dir " + run + "-eval");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("accuracy "), std::string::npos) << r.out;
  auto e = nlohmann::json::parse(ReadFile(run + "-eval/eval.json"));
  for (const char* k : {"prompts", "correct", "accuracy", "mean_reward", "pass_at_k", "accuracy_ci95"}) {
    EXPECT_EQ(e[k], summary["eval_after"][k]) << k;
  }
  // 16 greedy answers, then 3 sampled per prompt.
  std::ifstream gen(run + "-eval/generations.jsonl");
  int lines = 0;
  for (std::string line; std::getline(gen, line);) ++lines;
  EXPECT_EQ(lines, 16 + 48);
  // A bad split name is refused with the key named.
  r = RunCommand(kRlhf + " eval --model " + run + "/0-sft/model --data " + dir_ + "/prompts.jsonl --set eval.split=test" +
                 " --set reward.exact_match_weight=1 --run-dir " + run + "-bad");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.out.find("eval.split"), std::string::npos) << r.out;
}

TEST_F(TrainCli, SftEndsWhenItHasDoneItsJob) {
  // A task a tiny model learns in a few dozen steps (every answer is "7"): with sft.target_accuracy the stage
  // ends as soon as the held-out greedy accuracy reaches it, long before max_steps, and that accuracy is the
  // one `rlhf eval` measures on the saved model and the same held-out prompts.
  WriteSevens();
  const std::string base = " --model " + dir_ + "/m --stages sft --set run.log_level=info --set run.threads=1 "
                           "--set sft.data.path=" + dir_ + "/sevens.jsonl --set sft.data.heldout_fraction=0.2 "
                           "--set sft.batch_size=16 --set sft.micro_batch_size=16 --set sft.optim.lr=3e-3 "
                           "--set sft.epochs=20 --set sft.max_steps=200 --set sft.eval_every=5 --set sft.accuracy_prompts=32";
  const std::string run = dir_ + "/runs/sft-target";
  auto r = RunCommand("RLHF_LOG_LEVEL=info timeout 300 " + kRlhf + " train" + base + " --set sft.target_accuracy=0.9 --run-dir " + run);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("reached sft.target_accuracy 90.0%"), std::string::npos) << r.out;
  std::vector<nlohmann::json> rows;
  {
    std::ifstream in(run + "/metrics.jsonl");
    for (std::string line; std::getline(in, line);) rows.push_back(nlohmann::json::parse(line));
  }
  ASSERT_FALSE(rows.empty());
  ASSERT_LT(rows.size(), 200u) << "the stage did not end early";
  EXPECT_EQ(rows.size() % 5, 0u);
  const double last = rows.back()["eval/accuracy"].get<double>();
  EXPECT_GE(last, 0.9);
  for (size_t i = 0; i + 1 < rows.size(); ++i) {
    if (rows[i].contains("eval/accuracy")) EXPECT_LT(rows[i]["eval/accuracy"].get<double>(), 0.9) << "step " << i + 1;
  }
  ASSERT_TRUE(fs::exists(run + "/0-sft/model/config.json"));
  r = RunCommand("RLHF_LOG_LEVEL=info timeout 120 " + kRlhf + " eval --model " + run + "/0-sft/model --data " + dir_ +
                 "/sevens_prompts.jsonl --set eval.data.heldout_fraction=0.2 --set eval.max_prompts=32 "
                 "--set eval.max_new_tokens=2 --set reward.exact_match_weight=1 --set run.log_level=warn "
                 "--set run.threads=1 --run-dir " + run + "-eval");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_DOUBLE_EQ(nlohmann::json::parse(ReadFile(run + "-eval/eval.json"))["accuracy"].get<double>(), last);

  // sft.patience: two evaluations without a new best end the stage; a run killed right after that last
  // checkpoint and resumed trains nothing more.
  const std::string pat = dir_ + "/runs/sft-patience";
  const std::string args = base + " --set sft.optim.lr=1e-9 --set sft.patience=2 --set sft.eval_every=2";
  r = RunCommand("RLHF_LOG_LEVEL=info RLHF_FAULT_KILL_AFTER_CHECKPOINT=6 timeout 120 " + kRlhf + " train" + args + " --run-dir " + pat);
  ASSERT_NE(r.code, 0) << "the fault injection did not kill the run:\n" << r.out;
  EXPECT_NE(r.out.find("ending at step 6 of "), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("sft.patience"), std::string::npos) << r.out;
  r = RunCommand("RLHF_LOG_LEVEL=info timeout 120 " + kRlhf + " train" + args + " --resume --run-dir " + pat);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("ended early at step 6"), std::string::npos) << r.out;
  EXPECT_EQ(Losses(pat).size(), 6u);
  EXPECT_TRUE(fs::exists(pat + "/0-sft/model/config.json"));

  // A target without the accuracy it needs is refused with the keys named.
  r = RunCommand("RLHF_LOG_LEVEL=info timeout 60 " + kRlhf + " train" + base + " --set sft.accuracy_prompts=0 --set sft.target_accuracy=0.5"
                 " --run-dir " + dir_ + "/runs/sft-target-bad");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.out.find("sft.accuracy_prompts > 0"), std::string::npos) << r.out;
}

TEST_F(TrainCli, AnOnlineRunSaysWhenItCannotLearn) {
  // The random model never writes a right sum: before the first step the check finds pass@4 of 0 and says
  // the run cannot learn; every step's groups then have equal rewards (all 0), and after
  // rl.equal_reward_steps of them the run says so again. The check's generations are not the ledger's.
  const std::string online = " --set rl.data.path=" + dir_ + "/prompts.jsonl --set rl.data.heldout_fraction=0.25"
                             " --set rl.rollout_batch_size=4 --set rl.group_size=4 --set rl.max_new_tokens=4"
                             " --set rl.micro_batch_size=4 --set reward.exact_match_weight=1 --set eval.max_new_tokens=4"
                             " --set rl.precheck_prompts=8 --set rl.equal_reward_steps=2 --set run.log_level=info --set rl.samples=";
  const std::string run = dir_ + "/runs/cannot-learn";
  auto r = RunCommand("RLHF_LOG_LEVEL=info timeout 120 " + kRlhf + " train" + Args("grpo") + online + " --set rl.steps=3 --run-dir " + run);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("grpo CANNOT LEARN from this policy: pass@4 0.0% on 8 training prompts"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("sft.target_accuracy"), std::string::npos) << "the line says what to do:\n" << r.out;
  EXPECT_NE(r.out.find("grpo: NOT LEARNING: 2 steps in a row (to step 2)"), std::string::npos) << r.out;
  auto summary = nlohmann::json::parse(ReadFile(run + "/summary.json"));
  const auto& pre = summary["learnability"]["precheck"];
  EXPECT_EQ(pre["verdict"], "cannot learn") << summary.dump();
  EXPECT_EQ(pre["prompts"], 8);
  EXPECT_EQ(pre["pass_at_k"], 0.0);
  EXPECT_EQ(pre["equal_reward_fraction"], 1.0);
  EXPECT_EQ(summary["learnability"]["equal_reward_alarms"], 1);
  // Every evaluation says how an answer is judged.
  EXPECT_NE(r.out.find("; correct: exact_match (reward.extract flexible) >= 1"), std::string::npos) << r.out;
  EXPECT_EQ(summary["eval_after"]["judged_by"], "exact_match (reward.extract flexible) >= 1");
  EXPECT_EQ(summary["duplicates"], 0);
  EXPECT_EQ(summary["missing"], 0);
  EXPECT_GT(summary["prompts_trained"].get<int>(), 8);
  std::ifstream in(run + "/metrics.jsonl");
  int steps = 0;
  for (std::string line; std::getline(in, line); ++steps) {
    EXPECT_EQ(nlohmann::json::parse(line)["rollout/equal_reward_fraction"], 1.0) << line;
  }
  EXPECT_EQ(steps, 3);
  // rl.precheck_stop: the stage ends before its first step, with the same line.
  r = RunCommand("RLHF_LOG_LEVEL=info timeout 120 " + kRlhf + " train" + Args("grpo") + online +
                 " --set rl.steps=3 --set rl.precheck_stop=true --run-dir " + run + "-stop");
  EXPECT_NE(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("CANNOT LEARN"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("rl.precheck_stop"), std::string::npos) << r.out;
  EXPECT_EQ(ReadFile(run + "-stop/metrics.jsonl"), "") << "no step was taken";

  // A policy that answers every prompt right (every answer is "7", learnt by a short SFT): the check finds
  // pass@4 of 100% at a low sampling temperature and groups that are all equal (all 1): little to learn, and it
  // says to use harder prompts.
  WriteSevens();
  const std::string solved = dir_ + "/runs/solved";
  r = RunCommand("RLHF_LOG_LEVEL=info timeout 300 " + kRlhf + " train --model " + dir_ + "/m --stages 'sft;grpo' --set run.threads=1 "
                 "--set run.log_level=info --set sft.data.path=" + dir_ + "/sevens.jsonl --set sft.batch_size=16 "
                 "--set sft.micro_batch_size=16 --set sft.optim.lr=3e-3 --set sft.epochs=20 --set sft.max_steps=300 "
                 "--set sft.eval_every=5 --set sft.accuracy_prompts=16 --set sft.target_accuracy=1 "
                 "--set rl.data.path=" + dir_ + "/sevens_prompts.jsonl --set rl.steps=1 --set rl.rollout_batch_size=4 "
                 "--set rl.group_size=4 --set rl.max_new_tokens=3 --set rl.micro_batch_size=4 --set rl.temperature=0.05 "
                 "--set reward.exact_match_weight=1 --set eval.max_new_tokens=3 --set eval.max_prompts=8 "
                 "--set rl.precheck_prompts=8 --run-dir " + solved);
  ASSERT_EQ(r.code, 0) << r.out;
  auto s2 = nlohmann::json::parse(ReadFile(solved + "/summary.json"));
  EXPECT_EQ(s2["learnability"]["precheck"]["verdict"], "little signal") << s2.dump();
  EXPECT_EQ(s2["learnability"]["precheck"]["pass_at_k"], 1.0) << s2.dump();
  EXPECT_NE(r.out.find("use harder prompts"), std::string::npos) << r.out;
}

TEST_F(TrainCli, SummaryHasTheSameFieldsInEveryPipeline) {
  // An offline pipeline (sft, dpo with pipeline evaluations) and an online one (sft, grpo with SFT's own
  // accuracy): the same fields, each stage's evaluation before and after named by stage, and the headline
  // before/after of the last stage: after SFT -> after DPO (not the random starting model).
  const std::string ev = " --set eval.data.path=" + dir_ + "/prompts.jsonl --set eval.split=all --set eval.max_new_tokens=4"
                         " --set reward.exact_match_weight=1";
  const std::string dpo = dir_ + "/runs/summary-dpo", grpo = dir_ + "/runs/summary-grpo";
  auto r = RunCommand("timeout 120 " + kRlhf + " train" + Args("'sft;dpo'") + " --set sft.max_steps=2 --set dpo.max_steps=2" +
                      ev + " --run-dir " + dpo);
  ASSERT_EQ(r.code, 0) << r.out;
  r = RunCommand("timeout 120 " + kRlhf + " train" + Args("'sft;grpo'") + " --set sft.max_steps=4 --set sft.eval_every=2"
                 " --set sft.accuracy_prompts=4 --set rl.samples= --set rl.data.path=" + dir_ + "/prompts.jsonl"
                 " --set rl.data.heldout_fraction=0.25 --set rl.steps=1 --set rl.max_new_tokens=4"
                 " --set reward.exact_match_weight=1 --set eval.max_new_tokens=4 --run-dir " + grpo);
  ASSERT_EQ(r.code, 0) << r.out;
  for (const auto& run : {dpo, grpo}) {
    auto s = nlohmann::json::parse(ReadFile(run + "/summary.json"));
    for (const char* k : {"stages", "eval_before", "eval_after", "evaluated_stage", "wall_seconds"}) {
      EXPECT_TRUE(s.contains(k)) << run << ": " << k << "\n" << s.dump();
    }
    ASSERT_EQ(s["stages"].size(), 2u) << s.dump();
    double walls = 0;
    for (int i = 0; i < 2; ++i) {
      const auto& st = s["stages"][i];
      EXPECT_EQ(st["index"], i);
      EXPECT_TRUE(st.contains("eval_after")) << st.dump();
      EXPECT_TRUE(st["eval_after"].contains("accuracy")) << st.dump();
      EXPECT_TRUE(st["eval_after"].contains("accuracy_ci95")) << st.dump();
      walls += st["wall_seconds"].get<double>();
    }
    EXPECT_EQ(s["stages"][0]["stage"], "sft");
    EXPECT_EQ(s["evaluated_stage"], s["stages"][1]["stage"]);
    EXPECT_EQ(s["eval_before"], s["stages"][1]["eval_before"]);
    EXPECT_EQ(s["eval_after"], s["stages"][1]["eval_after"]);
    EXPECT_GE(s["wall_seconds"].get<double>(), walls);
  }
  auto d = nlohmann::json::parse(ReadFile(dpo + "/summary.json"));
  ASSERT_EQ(d["pipeline_evals"].size(), 3u);
  EXPECT_EQ(d["pipeline_evals"][1]["after"], "0-sft");
  EXPECT_EQ(d["eval_before"], d["pipeline_evals"][1]["eval"]) << "before DPO is after SFT";
  EXPECT_EQ(d["eval_after"], d["pipeline_evals"][2]["eval"]);
  EXPECT_EQ(d["stages"][0]["eval_before"], d["pipeline_evals"][0]["eval"]);
  auto g = nlohmann::json::parse(ReadFile(grpo + "/summary.json"));
  EXPECT_EQ(g["stage"], "grpo");
  EXPECT_EQ(g["stages"][0]["eval_after"]["prompts"], 4) << "SFT's own held-out accuracy";
  EXPECT_FALSE(g["stages"][0].contains("eval_before")) << "nothing evaluated the starting model";
  EXPECT_EQ(g["stages"][1]["eval_before"], g["eval_before"]);
}

TEST_F(TrainCli, MemoryIsEstimatedBeforeAndMeasuredAfter) {
  // A line with the estimate at the start of each stage and the peak at the end; a stage whose estimate is
  // above train.memory_limit_gb is refused before it loads its model.
  const std::string run = dir_ + "/runs/memory";
  auto r = RunCommand("RLHF_LOG_LEVEL=info timeout 120 " + kRlhf + " train" + Args("sft") + " --set sft.max_steps=2 --run-dir " + run);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("sft: estimated memory per process"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("peak resident memory"), std::string::npos) << r.out;
  r = RunCommand("timeout 120 " + kRlhf + " train" + Args("sft") + " --set sft.max_steps=2 --set train.memory_limit_gb=0.0001"
                 " --run-dir " + run + "-refused");
  EXPECT_NE(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("estimated memory"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("is above train.memory_limit_gb 0.00 GB"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("sft.micro_batch_size"), std::string::npos) << r.out;
  EXPECT_FALSE(fs::exists(run + "-refused/checkpoints")) << "nothing was trained";
}

TEST_F(TrainCli, OnlineDpoAndRejectionSamplingRunFromConfig) {
  // Two online steps each through the embedded rollout worker and scorer. Online DPO starts at the
  // reference (the starting policy), so its first loss is -log sigmoid(0) = log 2.
  const std::string online = " --set rl.data.path=" + dir_ + "/prompts.jsonl --set rl.data.heldout_fraction=0.25"
                             " --set rl.steps=2 --set rl.rollout_batch_size=4 --set rl.max_new_tokens=4"
                             " --set rl.micro_batch_size=4 --set reward.exact_match_weight=1 --set reward.format_weight=1"
                             " --set 'reward.format_pattern=[ -~][\\s\\S]*' --set eval.max_new_tokens=4";
  for (const std::string stage : {"online_dpo", "rft"}) {
    const std::string run = dir_ + "/runs/online-" + stage;
    const std::string g = stage == "online_dpo" ? "4" : "3";
    auto r = RunCommand("timeout 120 " + kRlhf + " train" + Args(stage) + online + " --set rl.group_size=" + g +
                        " --set rft.threshold=0.5 --run-dir " + run);
    ASSERT_EQ(r.code, 0) << r.out;
    auto summary = nlohmann::json::parse(ReadFile(run + "/summary.json"));
    EXPECT_EQ(summary["stage"], stage);
    EXPECT_EQ(summary["steps"], 2);
    EXPECT_EQ(summary["duplicates"], 0);
    EXPECT_EQ(summary["missing"], 0);
    EXPECT_GT(summary["prompts_trained"].get<int>(), 0);
    EXPECT_TRUE(summary["eval_after"].contains("accuracy"));
    std::ifstream in(run + "/metrics.jsonl");
    std::string first;
    ASSERT_TRUE(static_cast<bool>(std::getline(in, first)));
    auto m = nlohmann::json::parse(first);
    EXPECT_TRUE(m.contains("kept_fraction")) << first;
    if (stage == "online_dpo") {
      EXPECT_NEAR(m["loss"].get<double>(), std::log(2.0), 1e-5) << first;
      EXPECT_EQ(m["kept_fraction"], 1.0) << "groups with equal rewards are filtered before the step";
    }
    EXPECT_TRUE(fs::exists(run + "/0-" + stage + "/model/model.safetensors"));
  }
  // A margin no pair reaches (the rewards here differ by 1 or 2): every pair is skipped, no step is taken.
  const std::string run = dir_ + "/runs/online-dpo-margin";
  auto r = RunCommand("timeout 120 " + kRlhf + " train" + Args("online_dpo") + online +
                      " --set rl.group_size=4 --set online_dpo.min_margin=3 --run-dir " + run);
  ASSERT_EQ(r.code, 0) << r.out;
  std::ifstream in(run + "/metrics.jsonl");
  int steps = 0;
  for (std::string line; std::getline(in, line); ++steps) {
    auto m = nlohmann::json::parse(line);
    EXPECT_EQ(m["kept_fraction"], 0.0) << line;
    EXPECT_FALSE(m.contains("grad_norm/policy")) << "no pair, no optimizer step: " << line;
  }
  EXPECT_EQ(steps, 2);
}

TEST_F(TrainCli, ConstitutionalDataFeedsSftAndDpo) {
  // The policy answers, critiques and revises; the trace holds all three texts for every prompt, and the
  // pairs and SFT files are what `rlhf train` reads.
  const std::string out = dir_ + "/constitutional";
  { std::ofstream(dir_ + "/constitution.txt") << "Answer with the sum.\n"; }
  auto r = RunCommand("timeout 120 " + kRlhf + " constitutional --model " + dir_ + "/m --prompts " + dir_ +
                      "/prompts.jsonl --constitution " + dir_ + "/constitution.txt --out " + out +
                      " --set constitutional.max_new_tokens=6 --set constitutional.critique_max_new_tokens=6"
                      " --set constitutional.revision_max_new_tokens=6 --set constitutional.temperature=1"
                      " --set run.log_level=warn --run-dir " + dir_ + "/runs/constitutional");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("16 prompts: "), std::string::npos) << r.out;
  std::ifstream trace(out + "/trace.jsonl");
  int n = 0;
  for (std::string line; std::getline(trace, line); ++n) {
    auto j = nlohmann::json::parse(line);
    for (const char* k : {"prompt", "response", "critique", "revision"}) EXPECT_TRUE(j.contains(k)) << line;
  }
  EXPECT_EQ(n, 16);
  int pairs = 0;
  std::ifstream pf(out + "/pairs.jsonl");
  for (std::string line; std::getline(pf, line); ++pairs) {
    auto j = nlohmann::json::parse(line);
    EXPECT_NE(j["chosen"], j["rejected"]) << line;
  }
  ASSERT_GE(pairs, 4) << "a random model should rarely repeat itself";
  r = RunCommand("timeout 120 " + kRlhf + " train" + Args("'sft;dpo'") + " --set sft.data.path=" + out + "/sft.jsonl" +
                 " --set dpo.data.path=" + out + "/pairs.jsonl --set sft.data.heldout_fraction=0 --set dpo.data.heldout_fraction=0"
                 " --set sft.batch_size=2 --set dpo.batch_size=2 --set sft.max_steps=2 --set dpo.max_steps=2"
                 " --run-dir " + dir_ + "/runs/constitutional-train");
  EXPECT_EQ(r.code, 0) << r.out;
}

TEST_F(TrainCli, EveryPreferenceTrainerRunsFromConfig) {
  const std::string kto_data = " --set kto.data.path=" + dir_ + "/kto.jsonl";
  for (const std::string stage : {"dpo", "kto", "orpo", "simpo", "cpo", "rrhf", "kto-unpaired"}) {
    const std::string name = stage == "kto-unpaired" ? "kto" : stage;
    const std::string run = dir_ + "/runs/pref-" + stage;
    auto r = RunCommand("timeout 120 " + kRlhf + " train" + Args(name) + " --set " + name + ".max_steps=3" +
                        (stage == "kto-unpaired" ? kto_data : "") + " --run-dir " + run);
    ASSERT_EQ(r.code, 0) << stage << "\n" << r.out;
    std::ifstream in(run + "/metrics.jsonl");
    std::string line;
    std::vector<nlohmann::json> rows;
    while (std::getline(in, line)) rows.push_back(nlohmann::json::parse(line));
    ASSERT_EQ(rows.size(), 3u) << stage;
    std::vector<std::string> want = {"loss", "reward_chosen", "reward_rejected", "eval/loss"};
    if (name == "kto") {
      want.push_back("kl");
    } else {
      want.insert(want.end(), {"accuracy", "margin", "eval/accuracy"});
    }
    for (const auto& k : want) {
      ASSERT_TRUE(rows.back().contains(k)) << stage << " lacks " << k;
      EXPECT_TRUE(std::isfinite(rows.back()[k].get<double>())) << stage << " " << k;
    }
    if (name == "dpo" || name == "kto") {
      // The policy starts as its reference: DPO's first loss is log 2, KTO's 1 - sigmoid(0) = 0.5.
      EXPECT_NEAR(rows[0]["loss"].get<double>(), name == "dpo" ? std::log(2.0) : 0.5, 1e-5) << stage;
    }
    EXPECT_TRUE(fs::exists(run + "/0-" + name + "/model/model.safetensors")) << stage;
  }
}

TEST_F(TrainCli, DamagedCheckpointFallsBackToThePreviousOne) {
  const std::string run = dir_ + "/runs/damaged";
  const std::string a = Args("sft") + " --set sft.max_steps=4 --set train.save_every=1 --set train.keep_checkpoints=3";
  auto r = RunCommand("RLHF_FAULT_KILL_AFTER_CHECKPOINT=3 timeout 120 " + kRlhf + " train" + a + " --run-dir " + run);
  ASSERT_NE(r.code, 0);
  // Truncate the newest checkpoint's weights: it must be refused, step 2 used instead.
  fs::resize_file(run + "/checkpoints/step-00-00000003/policy/model.safetensors", 100);
  r = RunCommand("RLHF_LOG_LEVEL=info timeout 120 " + kRlhf + " train" + a + " --resume --run-dir " + run);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("checkpoint refused"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("resumed at step 2"), std::string::npos) << r.out;
  EXPECT_EQ(Losses(run).size(), 4u);  // steps 1, 2 kept; 3 (lost) and 4 redone
}

TEST_F(TrainCli, PipelineSftRewardModelPpoInOneCommand) {
  const std::string run = dir_ + "/runs/pipeline";
  auto r = RunCommand("RLHF_LOG_LEVEL=info timeout 200 " + kRlhf + " train" + Args("'sft;reward_model;ppo'") +
                      " --set sft.max_steps=3 --set reward_model.max_steps=3 --set rl.steps=2 --set reward_model.centering=0.01"
                      " --run-dir " + run);
  ASSERT_EQ(r.code, 0) << r.out;
  for (const char* f : {"0-sft/model/model.safetensors", "1-reward_model/model/model.safetensors",
                        "2-ppo/model/model.safetensors", "2-ppo/critic/model.safetensors", "config.yaml", "log.txt",
                        "2-ppo/model/tokenizer.json"}) {
    EXPECT_TRUE(fs::exists(run + "/" + f)) << f;
  }
  auto rm = nlohmann::json::parse(ReadFile(run + "/1-reward_model/model/config.json"));
  EXPECT_EQ(rm["architectures"][0], "LlamaForSequenceClassification");
  auto critic = nlohmann::json::parse(ReadFile(run + "/2-ppo/critic/config.json"));
  EXPECT_EQ(critic["architectures"][0], "LlamaForTokenClassification");
  // The critic starts from the reward model's backbone.
  EXPECT_NE(r.out.find("critic starts from " + run + "/1-reward_model/model"), std::string::npos) << r.out;
  // Every step is in the metrics log, with the figures the issue lists for the RL stage.
  std::ifstream in(run + "/metrics.jsonl");
  std::string line, last;
  int lines = 0;
  while (std::getline(in, line)) ++lines, last = line;
  EXPECT_EQ(lines, 3 + 3 + 2);
  auto j = nlohmann::json::parse(last);
  for (const char* k : {"pg_loss", "vf_loss", "entropy", "approx_kl", "kl_ref", "clip_fraction", "grad_norm/policy",
                        "lr/policy", "value_explained_variance", "response_length", "truncated_fraction",
                        "reward_mean/toy", "reward_std/toy", "zero_variance_group_fraction", "tokens_per_second"}) {
    EXPECT_TRUE(j.contains(k)) << k;
  }
}

TEST_F(TrainCli, RewardModelWithAFrozenBackboneTrainsOnlyItsHead) {
  const std::string run = dir_ + "/runs/frozen";
  auto r = RunCommand("timeout 120 " + kRlhf + " train" + Args("reward_model") +
                      " --set reward_model.max_steps=2 --set reward_model.freeze_backbone=true --set reward_model.margin_field="
                      " --run-dir " + run);
  ASSERT_EQ(r.code, 0) << r.out;
  auto start = Weights(dir_ + "/m");
  model::LoadOptions lo;
  lo.dtype = torch::kFloat32;
  lo.head = model::Head::kSequenceClassification;
  auto rm = model::LoadModel(run + "/0-reward_model/model", lo);
  ASSERT_TRUE(rm.ok()) << rm.status();
  for (const auto& p : (*rm)->named_parameters(true)) {
    if (p.key().rfind("score.", 0) == 0) continue;
    EXPECT_TRUE(torch::equal(p.value(), start[p.key()])) << p.key();
  }
  auto m = nlohmann::json::parse(ReadFile(run + "/metrics.jsonl").substr(0, ReadFile(run + "/metrics.jsonl").find('\n')));
  EXPECT_GT(m["grad_norm/reward_model"].get<double>(), 0.0);
}

TEST_F(TrainCli, GenerateScoreTrainOnTheCommandLine) {
  // rlhf generate (fixture) -> rlhf score (exact match + missing-EOS penalty + reference log-probs) ->
  // rlhf train grpo on the scored file.
  const std::string run = dir_ + "/runs/gst";
  auto r = RunCommand(kRlhf + " score --samples " + dir_ + "/gen.jsonl --out " + dir_ + "/scored2.jsonl --set "
                      "reward.exact_match_weight=1 --set reward.missing_eos_weight=0.5 --set reward.reference_model=" +
                      dir_ + "/m --run-dir " + run + "-score --set run.log_level=warn");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("scored 64 samples (0 failed"), std::string::npos) << r.out;
  std::ifstream in(dir_ + "/scored2.jsonl");
  std::string line;
  int n = 0;
  while (std::getline(in, line)) {
    auto s = SampleFromJson(line);
    ASSERT_TRUE(s.ok());
    ASSERT_TRUE(s->has_reward());
    EXPECT_EQ(s->ref_logprobs_size(), s->completion_ids_size());
    const float want = s->reward_parts().at("exact_match") + 0.5f * s->reward_parts().at("missing_eos");
    EXPECT_FLOAT_EQ(s->reward(), want);
    ++n;
  }
  EXPECT_EQ(n, 64);
  r = RunCommand("timeout 120 " + kRlhf + " train" + Args("grpo") + " --set rl.samples=" + dir_ + "/scored2.jsonl" +
                 " --set rl.steps=2 --run-dir " + run);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_EQ(Losses(run).size(), 2u);
}

TEST_F(TrainCli, BadConfigsAreRefusedWithAMessage) {
  auto r = RunCommand(kRlhf + " train" + Args("sft") + " --set train.stages=[sft,nope] --run-dir " + dir_ + "/runs/bad1");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.out.find("unknown stage 'nope'"), std::string::npos) << r.out;
  r = RunCommand(kRlhf + " train" + Args("grpo") + " --set rl.group_size=3 --run-dir " + dir_ + "/runs/bad2");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.out.find("not whole groups of 3"), std::string::npos) << r.out;
  r = RunCommand(kRlhf + " train" + Args("sft") + " --set sft.data.path=/nonexistent.jsonl --run-dir " + dir_ + "/runs/bad3");
  EXPECT_NE(r.code, 0);
  // --resume of checkpoints that all fail verification is an error (a run with none yet starts afresh).
  fs::create_directories(dir_ + "/runs/bad4/checkpoints/step-00-00000002");
  r = RunCommand(kRlhf + " train" + Args("sft") + " --resume --run-dir " + dir_ + "/runs/bad4");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.out.find("no usable checkpoint"), std::string::npos) << r.out;
}

}  // namespace
}  // namespace rlhf
