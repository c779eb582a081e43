// The judge (pointwise and pairwise, both orders) and process rewards (step splitting, the arithmetic step
// checker, step ends on tokens, a process reward model): scores equal a direct forward of the same model on
// the same tokens, and failures are per sample.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "common/model/checkpoint.h"
#include "common/text/tokenizer.h"
#include "services/scoring/judge.h"
#include "services/scoring/process.h"
#include "services/scoring/scorer.h"
#include "tests/model/test_models.h"

namespace rlhf::scoring {
namespace {

namespace fs = std::filesystem;

void Write(const std::string& path, const std::string& text) {
  std::ofstream(path, std::ios::binary) << text;
}

// A byte-level tokenizer with a few merges, a judge (causal LM) and a process reward model over it.
struct Fixture {
  std::string dir, judge, prm, tokenizer, constitution;
  Fixture() {
    dir = (fs::temp_directory_path() / ("judge-test-" + std::to_string(getpid()))).string();
    fs::create_directories(dir + "/judge");
    const std::string tok = text::Tokenizer::TrainByteLevelBpe(
        {"Does the response follow the principles? Answer Yes or No.", "12 + 30 = 42\n42 * 2 = 84\n", "Response A B"},
        20, {"<|endoftext|>"});
    judge = dir + "/judge";
    auto cfg = model::testing::Tiny("qwen2", false, 0, 300);
    model::Transformer j(cfg);
    j->InitWeights(11);
    EXPECT_TRUE(model::SaveModel(*j, judge).ok());
    Write(judge + "/tokenizer.json", tok);
    tokenizer = judge + "/tokenizer.json";
    auto pc = model::testing::Tiny("qwen2", false, 0, 300);
    pc.head = model::Head::kTokenClassification;
    model::Transformer p(pc);
    p->InitWeights(12);
    prm = dir + "/prm";
    EXPECT_TRUE(model::SaveModel(*p, prm).ok());
    constitution = dir + "/constitution.txt";
    Write(constitution, "1. Be correct.\n2. Show the steps.\n");
  }
  ~Fixture() { fs::remove_all(dir); }
};
const Fixture& F() {
  static Fixture f;
  return f;
}

const text::Tokenizer& Tok() {
  static auto t = text::Tokenizer::FromFile(F().tokenizer).value();
  return t;
}

RewardConfig JudgeConfig(JudgeMode mode) {
  RewardConfig c;
  c.judge_weight = 1;
  c.judge_model = F().judge;
  c.judge_constitution = F().constitution;
  c.judge_mode = mode;
  c.batch_tokens = 200;  // several batches
  return c;
}

// log P(verdict | prompt) by a direct forward of prompt + verdict.
double DirectVerdictLogProb(model::Transformer& m, const std::vector<int32_t>& prompt, const std::vector<int32_t>& v) {
  torch::NoGradGuard ng;
  std::vector<int64_t> ids(prompt.begin(), prompt.end());
  ids.insert(ids.end(), v.begin(), v.end());
  auto logp = torch::log_softmax(m->Logits(m->Hidden(torch::tensor(ids).unsqueeze(0))).to(torch::kFloat32)[0], -1);
  double l = 0;
  for (size_t k = 0; k < v.size(); ++k) l += logp[static_cast<int64_t>(prompt.size() + k) - 1][v[k]].item<float>();
  return l;
}

double DirectProbability(model::Transformer& m, const std::vector<int32_t>& prompt, const std::string& yes,
                         const std::string& no) {
  const double ly = DirectVerdictLogProb(m, prompt, Tok().Encode(yes, false));
  const double ln = DirectVerdictLogProb(m, prompt, Tok().Encode(no, false));
  return std::exp(ly) / (std::exp(ly) + std::exp(ln));
}

TEST(Judge, FillsPlaceholdersInOnePass) {
  EXPECT_EQ(FillTemplate("{a}-{b}-{c}-{", {{"a", "{b}"}, {"b", "x"}}), "{b}-x-{c}-{");
}

TEST(Judge, PointwiseScoreEqualsADirectForwardOfThePromptAndVerdicts) {
  auto cfg = JudgeConfig(JudgeMode::kPointwise);
  auto judge = Judge::Create(cfg);
  ASSERT_TRUE(judge.ok()) << judge.status();
  // The verdicts are several tokens here: the probability is the product over the verdict's tokens.
  ASSERT_GT(Tok().Encode(cfg.judge_yes, false).size(), 1u);
  auto ids = (*judge)->PointwisePrompt("What is 12 + 30?", "42");
  ASSERT_TRUE(ids.ok());
  EXPECT_EQ(*ids, Tok().Encode(FillTemplate(cfg.judge_template, {{"constitution", "1. Be correct.\n2. Show the steps."},
                                                                 {"prompt", "What is 12 + 30?"},
                                                                 {"completion", "42"}})));
  auto scorer = Scorer::Create(cfg);
  ASSERT_TRUE(scorer.ok()) << scorer.status();
  std::vector<Sample> v(5);
  for (int i = 0; i < 5; ++i) {
    v[i].set_prompt_id("p" + std::to_string(i));
    v[i].set_prompt("What is 12 + " + std::to_string(30 + i) + "?");
    v[i].set_completion(std::string(static_cast<size_t>(i) * 7, 'x') + std::to_string(42 + i));
  }
  auto out = (*scorer)->Score(v, false);
  ASSERT_TRUE(out.ok());
  auto m = model::LoadModel(F().judge).value();
  for (const auto& s : v) {
    ASSERT_TRUE(s.has_reward());
    auto prompt = (*judge)->PointwisePrompt(s.prompt(), s.completion()).value();
    EXPECT_NEAR(s.reward_parts().at("judge"), DirectProbability(m, prompt, cfg.judge_yes, cfg.judge_no), 1e-5);
    EXPECT_FLOAT_EQ(s.reward(), s.reward_parts().at("judge"));
  }
}

TEST(Judge, PairwiseJudgesBothOrdersAndComparesWithinAPromptAndRequest) {
  auto cfg = JudgeConfig(JudgeMode::kPairwise);
  auto judge = Judge::Create(cfg).value();
  auto m = model::LoadModel(F().judge).value();
  const std::string q = "What is 2 + 2?", a = "4", b = "The answer is 5";
  auto p = judge->Pairwise({{q, a, b}, {q, b, a}});
  ASSERT_TRUE(p[0].ok() && p[1].ok());
  // Judging both orders makes the preference antisymmetric, whatever the judge's position bias.
  EXPECT_NEAR(*p[0] + *p[1], 1.0, 1e-9);
  const double ab = DirectProbability(m, judge->PairPrompt(q, a, b).value(), cfg.judge_first, cfg.judge_second);
  const double ba = DirectProbability(m, judge->PairPrompt(q, b, a).value(), cfg.judge_first, cfg.judge_second);
  EXPECT_NEAR(*p[0], 0.5 * (ab + 1.0 - ba), 1e-5);
  EXPECT_GT(std::fabs(ab - (1.0 - ba)), 1e-4) << "a random judge should show some position bias";

  // In the scorer: the mean win probability against the other samples of the same prompt and group.
  auto scorer = Scorer::Create(cfg).value();
  std::vector<Sample> v(6);
  const std::vector<std::string> ids = {"q", "q", "q", "r", "q", "q"};
  const std::vector<std::string> text = {"4", "5", "four", "x", "4", "9"};
  for (size_t i = 0; i < v.size(); ++i) {
    v[i].set_prompt_id(ids[i]);
    v[i].set_prompt(q);
    v[i].set_completion(text[i]);
  }
  const std::vector<int32_t> groups = {0, 0, 0, 0, 1, 1};
  auto out = scorer->Score(v, false, groups).value();
  EXPECT_FALSE(out[3].status.ok()) << "a prompt with one sample cannot be judged pairwise";
  EXPECT_FALSE(v[3].has_reward());
  auto win = [&](const std::string& x, const std::string& y) { return *judge->Pairwise({{q, x, y}})[0]; };
  EXPECT_NEAR(v[0].reward_parts().at("judge"), 0.5 * (win("4", "5") + win("4", "four")), 1e-5);
  EXPECT_NEAR(v[1].reward_parts().at("judge"), 0.5 * (win("5", "4") + win("5", "four")), 1e-5);
  EXPECT_NEAR(v[4].reward_parts().at("judge"), win("4", "9"), 1e-5);  // group 1 only
  EXPECT_NEAR(v[4].reward() + v[5].reward(), 1.0, 1e-5);
}

TEST(Judge, ChatTemplateWrapsThePromptAsTheUserMessage) {
  const std::string dir = F().dir + "/chat-judge";
  fs::create_directories(dir);
  for (const auto& e : fs::directory_iterator(F().judge)) fs::copy(e.path(), dir + "/" + e.path().filename().string());
  Write(dir + "/tokenizer_config.json",
        R"({"chat_template": "{% for m in messages %}<{{ m.role }}>{{ m.content }}</{{ m.role }}>{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"})");
  auto cfg = JudgeConfig(JudgeMode::kPointwise);
  cfg.judge_model = dir;
  cfg.judge_chat_template = true;
  cfg.judge_template = "Q: {prompt} R: {completion}";
  auto judge = Judge::Create(cfg).value();
  EXPECT_EQ(judge->PointwisePrompt("2+2", "4").value(), Tok().Encode("<user>Q: 2+2 R: 4</user><assistant>", false));
  cfg.judge_model = F().judge;  // no chat template there: refused at start
  EXPECT_FALSE(Judge::Create(cfg).ok());
}

TEST(Judge, RefusesBadConfigsAndFailsOnlyTheSampleThatIsTooLong) {
  auto cfg = JudgeConfig(JudgeMode::kPointwise);
  cfg.judge_model = "";
  EXPECT_EQ(Scorer::Create(cfg).status().code(), absl::StatusCode::kInvalidArgument);
  cfg = JudgeConfig(JudgeMode::kPointwise);
  cfg.judge_no = cfg.judge_yes;
  EXPECT_EQ(Scorer::Create(cfg).status().code(), absl::StatusCode::kInvalidArgument);
  cfg = JudgeConfig(JudgeMode::kPointwise);
  cfg.judge_constitution = F().dir + "/missing.txt";
  EXPECT_EQ(Scorer::Create(cfg).status().code(), absl::StatusCode::kNotFound);
  auto scorer = Scorer::Create(JudgeConfig(JudgeMode::kPointwise)).value();
  std::vector<Sample> v(2);
  v[0].set_completion("fine");
  v[1].set_completion(std::string(5000, 'z'));  // beyond the judge's context
  auto out = scorer->Score(v, false).value();
  EXPECT_TRUE(out[0].status.ok());
  EXPECT_EQ(out[1].status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(out[1].status.message().find("judge"), std::string::npos);
}

TEST(Process, SplitsStepsAtTheSeparatorAndDropsBlankOnes) {
  auto steps = SplitSteps("a = 1\n\n  \nb\nc", "\n");
  ASSERT_EQ(steps.size(), 3u);
  EXPECT_EQ(steps[0].text, "a = 1");
  EXPECT_EQ(steps[0].end, 6u);
  EXPECT_EQ(steps[1].text, "b");
  EXPECT_EQ(steps[2].text, "c");
  EXPECT_EQ(steps[2].end, 13u);
  EXPECT_EQ(SplitSteps("x ;; y", ";;").size(), 2u);
}

TEST(Process, ArithmeticCheckerScoresEveryEquationOfAStep) {
  EXPECT_EQ(EvaluateArithmetic("2 + 3 * (4 - 1)"), 11.0);
  EXPECT_EQ(EvaluateArithmetic("-7 / 2"), -3.5);
  EXPECT_FALSE(EvaluateArithmetic("1 / 0"));
  EXPECT_FALSE(EvaluateArithmetic("1 2"));
  EXPECT_FALSE(EvaluateArithmetic("(1 + 2"));
  EXPECT_EQ(CheckArithmeticStep("34 * 2 = 68"), 1.f);
  EXPECT_EQ(CheckArithmeticStep("Step 2: 12 + 68 = 80."), 1.f);
  EXPECT_EQ(CheckArithmeticStep("5 - 7 = -2"), 1.f);
  EXPECT_EQ(CheckArithmeticStep("12 + 68 = 81"), 0.f);
  EXPECT_EQ(CheckArithmeticStep("1 + 1 = 2 and 2 + 2 = 5"), 0.f);
  EXPECT_EQ(CheckArithmeticStep("7 / 2 = 3.5"), 1.f);
  EXPECT_EQ(CheckArithmeticStep("3 + = 4"), 0.f) << "a left side that does not parse is wrong";
  EXPECT_EQ(CheckArithmeticStep("12 + 3 = lots"), 0.f);
  EXPECT_FALSE(CheckArithmeticStep("The answer is 80"));
  EXPECT_FALSE(CheckArithmeticStep("x = 5"));
  EXPECT_EQ(AggregateSteps({1, 0, 1}, StepAggregate::kMin), 0.f);
  EXPECT_EQ(AggregateSteps({1, 0, 0.5}, StepAggregate::kLast), 0.5f);
  EXPECT_NEAR(AggregateSteps({1, 0, 1}, StepAggregate::kMean), 2.f / 3, 1e-6);
  EXPECT_EQ(AggregateSteps({}, StepAggregate::kMean), 0.f);
}

Sample Solution(const std::string& text) {
  Sample s;
  s.set_prompt_id("m");
  for (int32_t id : Tok().Encode("Compute 12 + 34 * 2:", false)) s.add_prompt_ids(id);
  for (int32_t id : Tok().Encode(text, false)) s.add_completion_ids(id);
  s.add_completion_ids(Tok().TokenToId("<|endoftext|>").value());
  s.set_completion(text);
  return s;
}

TEST(Process, CheckerStepRewardsLandOnEachStepsLastToken) {
  RewardConfig cfg;
  cfg.process_weight = 2;
  cfg.tokenizer = F().tokenizer;
  auto scorer = Scorer::Create(cfg).value();
  std::vector<Sample> v = {Solution("34 * 2 = 68\n12 + 68 = 81\nThe answer is 81"), Solution("34 * 2 = 68\n12 + 68 = 80\n")};
  v.push_back(v[0]);
  v.back().clear_completion_ids();  // text only: scored, but no token positions
  auto out = scorer->Score(v, false).value();
  for (const auto& o : out) EXPECT_TRUE(o.status.ok()) << o.status;
  EXPECT_EQ(std::vector<float>(v[0].step_rewards().begin(), v[0].step_rewards().end()), (std::vector<float>{1, 0}));
  EXPECT_FLOAT_EQ(v[0].reward(), 1.f);  // 2 * mean(1, 0)
  EXPECT_EQ(std::vector<float>(v[1].step_rewards().begin(), v[1].step_rewards().end()), (std::vector<float>{1, 1}));
  ASSERT_EQ(v[0].step_ends_size(), 2);
  for (const auto& s : {v[0], v[1]}) {
    for (int k = 0; k < s.step_ends_size(); ++k) {
      // The step's text is complete at its last token and not one token earlier.
      const int e = s.step_ends(k);
      std::vector<int32_t> upto(s.completion_ids().begin(), s.completion_ids().begin() + e + 1);
      std::vector<int32_t> before(s.completion_ids().begin(), s.completion_ids().begin() + e);
      const size_t end = k == 0 ? 12 : 25;  // "34 * 2 = 68\n", then "12 + 68 = 8x\n"
      EXPECT_EQ(Tok().Decode(upto).value().substr(0, end), s.completion().substr(0, end));
      EXPECT_LT(Tok().Decode(before).value().size(), end);
    }
  }
  EXPECT_EQ(v[2].step_rewards_size(), 2);
  EXPECT_EQ(v[2].step_ends_size(), 0);
}

TEST(Process, ModelStepScoresEqualADirectForwardAtTheStepEnds) {
  RewardConfig cfg;
  cfg.process_weight = 1;
  cfg.process_source = ProcessSourceKind::kModel;
  cfg.process_model = F().prm;
  cfg.process_aggregate = StepAggregate::kMin;
  cfg.batch_tokens = 60;
  EXPECT_EQ(Scorer::Create(cfg).status().code(), absl::StatusCode::kInvalidArgument) << "needs a tokenizer";
  cfg.tokenizer = F().tokenizer;
  auto scorer = Scorer::Create(cfg).value();
  std::vector<Sample> v = {Solution("34 * 2 = 68\n12 + 68 = 81\nThe answer is 81"), Solution("one step only"),
                           Solution("a\nb\nc\nd")};
  auto out = scorer->Score(v, false).value();
  auto prm = model::LoadModel(F().prm).value();
  torch::NoGradGuard ng;
  for (const auto& s : v) {
    ASSERT_TRUE(s.has_reward());
    std::vector<int64_t> ids(s.prompt_ids().begin(), s.prompt_ids().end());
    ids.insert(ids.end(), s.completion_ids().begin(), s.completion_ids().end());
    auto scores = prm->Scores(prm->Hidden(torch::tensor(ids).unsqueeze(0)))[0].select(1, 0);
    ASSERT_EQ(s.step_rewards_size(), s.step_ends_size());
    float lowest = 1;
    for (int k = 0; k < s.step_ends_size(); ++k) {
      const float want = torch::sigmoid(scores[s.prompt_ids_size() + s.step_ends(k)]).item<float>();
      EXPECT_NEAR(s.step_rewards(k), want, 1e-5);
      lowest = std::min(lowest, want);
    }
    EXPECT_NEAR(s.reward(), lowest, 1e-5);
  }
  EXPECT_EQ(v[0].step_rewards_size(), 3);
  EXPECT_EQ(v[1].step_rewards_size(), 1);
  EXPECT_EQ(v[2].step_rewards_size(), 4);
  std::vector<Sample> text_only = {v[0]};
  text_only[0].clear_completion_ids();
  text_only[0].clear_prompt_ids();
  auto bad = scorer->Score(text_only, false).value();
  EXPECT_FALSE(bad[0].status.ok()) << "a process reward model needs tokens";
}

}  // namespace
}  // namespace rlhf::scoring
