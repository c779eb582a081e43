// rlhf tokenize: token ids of a text (JSON array on stdout), or the text of ids with --decode.
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "cli/command.h"
#include "common/text/tokenizer.h"

namespace rlhf::cli {

namespace {
struct TokenizeConfig {
  std::string model;                // model folder (or tokenizer.json)
  std::string text;                 // the text (or, with decode, the ids: "1,2,3" or "[1, 2, 3]")
  std::string file;                 // read the text from this file instead
  bool add_special_tokens = true;   // apply the post-processor (BOS etc.)
  bool decode = false;              // decode ids instead of encoding text
  static const config::Section<TokenizeConfig>& Spec() {
    static const auto* s = [] {
      auto* s = new config::Section<TokenizeConfig>("tokenize");
      s->Add("model", &TokenizeConfig::model, "model folder or tokenizer.json");
      s->Add("text", &TokenizeConfig::text, "text to encode (with decode: ids as 1,2,3 or a JSON array)");
      s->Add("file", &TokenizeConfig::file, "file holding the text (instead of text)");
      s->Add("add_special_tokens", &TokenizeConfig::add_special_tokens,
             "apply the tokenizer's post-processor (e.g. a BOS token); --no-special sets false");
      s->Add("decode", &TokenizeConfig::decode, "decode ids to text instead of encoding");
      return s;
    }();
    return *s;
  }
};
}  // namespace

Command TokenizeCommand() {
  Command c;
  c.name = "tokenize";
  c.help = "encode text to token ids (a JSON array) with a model's tokenizer.json, or decode ids";
  c.add_sections = [](config::Schema& s) { TokenizeConfig::Spec().Register(s); };
  c.quiet_tool = true;
  c.flags = {
      {"model", "tokenize.model", "model folder or tokenizer.json"},
      {"text", "tokenize.text", "text (or ids with --decode)"},
      {"file", "tokenize.file", "read the text from a file"},
      {"no-special", "tokenize.add_special_tokens", "do not add special tokens", true},
      {"decode", "tokenize.decode", "decode ids", true},
  };
  // --no-special is a switch that must set the key to false.
  c.flags[3].switch_value = "false";
  c.body = [](const Context& ctx) -> absl::Status {
    auto cfg = TokenizeConfig::Spec().Read(ctx.config);
    if (cfg.model.empty()) return absl::InvalidArgumentError("no tokenizer: give --model DIR");
    ASSIGN_OR_RETURN(auto tok, text::Tokenizer::FromFile(cfg.model));
    std::string input = cfg.text;
    if (!cfg.file.empty()) {
      std::ifstream in(cfg.file, std::ios::binary);
      if (!in) return absl::NotFoundError(absl::StrCat("cannot open --file ", cfg.file));
      std::stringstream ss;
      ss << in.rdbuf();
      input = ss.str();
    }
    if (cfg.decode) {
      std::vector<int32_t> ids;
      auto j = nlohmann::json::parse(input, nullptr, false);
      if (!j.is_discarded() && j.is_array()) {
        for (const auto& x : j) {
          if (!x.is_number_integer()) return absl::InvalidArgumentError("ids must be integers");
          ids.push_back(x.get<int32_t>());
        }
      } else {
        for (absl::string_view part : absl::StrSplit(input, ',', absl::SkipWhitespace())) {
          int32_t id = 0;
          if (!absl::SimpleAtoi(part, &id)) {
            return absl::InvalidArgumentError(absl::StrCat("'", part, "' is not a token id"));
          }
          ids.push_back(id);
        }
      }
      ASSIGN_OR_RETURN(auto text, tok.Decode(ids, !cfg.add_special_tokens));
      std::cout << text << std::endl;
      return absl::OkStatus();
    }
    std::cout << nlohmann::json(tok.Encode(input, cfg.add_special_tokens)).dump() << std::endl;
    return absl::OkStatus();
  };
  return c;
}

}  // namespace rlhf::cli
