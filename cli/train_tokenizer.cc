// rlhf train-tokenizer: a small byte-level BPE tokenizer for demos, trained on a corpus, written as a
// tokenizer.json (that HF tokenizers loads and encodes identically) plus a tokenizer_config.json with the
// special tokens and a ChatML chat template.
#include <spdlog/spdlog.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "cli/command.h"
#include "common/file.h"
#include "common/text/tokenizer.h"

namespace rlhf::cli {

namespace {
struct TrainTokenizerConfig {
  std::string corpus;  // text file (one document per line) or JSONL (every string field is text)
  int64_t merges = 1000;  // number of BPE merges
  std::vector<std::string> special_tokens = {"<|endoftext|>", "<|im_start|>", "<|im_end|>"};  // added after the merges
  std::string eos_token = "<|im_end|>";  // eos_token of tokenizer_config.json (end of an assistant turn)
  std::string pad_token = "<|endoftext|>";
  std::string out;  // output folder
  static const config::Section<TrainTokenizerConfig>& Spec() {
    static const auto* s = [] {
      using T = TrainTokenizerConfig;
      auto* s = new config::Section<T>("tokenizer_train");
      s->Add("corpus", &T::corpus, "text file (a document per line) or JSONL (its string fields are the text)");
      s->Add("merges", &T::merges, "number of BPE merges", config::InRange(1, 200000));
      s->Add("special_tokens", &T::special_tokens, "special tokens added after the merges");
      s->Add("eos_token", &T::eos_token, "eos_token written to tokenizer_config.json");
      s->Add("pad_token", &T::pad_token, "pad_token written to tokenizer_config.json");
      s->Add("out", &T::out, "output folder (tokenizer.json, tokenizer_config.json)");
      return s;
    }();
    return *s;
  }
};

const char* kChatMlTemplate =
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + "
    "'\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

void CollectStrings(const nlohmann::json& j, std::vector<std::string>* out) {
  if (j.is_string()) out->push_back(j.get<std::string>());
  if (j.is_array() || j.is_object()) {
    for (const auto& x : j) CollectStrings(x, out);
  }
}
}  // namespace

Command TrainTokenizerCommand() {
  Command c;
  c.name = "train-tokenizer";
  c.help = "train a small byte-level BPE tokenizer (tokenizer.json + tokenizer_config.json with ChatML)";
  c.add_sections = [](config::Schema& s) { TrainTokenizerConfig::Spec().Register(s); };
  c.flags = {{"corpus", "tokenizer_train.corpus", "text or JSONL file"},
             {"merges", "tokenizer_train.merges", "number of merges"},
             {"out", "tokenizer_train.out", "output folder"}};
  c.body = [](const Context& ctx) -> absl::Status {
    namespace fs = std::filesystem;
    auto cfg = TrainTokenizerConfig::Spec().Read(ctx.config);
    if (cfg.corpus.empty() || cfg.out.empty()) return absl::InvalidArgumentError("give --corpus FILE and --out DIR");
    std::ifstream in(cfg.corpus);
    if (!in) return absl::NotFoundError(absl::StrCat("cannot open corpus ", cfg.corpus));
    const bool jsonl = fs::path(cfg.corpus).extension() == ".jsonl";
    std::vector<std::string> texts;
    std::string line;
    while (std::getline(in, line)) {
      if (!jsonl) {
        texts.push_back(line + "\n");
        continue;
      }
      auto j = nlohmann::json::parse(line, nullptr, false);
      if (!j.is_discarded()) CollectStrings(j, &texts);
    }
    if (texts.empty()) return absl::InvalidArgumentError(absl::StrCat(cfg.corpus, " holds no text"));
    std::string json = text::Tokenizer::TrainByteLevelBpe(texts, static_cast<int>(cfg.merges), cfg.special_tokens);
    ASSIGN_OR_RETURN(auto tok, text::Tokenizer::FromJson(json, "trained tokenizer"));
    for (const auto* t : {&cfg.eos_token, &cfg.pad_token}) {
      if (!t->empty() && !tok.TokenToId(*t)) {
        return absl::InvalidArgumentError(absl::StrCat("token '", *t, "' is not among tokenizer_train.special_tokens"));
      }
    }
    std::error_code ec;
    fs::create_directories(cfg.out, ec);
    if (ec) return FileError(ec.value(), "create", cfg.out);
    RETURN_IF_ERROR(WriteFileAtomic((fs::path(cfg.out) / "tokenizer.json").string(), json));
    nlohmann::json tc = {{"tokenizer_class", "PreTrainedTokenizerFast"}, {"model_max_length", 4096},
                         {"bos_token", nullptr}, {"eos_token", cfg.eos_token}, {"pad_token", cfg.pad_token},
                         {"add_bos_token", false}, {"chat_template", kChatMlTemplate}};
    RETURN_IF_ERROR(WriteFileAtomic((fs::path(cfg.out) / "tokenizer_config.json").string(), tc.dump(2) + "\n"));
    spdlog::info("train-tokenizer: {} texts, vocabulary {} tokens, written to {}", texts.size(), tok.vocab_size(), cfg.out);
    return absl::OkStatus();
  };
  return c;
}

}  // namespace rlhf::cli
