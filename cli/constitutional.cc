// rlhf constitutional: constitutional data (RLAIF). The policy answers each prompt, critiques its answer
// against a constitution, and revises it; the (original, revision) pairs become SFT data (prompt ->
// revision) and preference data (revision chosen over the original), in the TRL JSONL forms `rlhf train`
// reads. Three batched generation rounds over the KV-cache generator; a trace keeps every text.
#include <spdlog/spdlog.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "cli/command.h"
#include "common/file.h"
#include "common/data/dataset.h"
#include "common/model/checkpoint.h"
#include "common/text/chat_template.h"
#include "common/text/model_text.h"
#include "common/text/tokenizer.h"
#include "rollout/generator.h"
#include "services/scoring/judge.h"

namespace rlhf::cli {

namespace {
namespace fs = std::filesystem;

struct ConstitutionalConfig {
  std::string model;         // the policy that answers, critiques and revises
  std::string constitution;  // text file of principles, filled in for {constitution}
  std::string out;           // output folder: sft.jsonl, pairs.jsonl, trace.jsonl
  std::string critique_template =
      "{constitution}\n\nPrompt: {prompt}\nResponse: {response}\n"
      "Point out where the response breaks the principles above.\nCritique:";
  std::string revision_template =
      "{constitution}\n\nPrompt: {prompt}\nResponse: {response}\nCritique: {critique}\n"
      "Rewrite the response so that it follows the principles.\nRevision:";
  bool chat_template = false;  // each round's text is the user turn of the model's chat template
  int64_t max_new_tokens = 128;           // of the response
  int64_t critique_max_new_tokens = 128;
  int64_t revision_max_new_tokens = 128;
  double temperature = 0.7;
  double top_p = 0.95;
  int64_t slots = 16;                     // sequences decoded together
  static const config::Section<ConstitutionalConfig>& Spec() {
    static const auto* s = [] {
      using C = ConstitutionalConfig;
      auto* s = new config::Section<C>("constitutional");
      s->Add("model", &C::model, "the policy that answers, critiques and revises (HF folder with tokenizer files)");
      s->Add("constitution", &C::constitution, "text file of principles, filled in for {constitution}");
      s->Add("out", &C::out, "output folder: sft.jsonl (prompt, revision), pairs.jsonl (revision over original), trace.jsonl");
      s->Add("critique_template", &C::critique_template, "critique prompt: {constitution}, {prompt}, {response}");
      s->Add("revision_template", &C::revision_template,
             "revision prompt: {constitution}, {prompt}, {response}, {critique}");
      s->Add("chat_template", &C::chat_template, "send each round's text as the user turn of the model's chat template");
      s->Add("max_new_tokens", &C::max_new_tokens, "longest response", config::AtLeast(1));
      s->Add("critique_max_new_tokens", &C::critique_max_new_tokens, "longest critique", config::AtLeast(1));
      s->Add("revision_max_new_tokens", &C::revision_max_new_tokens, "longest revision", config::AtLeast(1));
      s->Add("temperature", &C::temperature, "sampling temperature of the three rounds; 0 = greedy", config::AtLeast(0));
      s->Add("top_p", &C::top_p, "nucleus mass; 1 = off", config::InRange(0, 1));
      s->Add("slots", &C::slots, "sequences decoded together", config::AtLeast(1));
      return s;
    }();
    return *s;
  }
};

config::Section<data::DataConfig> PromptDataSection() {
  config::Section<data::DataConfig> s("constitutional.data");
  data::DataConfig::AddTo(s);
  return s;
}

std::string Trim(std::string s) {
  const auto b = s.find_first_not_of(" \t\r\n");
  if (b == std::string::npos) return "";
  const auto e = s.find_last_not_of(" \t\r\n");
  return s.substr(b, e - b + 1);
}
}  // namespace

Command ConstitutionalCommand() {
  Command c;
  c.name = "constitutional";
  c.help = "the policy critiques and revises its own answers against a constitution: SFT and preference data";
  c.add_sections = [](config::Schema& s) {
    ConstitutionalConfig::Spec().Register(s);
    PromptDataSection().Register(s);
  };
  c.flags = {{"model", "constitutional.model", "policy folder"},
             {"prompts", "constitutional.data.path", "prompts JSONL (prompt field: text or messages)"},
             {"constitution", "constitutional.constitution", "principles (text file)"},
             {"out", "constitutional.out", "output folder"}};
  c.body = [](const Context& ctx) -> absl::Status {
    const auto cfg = ConstitutionalConfig::Spec().Read(ctx.config);
    auto dc = PromptDataSection().Read(ctx.config);
    if (cfg.model.empty() || dc.path.empty() || cfg.constitution.empty() || cfg.out.empty()) {
      return absl::InvalidArgumentError("give --model DIR --prompts F.jsonl --constitution F.txt --out DIR");
    }
    std::ifstream cin_(cfg.constitution);
    if (!cin_) return absl::NotFoundError(absl::StrCat("cannot read the constitution ", cfg.constitution));
    std::stringstream ss;
    ss << cin_.rdbuf();
    const std::string constitution = Trim(ss.str());
    dc.heldout_fraction = 0;  // every prompt
    ASSIGN_OR_RETURN(auto ds, data::Dataset::Load(dc));
    ASSIGN_OR_RETURN(auto load, model::LoadOptionsForDtype(""));
    ASSIGN_OR_RETURN(auto net, model::LoadModel(cfg.model, load));
    ASSIGN_OR_RETURN(auto mt, text::ModelText::Load(cfg.model));
    if (cfg.chat_template) RETURN_IF_ERROR(mt.chat_status);

    // `text` (or a message list) as a prompt: the user turn of the chat template when asked.
    auto as_prompt = [&](const data::ojson& prompt) -> data::ojson {
      if (cfg.chat_template && prompt.is_string()) {
        return data::ojson::array({{{"role", "user"}, {"content", prompt.get<std::string>()}}});
      }
      return prompt;
    };
    auto render = [&](const data::ojson& prompt) { return mt.RenderPrompt(as_prompt(prompt)); };
    // One batched round: a completion for each prompt (a string, or messages), encoded as every role does.
    auto round = [&](const std::vector<data::ojson>& texts, int64_t max_new, uint64_t salt)
        -> absl::StatusOr<std::vector<std::string>> {
      std::vector<rollout::PromptInput> in;
      int64_t longest = 0;
      for (size_t i = 0; i < texts.size(); ++i) {
        rollout::PromptInput p;
        p.prompt_id = absl::StrCat(salt, "-", i);
        p.prompt_index = static_cast<int64_t>(i);
        ASSIGN_OR_RETURN(p.ids, mt.EncodePrompt(as_prompt(texts[i])));
        longest = std::max<int64_t>(longest, static_cast<int64_t>(p.ids.size()));
        in.push_back(std::move(p));
      }
      if (longest + max_new > net->config().max_position_embeddings) {
        return absl::InvalidArgumentError(absl::StrCat("a prompt of ", longest, " tokens plus ", max_new,
                                                       " new ones exceeds the model's context"));
      }
      rollout::GeneratorOptions go;
      go.slots = cfg.slots;
      go.capacity = longest + max_new;
      rollout::SamplingParams sp;
      sp.temperature = cfg.temperature;
      sp.top_p = cfg.top_p;
      sp.max_new_tokens = max_new;
      sp.seed = static_cast<uint64_t>(ctx.run.seed);
      rollout::Generator gen(net.get(), &mt.tokenizer, mt.stop_ids, go);
      ASSIGN_OR_RETURN(auto out, gen.Generate(in, 1, sp));
      std::vector<std::string> texts_out(texts.size());
      for (const auto& g : out) texts_out[static_cast<size_t>(g.prompt_index)] = Trim(g.completion);
      return texts_out;
    };

    const auto& ex = ds.examples();
    std::vector<data::ojson> prompts;
    std::vector<std::string> shown;
    for (const auto& e : ex) {
      ASSIGN_OR_RETURN(auto r, render(e.prompt));
      prompts.push_back(e.prompt);
      shown.push_back(e.prompt.is_string() ? e.prompt.get<std::string>() : r);  // what the templates show
    }
    spdlog::info("constitutional: {} prompts; round 1/3: responses", ex.size());
    ASSIGN_OR_RETURN(auto responses, round(prompts, cfg.max_new_tokens, 1));
    std::vector<data::ojson> critique_in, revision_in;
    for (size_t i = 0; i < ex.size(); ++i) {
      critique_in.push_back(scoring::FillTemplate(
          cfg.critique_template, {{"constitution", constitution}, {"prompt", shown[i]}, {"response", responses[i]}}));
    }
    spdlog::info("constitutional: round 2/3: critiques");
    ASSIGN_OR_RETURN(auto critiques, round(critique_in, cfg.critique_max_new_tokens, 2));
    for (size_t i = 0; i < ex.size(); ++i) {
      revision_in.push_back(scoring::FillTemplate(cfg.revision_template, {{"constitution", constitution},
                                                                         {"prompt", shown[i]},
                                                                         {"response", responses[i]},
                                                                         {"critique", critiques[i]}}));
    }
    spdlog::info("constitutional: round 3/3: revisions");
    ASSIGN_OR_RETURN(auto revisions, round(revision_in, cfg.revision_max_new_tokens, 3));

    // Outputs, each written to a temporary name and renamed.
    fs::create_directories(cfg.out);
    int64_t pairs = 0, unchanged = 0, empty = 0;
    std::ostringstream sft, pref, trace;
    for (size_t i = 0; i < ex.size(); ++i) {
      data::ojson t = {{"prompt", ex[i].prompt}, {"response", responses[i]}, {"critique", critiques[i]},
                       {"revision", revisions[i]}};
      trace << t.dump() << "\n";
      if (revisions[i].empty()) {
        ++empty;
        continue;
      }
      sft << data::ojson{{"prompt", ex[i].prompt}, {"completion", revisions[i]}}.dump() << "\n";
      if (revisions[i] == responses[i] || responses[i].empty()) {
        ++unchanged;
        continue;
      }
      pref << data::ojson{{"prompt", ex[i].prompt}, {"chosen", revisions[i]}, {"rejected", responses[i]}}.dump() << "\n";
      ++pairs;
    }
    for (const auto& [name, body] : {std::pair<std::string, std::string>{"sft.jsonl", sft.str()},
                                     {"pairs.jsonl", pref.str()}, {"trace.jsonl", trace.str()}}) {
      RETURN_IF_ERROR(WriteFileAtomic((fs::path(cfg.out) / name).string(), body));
    }
    std::cout << absl::StrCat(ex.size(), " prompts: ", pairs, " preference pairs, ", ex.size() - empty,
                              " SFT examples (", unchanged, " revisions equal to the response, ", empty,
                              " empty revisions) in ", cfg.out)
              << std::endl;
    return absl::OkStatus();
  };
  return c;
}

}  // namespace rlhf::cli
