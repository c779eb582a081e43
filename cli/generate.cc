// rlhf generate: offline batched generation into the shared sample JSONL form, with a progress line.
#include <spdlog/spdlog.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "cli/command.h"
#include "common/file.h"
#include "common/data/dataset.h"
#include "common/model/checkpoint.h"
#include "common/sample_json.h"
#include "common/text/chat_template.h"
#include "common/text/model_text.h"
#include "common/text/tokenizer.h"
#include "rollout/generator.h"

namespace rlhf::cli {

namespace {
struct GenerateConfig {
  std::string model;                // model folder
  std::string prompts;              // JSONL: {"prompt": text} or {"prompt_ids": [...]}, other fields passed through
  std::string out;                  // output JSONL of samples
  int64_t n = 1;                    // samples per prompt
  int64_t max_new_tokens = 64;
  double temperature = 1.0;         // 0 = greedy
  int64_t top_k = 0;
  double top_p = 1.0;
  double min_p = 0.0;
  std::vector<std::string> stop;    // stop strings
  bool chat_template = false;       // render text prompts as a user turn with the model's chat template
  int64_t slots = 16;               // sequences decoded together
  int64_t capacity = 0;             // KV cache per sequence; 0 = longest prompt + max_new_tokens
  std::string dtype;                // "" = the checkpoint's (measured choice for bf16), float32, bfloat16
  static const config::Section<GenerateConfig>& Spec() {
    static const auto* s = [] {
      using G = GenerateConfig;
      auto* s = new config::Section<G>("generate");
      s->Add("model", &G::model, "model folder");
      s->Add("prompts", &G::prompts, "JSONL of {\"prompt\": text} or {\"prompt_ids\": [...]} (other fields pass through)");
      s->Add("out", &G::out, "output JSONL of samples");
      s->Add("n", &G::n, "samples per prompt", config::AtLeast(1));
      s->Add("max_new_tokens", &G::max_new_tokens, "longest completion", config::AtLeast(1));
      s->Add("temperature", &G::temperature, "sampling temperature; 0 = greedy", config::AtLeast(0));
      s->Add("top_k", &G::top_k, "keep the k most likely tokens; 0 = off", config::AtLeast(0));
      s->Add("top_p", &G::top_p, "nucleus mass; 1 = off", config::InRange(0, 1));
      s->Add("min_p", &G::min_p, "keep tokens with p >= min_p * p_max; 0 = off", config::InRange(0, 1));
      s->Add("stop", &G::stop, "stop strings");
      s->Add("chat_template", &G::chat_template, "render text prompts as a user turn with the chat template");
      s->Add("slots", &G::slots, "sequences decoded together", config::AtLeast(1));
      s->Add("capacity", &G::capacity, "KV cache length per sequence; 0 = longest prompt + max_new_tokens",
             config::AtLeast(0));
      s->Add("dtype", &G::dtype, "compute dtype: \"\" = the checkpoint's, float32, bfloat16",
             config::OneOf({"", "float32", "bfloat16", "f32", "bf16"}));
      return s;
    }();
    return *s;
  }
};

}  // namespace

Command GenerateCommand() {
  Command c;
  c.name = "generate";
  c.help = "generate samples for a JSONL of prompts into the shared sample JSONL form";
  c.add_sections = [](config::Schema& s) { GenerateConfig::Spec().Register(s); };
  c.flags = {{"model", "generate.model", "model folder"},
             {"prompts", "generate.prompts", "prompts JSONL"},
             {"out", "generate.out", "output JSONL"},
             {"n", "generate.n", "samples per prompt"},
             {"max-new-tokens", "generate.max_new_tokens", "longest completion"},
             {"temperature", "generate.temperature", "0 = greedy"},
             {"top-p", "generate.top_p", "nucleus mass"},
             {"top-k", "generate.top_k", "top-k"},
             {"min-p", "generate.min_p", "min-p"},
             {"seed", "run.seed", "run seed"},
             {"chat", "generate.chat_template", "apply the chat template to text prompts", true}};
  c.body = [](const Context& ctx) -> absl::Status {
    auto cfg = GenerateConfig::Spec().Read(ctx.config);
    if (cfg.model.empty() || cfg.prompts.empty() || cfg.out.empty()) {
      return absl::InvalidArgumentError("give --model DIR --prompts F.jsonl --out samples.jsonl");
    }
    ASSIGN_OR_RETURN(auto load, model::LoadOptionsForDtype(cfg.dtype));
    // The light parts first: a prompt that cannot fit is refused before the weights are loaded.
    ASSIGN_OR_RETURN(const auto hf, model::LoadHfConfig(cfg.model));
    const int64_t context = hf.max_position_embeddings;
    ASSIGN_OR_RETURN(auto mt, text::ModelText::Load(cfg.model));
    if (cfg.chat_template) RETURN_IF_ERROR(mt.chat_status);
    // Prompts.
    std::ifstream in(cfg.prompts);
    if (!in) return absl::NotFoundError(absl::StrCat("cannot open --prompts ", cfg.prompts));
    std::vector<rollout::PromptInput> prompts;
    std::vector<nlohmann::ordered_json> lines;
    std::vector<std::string> prompt_texts;
    std::string line;
    int64_t n = 0;
    while (std::getline(in, line)) {
      ++n;
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
      auto j = nlohmann::ordered_json::parse(line, nullptr, false);
      auto bad = [&](const std::string& what) {
        return absl::InvalidArgumentError(absl::StrCat(cfg.prompts, ":", n, ": ", what));
      };
      if (j.is_discarded() || !j.is_object()) return bad("not a JSON object");
      rollout::PromptInput p;
      p.prompt_index = static_cast<int64_t>(prompts.size());
      std::string text;
      if (j.contains("prompt_ids")) {
        if (!j["prompt_ids"].is_array()) return bad("field 'prompt_ids' must be a list of token ids");
        for (const auto& x : j["prompt_ids"]) {
          if (!x.is_number_integer()) return bad("field 'prompt_ids' must hold integers");
          p.ids.push_back(x.get<int32_t>());
        }
      } else if (j.contains("prompt") && (j["prompt"].is_string() || j["prompt"].is_array())) {
        nlohmann::ordered_json pr = j["prompt"];
        if (cfg.chat_template && pr.is_string()) {
          pr = nlohmann::ordered_json::array({{{"role", "user"}, {"content", pr.get<std::string>()}}});
        }
        if (!cfg.chat_template && pr.is_array()) return bad("conversational data needs a chat template (use --chat)");
        auto encoded = mt.TokenizePrompt(pr);
        if (!encoded.ok()) return bad(std::string(encoded.status().message()));
        text = std::move(encoded->text);
        p.ids = std::move(encoded->ids);
      } else {
        return bad("needs 'prompt' (text or messages) or 'prompt_ids'");
      }
      if (static_cast<int64_t>(p.ids.size()) >= context - 1) {
        return bad(absl::StrCat("the prompt has ", p.ids.size(), " tokens; the model's context is ", context,
                                " (max_position_embeddings), and a completion needs at least one more: shorten it"));
      }
      p.prompt_id = j.contains("id") ? j["id"].dump() : data::HashText(nlohmann::json(p.ids).dump());
      prompts.push_back(std::move(p));
      lines.push_back(std::move(j));
      prompt_texts.push_back(text);
    }
    if (prompts.empty()) return absl::InvalidArgumentError(absl::StrCat(cfg.prompts, " holds no prompts"));
    int64_t longest = 0;
    for (const auto& p : prompts) longest = std::max<int64_t>(longest, static_cast<int64_t>(p.ids.size()));
    rollout::GeneratorOptions go;
    go.slots = cfg.slots;
    // Never beyond the model's context: a completion that reaches it ends there (finish_reason "length"),
    // with prompt + completion <= context (the cache holds one token fewer: the last one is never fed back).
    go.capacity = cfg.capacity > 0 ? cfg.capacity : std::min(longest + cfg.max_new_tokens, context - 1);
    ASSIGN_OR_RETURN(auto net, model::LoadModel(cfg.model, load));
    rollout::SamplingParams sp;
    sp.temperature = cfg.temperature;
    sp.top_k = cfg.top_k;
    sp.top_p = cfg.top_p;
    sp.min_p = cfg.min_p;
    sp.max_new_tokens = cfg.max_new_tokens;
    sp.stop = cfg.stop;
    sp.seed = static_cast<uint64_t>(ctx.run.seed);
    rollout::Generator gen(net.get(), &mt.tokenizer, mt.stop_ids, go);
    const int64_t total = static_cast<int64_t>(prompts.size()) * cfg.n;
    int64_t finished = 0, tokens = 0;
    const auto start = std::chrono::steady_clock::now();
    auto last_print = start;
    auto progress = [&](bool final) {
      double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      double rate = secs > 0 ? tokens / secs : 0;
      double eta = finished > 0 ? secs * (total - finished) / finished : 0;
      int bar = static_cast<int>(30.0 * finished / total);
      std::fprintf(stderr, "\r[%s%s] %lld/%lld samples, %.0f tok/s, ETA %.0fs%s", std::string(bar, '#').c_str(),
                   std::string(30 - bar, ' ').c_str(), static_cast<long long>(finished), static_cast<long long>(total),
                   rate, eta, final ? "\n" : "");
    };
    auto out = gen.Generate(prompts, cfg.n, sp, [&](const rollout::Generated& g) {
      ++finished;
      tokens += static_cast<int64_t>(g.completion_ids.size());
      auto now = std::chrono::steady_clock::now();
      if (std::chrono::duration<double>(now - last_print).count() > 0.5) progress(false), last_print = now;
    });
    if (!out.ok()) return out.status();
    progress(true);
    RETURN_IF_ERROR(WriteFileAtomic(cfg.out, [&](FileSink& o) -> absl::Status {
      for (const auto& g : *out) {
        Sample s;
        const auto& p = prompts[g.prompt_index];
        s.set_prompt_id(p.prompt_id);
        s.set_prompt_index(g.prompt_index);
        s.set_sample_index(static_cast<int32_t>(g.sample_index));
        for (int32_t id : p.ids) s.add_prompt_ids(id);
        for (int32_t id : g.completion_ids) s.add_completion_ids(id);
        for (float lp : g.logprobs) s.add_logprobs(lp);
        s.set_policy_version(0);
        s.set_finish_reason(g.stopped ? FINISH_REASON_STOP : FINISH_REASON_LENGTH);
        s.set_seed(g.seed);
        s.set_temperature(static_cast<float>(cfg.temperature));
        if (!prompt_texts[g.prompt_index].empty()) s.set_prompt(prompt_texts[g.prompt_index]);
        s.set_completion(g.completion);
        for (const auto& [k, v] : lines[g.prompt_index].items()) {
          if (k != "prompt" && k != "prompt_ids") (*s.mutable_extra())[k] = v.dump();
        }
        RETURN_IF_ERROR(o.Write(SampleToJson(s) + "\n"));
      }
      return absl::OkStatus();
    }));
    double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    spdlog::info("generate: {} samples, {} tokens in {:.1f}s ({:.0f} tok/s), written to {}", out->size(), tokens, secs,
                 tokens / std::max(secs, 1e-9), cfg.out);
    return absl::OkStatus();
  };
  return c;
}

}  // namespace rlhf::cli
