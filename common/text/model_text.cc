#include "common/text/model_text.h"

#include <algorithm>
#include <filesystem>
#include <fstream>

namespace rlhf::text {

namespace fs = std::filesystem;
using ojson = nlohmann::ordered_json;

namespace {

// The JSON object of `path`; an empty object when the file is missing or is not one.
nlohmann::json ReadObject(const fs::path& path) {
  std::ifstream in(path);
  if (!in) return nlohmann::json::object();
  auto j = nlohmann::json::parse(in, nullptr, false);
  return j.is_object() ? j : nlohmann::json::object();
}

// eos_token_id as written by HF: one id or a list.
std::vector<int32_t> Ids(const nlohmann::json& j, const char* key) {
  std::vector<int32_t> out;
  if (!j.contains(key)) return out;
  const auto& v = j[key];
  if (v.is_number_integer()) out.push_back(v.get<int32_t>());
  if (v.is_array()) {
    for (const auto& x : v) {
      if (x.is_number_integer()) out.push_back(x.get<int32_t>());
    }
  }
  return out;
}

// The chat template's end-of-turn token: the first special token it writes after an assistant message's
// content (Llama 3: <|eot_id|>; ChatML, Qwen: <|im_end|>). None when it writes none or cannot render a turn.
std::optional<int32_t> EndOfTurn(const ModelText& t) {
  const std::string marker = "end-of-turn probe 7741";
  ojson messages = ojson::array({{{"role", "user"}, {"content", "hi"}}, {{"role", "assistant"}, {"content", marker}}});
  auto text = t.RenderConversation(messages);
  if (!text.ok()) return std::nullopt;
  const size_t at = text->rfind(marker);
  if (at == std::string::npos) return std::nullopt;
  for (int32_t id : t.tokenizer.Encode(std::string_view(*text).substr(at + marker.size()), /*add_special_tokens=*/false)) {
    if (t.tokenizer.IsSpecial(id)) return id;
  }
  return std::nullopt;
}

}  // namespace

absl::StatusOr<ModelText> ModelText::Load(const std::string& dir) {
  ASSIGN_OR_RETURN(auto tok, Tokenizer::FromFile(dir));
  ModelText t{std::move(tok)};
  auto chat = ChatTemplate::FromFolder(dir);
  std::optional<int32_t> template_eos;
  t.chat_status = chat.status();
  if (chat.ok()) {
    t.vars["bos_token"] = chat->bos_token;
    t.vars["eos_token"] = chat->eos_token;
    if (!chat->eos_token.empty()) template_eos = t.tokenizer.TokenToId(chat->eos_token);
    t.chat.emplace(std::move(*chat));
  }
  const fs::path folder = fs::is_directory(dir) ? fs::path(dir) : fs::path(dir).parent_path();
  const auto config = ReadObject(folder / "config.json");
  const auto config_eos = Ids(config, "eos_token_id");
  t.eos = template_eos ? *template_eos : !config_eos.empty() ? config_eos[0] : -1;
  const auto pad = Ids(config, "pad_token_id");
  t.pad = !pad.empty() ? pad[0] : (t.eos >= 0 ? t.eos : 0);
  t.stop_ids = config_eos;
  for (int32_t id : Ids(ReadObject(folder / "generation_config.json"), "eos_token_id")) t.stop_ids.push_back(id);
  if (template_eos) t.stop_ids.push_back(*template_eos);
  if (auto eot = EndOfTurn(t)) t.stop_ids.push_back(*eot);
  std::sort(t.stop_ids.begin(), t.stop_ids.end());
  t.stop_ids.erase(std::unique(t.stop_ids.begin(), t.stop_ids.end()), t.stop_ids.end());
  return t;
}

absl::StatusOr<std::string> ModelText::Render(const ojson& messages, bool add_generation_prompt) const {
  if (!chat) return absl::FailedPreconditionError("conversational data needs a chat template");
  ojson ctx = vars;
  ctx["messages"] = messages;
  ctx["add_generation_prompt"] = add_generation_prompt;
  return chat->chat_template.Render(ctx.dump());
}

absl::StatusOr<std::string> ModelText::RenderPrompt(const ojson& prompt) const {
  if (prompt.is_string()) return prompt.get<std::string>();
  return Render(prompt, /*add_generation_prompt=*/true);
}

absl::StatusOr<std::string> ModelText::RenderConversation(const ojson& messages) const {
  return Render(messages, /*add_generation_prompt=*/false);
}

absl::StatusOr<ModelText::EncodedPrompt> ModelText::TokenizePrompt(const ojson& prompt) const {
  EncodedPrompt out;
  ASSIGN_OR_RETURN(out.text, RenderPrompt(prompt));
  out.ids = tokenizer.Encode(out.text, /*add_special_tokens=*/prompt.is_string());
  return out;
}

absl::StatusOr<std::vector<int32_t>> ModelText::EncodePrompt(const ojson& prompt) const {
  ASSIGN_OR_RETURN(auto p, TokenizePrompt(prompt));
  return std::move(p.ids);
}

}  // namespace rlhf::text
