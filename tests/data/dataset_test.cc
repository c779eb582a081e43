#include "common/data/dataset.h"

#include <gtest/gtest.h>

#include <fstream>
#include <set>

#include "common/text/chat_template.h"
#include "common/text/model_text.h"
#include "common/text/tokenizer.h"

namespace rlhf::data {
namespace {

std::string Write(const std::string& name, const std::string& text) {
  std::string p = ::testing::TempDir() + "/data_" + name + ".jsonl";
  std::ofstream(p) << text;
  return p;
}

DataConfig Cfg(const std::string& path) {
  DataConfig c;
  c.path = path;
  return c;
}

TEST(Dataset, EveryKindLoadsAndExtraFieldsPassThrough) {
  struct K {
    std::string line;
    Kind kind;
  };
  std::vector<K> kinds = {
      {R"({"prompt": "2+2=", "completion": "4", "source": "gen"})", Kind::kPromptCompletion},
      {R"({"prompt": [{"role": "user", "content": "hi"}], "completion": [{"role": "assistant", "content": "yo"}]})",
       Kind::kPromptCompletion},
      {R"({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}], "id": 7})",
       Kind::kMessages},
      {R"({"prompt": "p", "chosen": "good", "rejected": "bad", "margin": 1.5})", Kind::kPreference},
      {R"({"prompt": [{"role": "user", "content": "p"}], "chosen": [{"role": "assistant", "content": "a"}], "rejected": [{"role": "assistant", "content": "b"}]})",
       Kind::kPreference},
      {R"({"prompt": "p", "completion": "c", "label": false})", Kind::kKto},
      {R"({"prompt": "What is 6*7?", "answer": 42, "difficulty": "easy"})", Kind::kPromptAnswer},
  };
  for (size_t i = 0; i < kinds.size(); ++i) {
    LoadStats stats;
    auto d = Dataset::Load(Cfg(Write("kind" + std::to_string(i), kinds[i].line + "\n")), &stats);
    ASSERT_TRUE(d.ok()) << kinds[i].line << ": " << d.status();
    EXPECT_EQ(d->kind(), kinds[i].kind) << kinds[i].line;
    EXPECT_EQ(stats.loaded, 1);
  }
  auto pa = Dataset::Load(Cfg(Write("extra", kinds[6].line + "\n")));
  ASSERT_TRUE(pa.ok());
  const auto& e = pa->examples()[0];
  EXPECT_EQ(e.answer, 42);
  EXPECT_EQ(e.extra["difficulty"], "easy");
  EXPECT_FALSE(e.extra.contains("prompt"));
  auto msgs = Dataset::Load(Cfg(Write("msgs", kinds[2].line + "\n")));
  ASSERT_TRUE(msgs.ok());
  EXPECT_EQ(msgs->examples()[0].prompt.size(), 1u);
  EXPECT_EQ(msgs->examples()[0].completion[0]["content"], "yo");
  EXPECT_EQ(msgs->examples()[0].extra["id"], 7);
}

TEST(Dataset, FieldNamesAreRemappable) {
  DataConfig c = Cfg(Write("remap", R"({"question": "q1", "solution": "s1"})" "\n"));
  c.prompt_field = "question";
  c.answer_field = "solution";
  c.kind = "prompt_answer";
  auto d = Dataset::Load(c);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->examples()[0].prompt, "q1");
  EXPECT_EQ(d->examples()[0].answer, "s1");
}

TEST(Dataset, BadLinesNameFileLineAndField) {
  std::string path = Write("bad", "{\"prompt\": \"a\", \"answer\": \"1\"}\n\n{\"prompt\": \"b\"}\n{oops\n"
                                  "{\"prompt\": \"\", \"answer\": \"3\"}\n{\"prompt\": \"c\", \"answer\": [1]}\n");
  auto strict = Dataset::Load(Cfg(path));
  ASSERT_FALSE(strict.ok());
  EXPECT_EQ(strict.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(strict.status().message().find(path + ":3: missing field 'answer'"), std::string::npos) << strict.status();
  DataConfig lenient = Cfg(path);
  lenient.strict = false;
  LoadStats stats;
  auto d = Dataset::Load(lenient, &stats);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(stats.lines, 5);
  EXPECT_EQ(stats.loaded, 1);
  EXPECT_EQ(stats.skipped, 4);
  ASSERT_EQ(stats.first_errors.size(), 4u);
  EXPECT_NE(stats.first_errors[1].find(":4: not a JSON object"), std::string::npos);
  EXPECT_NE(stats.first_errors[2].find(":5: field 'prompt' is empty"), std::string::npos);
  EXPECT_NE(stats.first_errors[3].find(":6: field 'answer' must be a string or a number"), std::string::npos);
  EXPECT_EQ(Dataset::Load(Cfg("/nonexistent.jsonl")).status().code(), absl::StatusCode::kNotFound);
  auto mixed = Dataset::Load(Cfg(Write("mixed", R"({"prompt": "p", "chosen": [{"role": "assistant", "content": "a"}], "rejected": "b"})" "\n")));
  EXPECT_FALSE(mixed.ok());
}

TEST(Dataset, SplitsByPromptHashNeverOverlapAndShuffleIsDeterministic) {
  std::string text;
  for (int i = 0; i < 2000; ++i) {
    // Every prompt twice (e.g. two answers): both copies must land in the same split.
    for (int k = 0; k < 2; ++k) text += R"({"prompt": "q)" + std::to_string(i) + R"(", "answer": ")" + std::to_string(k) + "\"}\n";
  }
  DataConfig c = Cfg(Write("split", text));
  c.heldout_fraction = 0.2;
  LoadStats stats;
  auto d = Dataset::Load(c, &stats);
  ASSERT_TRUE(d.ok());
  std::set<std::string> train, held;
  for (const auto& e : d->examples()) (e.split == Split::kTrain ? train : held).insert(e.prompt_id);
  for (const auto& id : held) EXPECT_EQ(train.count(id), 0u);
  EXPECT_NEAR(static_cast<double>(held.size()) / 2000, 0.2, 0.03);
  EXPECT_EQ(stats.train + stats.heldout, 4000);
  auto again = Dataset::Load(c);
  EXPECT_EQ(again->Indices(Split::kHeldout), d->Indices(Split::kHeldout));  // same split every time
  auto a = d->Shuffled(Split::kTrain, 7, 0), b = d->Shuffled(Split::kTrain, 7, 0), e1 = d->Shuffled(Split::kTrain, 7, 1);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, e1);
  auto sorted = a;
  std::sort(sorted.begin(), sorted.end());
  EXPECT_EQ(sorted, d->Indices(Split::kTrain));
  c.split_salt = "other";
  auto resplit = Dataset::Load(c);
  EXPECT_NE(resplit->Indices(Split::kHeldout), d->Indices(Split::kHeldout));
}

text::Tokenizer DemoTokenizer() {
  std::vector<std::string> corpus = {"What is 2+2? 4", "hello world", "<|im_start|>user hi<|im_end|>"};
  auto json = text::Tokenizer::TrainByteLevelBpe(corpus, 50, {"<|endoftext|>", "<|im_start|>", "<|im_end|>"});
  return std::move(text::Tokenizer::FromJson(json, "demo").value());
}

// The text side of a model folder without a chat template, its eos the demo tokenizer's <|endoftext|>.
text::ModelText DemoText() {
  text::ModelText t{DemoTokenizer()};
  t.eos = *t.tokenizer.TokenToId("<|endoftext|>");
  return t;
}

TEST(Sft, TextExamplesEndWithTheTrainedEos) {
  auto text = DemoText();
  const auto& tok = text.tokenizer;
  const int32_t eos = text.eos;
  auto s = BuildSft(ojson("What is 2+2?"), ojson(" 4"), text);
  ASSERT_TRUE(s.ok()) << s.status();
  ASSERT_EQ(s->ids.size(), s->labels.size());
  EXPECT_EQ(s->ids.back(), eos);
  EXPECT_EQ(s->labels.back(), 1);
  EXPECT_EQ(s->labels.front(), 0);
  const size_t prompt_len = tok.Encode("What is 2+2?").size();
  for (size_t i = 0; i < s->ids.size(); ++i) EXPECT_EQ(s->labels[i], i >= prompt_len ? 1 : 0) << i;
}

TEST(Sft, ConversationsTrainOnTheEndOfTurnToken) {
  auto plain = DemoText();
  auto chat = text::ChatTemplate::Parse(
      "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + "
      "'\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}");
  ASSERT_TRUE(chat.ok());
  auto text = DemoText();
  text.chat.emplace(text::ChatTemplate::FromFolderResult{std::move(*chat), "", "<|im_end|>"});
  const auto& tok = text.tokenizer;
  ojson prompt = ojson::parse(R"([{"role": "user", "content": "What is 2+2?"}])");
  ojson completion = ojson::parse(R"([{"role": "assistant", "content": "4"}])");
  auto s = BuildSft(prompt, completion, text);
  ASSERT_TRUE(s.ok()) << s.status();
  // The trained part decodes to the assistant text and its end-of-turn token.
  std::vector<int32_t> trained;
  for (size_t i = 0; i < s->ids.size(); ++i) {
    if (s->labels[i]) trained.push_back(s->ids[i]);
  }
  EXPECT_EQ(*tok.Decode(trained), "4<|im_end|>\n");
  auto prompt_text = text.RenderPrompt(prompt);
  EXPECT_EQ(*prompt_text, "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n");
  EXPECT_EQ(BuildSft(prompt, completion, plain).status().code(), absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace rlhf::data
