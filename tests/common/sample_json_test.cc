#include "common/sample_json.h"

#include <google/protobuf/util/message_differencer.h>
#include <gtest/gtest.h>

namespace rlhf {
namespace {

TEST(SampleJson, RoundTripKeepsEveryField) {
  Sample s;
  s.set_prompt_id("p7");
  s.set_prompt_index(7);
  s.set_sample_index(3);
  for (int i : {1, 2, 3}) s.add_prompt_ids(i);
  for (int i : {9, 10}) s.add_completion_ids(i);
  s.add_logprobs(-0.5f);
  s.add_logprobs(-1.25f);
  s.set_policy_version(4);
  s.set_finish_reason(FINISH_REASON_LENGTH);
  s.set_seed(1234567890123ull);
  s.set_temperature(0.7f);
  s.set_prompt("2+2=");
  s.set_completion("4");
  s.set_reward(1.0f);
  (*s.mutable_reward_parts())["exact_match"] = 1.0f;
  s.add_ref_logprobs(-0.4f);
  s.add_ref_logprobs(-1.0f);
  (*s.mutable_extra())["answer"] = "\"4\"";
  (*s.mutable_extra())["meta"] = "{\"level\":2}";
  s.set_rollout_worker(0);  // set, even as 0: written
  s.add_token_versions(3);
  s.add_token_versions(4);
  std::string line = SampleToJson(s);
  EXPECT_NE(line.find("\"rollout_worker\":0"), std::string::npos) << line;
  EXPECT_NE(line.find("\"answer\":\"4\""), std::string::npos) << line;
  EXPECT_NE(line.find("\"finish_reason\":\"length\""), std::string::npos) << line;
  auto back = SampleFromJson(line);
  ASSERT_TRUE(back.ok()) << back.status();
  // (maps have no defined wire order, so compare messages, not bytes)
  EXPECT_TRUE(google::protobuf::util::MessageDifferencer::Equals(*back, s)) << SampleToJson(*back);
  // An empty completion of a text prompt (eos at once) is still written, so readers find the field.
  s.set_completion("");
  EXPECT_NE(SampleToJson(s).find("\"completion\":\"\""), std::string::npos) << SampleToJson(s);
}

TEST(SampleJson, UnknownFieldsPassThrough) {
  auto s = SampleFromJson(R"({"prompt_ids":[1],"completion_ids":[2],"answer":42,"tags":["a"]})");
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->extra().at("answer"), "42");
  EXPECT_EQ(s->extra().at("tags"), "[\"a\"]");
  EXPECT_FALSE(s->has_reward());
}

TEST(SampleJson, BadFieldsAreNamed) {
  auto a = SampleFromJson(R"({"completion_ids":"oops"})");
  ASSERT_FALSE(a.ok());
  EXPECT_NE(a.status().message().find("completion_ids"), std::string::npos);
  auto b = SampleFromJson(R"({"finish_reason":"eos"})");
  ASSERT_FALSE(b.ok());
  EXPECT_NE(b.status().message().find("finish_reason"), std::string::npos);
  auto c = SampleFromJson(R"({"completion_ids":[1,2],"logprobs":[-1]})");
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("logprobs has 1 entries for 2"), std::string::npos);
  EXPECT_FALSE(SampleFromJson("not json").ok());
  EXPECT_FALSE(SampleFromJson("[1,2]").ok());
  auto d = SampleFromJson(R"({"policy_version":"3"})");
  ASSERT_FALSE(d.ok());
  EXPECT_NE(d.status().message().find("policy_version"), std::string::npos);
}

}  // namespace
}  // namespace rlhf
