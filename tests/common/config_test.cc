#include "common/config/config.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>

namespace rlhf::config {
namespace {

struct Demo {
  int64_t layers = 2;                 // test field
  double lr = 1e-3;                   // test field
  bool tie = false;                   // test field
  std::string mode = "token_mean";    // test field
  std::vector<int64_t> ids = {1, 2};  // test field
  static const Section<Demo>& Spec() {
    static const auto* s = [] {
      auto* s = new Section<Demo>("demo");
      s->Add("layers", &Demo::layers, "number of layers", AtLeast(1));
      s->Add("lr", &Demo::lr, "learning rate", InRange(0, 1));
      s->Add("tie", &Demo::tie, "tie embeddings");
      s->Add("mode", &Demo::mode, "aggregation", OneOf({"token_mean", "seq_mean_token_mean"}));
      s->Add("ids", &Demo::ids, "ids");
      return s;
    }();
    return *s;
  }
};

Schema MakeSchema() {
  Schema s;
  Demo::Spec().Register(s);
  return s;
}

TEST(Config, DefaultsComeFromTheStruct) {
  auto c = Config::FromYaml(MakeSchema(), "", {});
  ASSERT_TRUE(c.ok()) << c.status();
  Demo d = Demo::Spec().Read(*c);
  EXPECT_EQ(d.layers, 2);
  EXPECT_DOUBLE_EQ(d.lr, 1e-3);
  EXPECT_FALSE(d.tie);
  EXPECT_EQ(d.mode, "token_mean");
  EXPECT_EQ(d.ids, (std::vector<int64_t>{1, 2}));
}

TEST(Config, FileThenOverrides) {
  auto c = Config::FromYaml(MakeSchema(), "demo:\n  layers: 4\n  lr: 0.5\n", {"demo.layers=6", "demo.ids=[7, 8, 9]",
                                                                             "demo.tie=true"});
  ASSERT_TRUE(c.ok()) << c.status();
  Demo d = Demo::Spec().Read(*c);
  EXPECT_EQ(d.layers, 6);
  EXPECT_DOUBLE_EQ(d.lr, 0.5);
  EXPECT_TRUE(d.tie);
  EXPECT_EQ(d.ids, (std::vector<int64_t>{7, 8, 9}));
}

TEST(Config, UnknownKeyIsNamedWithASuggestion) {
  auto c = Config::FromYaml(MakeSchema(), "demo:\n  layrs: 4\n", {});
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(c.status().message().find("demo.layrs"), std::string::npos) << c.status();
  EXPECT_NE(c.status().message().find("did you mean 'demo.layers'"), std::string::npos) << c.status();
  auto o = Config::FromYaml(MakeSchema(), "", {"demo.mdoe=x"});
  ASSERT_FALSE(o.ok());
  EXPECT_NE(o.status().message().find("demo.mode"), std::string::npos) << o.status();
}

TEST(Config, WrongTypeAndRangeNameTheKey) {
  auto t = Config::FromYaml(MakeSchema(), "demo:\n  layers: four\n", {});
  ASSERT_FALSE(t.ok());
  EXPECT_NE(t.status().message().find("'demo.layers'"), std::string::npos) << t.status();
  EXPECT_NE(t.status().message().find("expected int"), std::string::npos) << t.status();
  auto r = Config::FromYaml(MakeSchema(), "", {"demo.lr=2"});
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("'demo.lr': must be in [0, 1]"), std::string::npos) << r.status();
  auto e = Config::FromYaml(MakeSchema(), "", {"demo.mode=other"});
  ASSERT_FALSE(e.ok());
  EXPECT_NE(e.status().message().find("must be one of"), std::string::npos) << e.status();
  auto l = Config::FromYaml(MakeSchema(), "", {"demo.ids=[1, x]"});
  ASSERT_FALSE(l.ok());
  EXPECT_NE(l.status().message().find("element 1"), std::string::npos) << l.status();
  auto s = Config::FromYaml(MakeSchema(), "demo: [1, 2]\n", {});
  EXPECT_FALSE(s.ok());
}

TEST(Config, SyntaxErrorsAndMissingFiles) {
  auto y = Config::FromYaml(MakeSchema(), "demo:\n  layers: [1,\n", {});
  ASSERT_FALSE(y.ok());
  EXPECT_NE(y.status().message().find("YAML syntax error at line"), std::string::npos) << y.status();
  auto f = Config::Load(MakeSchema(), "/nonexistent/x.yaml", {});
  EXPECT_EQ(f.status().code(), absl::StatusCode::kNotFound);
  auto bad = Config::FromYaml(MakeSchema(), "", {"no_equals_sign"});
  EXPECT_FALSE(bad.ok());
}

TEST(Config, ResolvedYamlLoadsBackToTheSameValues) {
  auto c = Config::FromYaml(MakeSchema(), "", {"demo.layers=9", "demo.mode=seq_mean_token_mean"});
  ASSERT_TRUE(c.ok());
  std::string path = ::testing::TempDir() + "/resolved.yaml";
  std::ofstream(path) << c->ToYaml();
  auto again = Config::Load(MakeSchema(), path, {});
  ASSERT_TRUE(again.ok()) << again.status();
  Demo d = Demo::Spec().Read(*again);
  EXPECT_EQ(d.layers, 9);
  EXPECT_EQ(d.mode, "seq_mean_token_mean");
  std::remove(path.c_str());
}

TEST(Config, MarkdownDocumentsEveryKey) {
  std::string md = MakeSchema().Markdown();
  for (const char* k : {"demo.layers", "demo.lr", "demo.tie", "demo.mode", "demo.ids"}) {
    EXPECT_NE(md.find(k), std::string::npos) << k;
  }
  EXPECT_NE(md.find("number of layers"), std::string::npos);
}

}  // namespace
}  // namespace rlhf::config
