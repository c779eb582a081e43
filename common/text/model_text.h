// The text side of a model folder, loaded in one place for every role (SFT, the preference stages, the
// rollout worker, the scorer's samples, evaluation, `rlhf generate`), so that a prompt becomes the same
// token ids and a completion ends at the same ids everywhere.
//
//   tokenizer   tokenizer.json
//   chat        the chat template (chat_template.jinja or tokenizer_config.json) with its bos / eos tokens,
//               when the folder has one
//   vars        the template's variables besides the messages: bos_token, eos_token
//   eos         the id a text completion ends with in SFT data: the template's eos token, else config.json's
//               first eos_token_id, else -1
//   pad         config.json's pad_token_id, else eos, else 0
//   stop_ids    the ids that end a generated completion: config.json's eos_token_id(s),
//               generation_config.json's, the chat template's eos token, and its end-of-turn token (the
//               first special token it writes after an assistant message: Llama 3's <|eot_id|>)
//
// Prompts: a text prompt is encoded as it is, with the tokenizer's special tokens (e.g. Llama 3's BOS); a
// message list is rendered by the chat template with the generation prompt, and encoded without adding
// special tokens again (the template writes its own BOS).
// Thread-safety: immutable after Load; every method may run from many threads.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/status.h"
#include "common/text/chat_template.h"
#include "common/text/tokenizer.h"

namespace rlhf::text {

struct ModelText {
  Tokenizer tokenizer;
  std::optional<ChatTemplate::FromFolderResult> chat;
  nlohmann::ordered_json vars = nlohmann::ordered_json::object();
  int32_t eos = -1;
  int32_t pad = 0;
  std::vector<int32_t> stop_ids;  // sorted, distinct
  absl::Status chat_status;       // OK with a chat template, else why the folder has none (for a clear error)

  // Loads `dir` (a model folder, or a folder with only tokenizer files). NOT_FOUND without tokenizer.json.
  static absl::StatusOr<ModelText> Load(const std::string& dir);

  // A prompt (a string, or a list of messages) as text: the string itself, or the chat template's rendering
  // with the generation prompt. FAILED_PRECONDITION for messages without a chat template.
  absl::StatusOr<std::string> RenderPrompt(const nlohmann::ordered_json& prompt) const;
  // A rendered conversation (add_generation_prompt false): prompt and completion messages together.
  absl::StatusOr<std::string> RenderConversation(const nlohmann::ordered_json& messages) const;
  // A prompt as text and token ids (the rule above), rendered once.
  struct EncodedPrompt {
    std::string text;
    std::vector<int32_t> ids;
  };
  absl::StatusOr<EncodedPrompt> TokenizePrompt(const nlohmann::ordered_json& prompt) const;
  // The token ids of a prompt (the rule above).
  absl::StatusOr<std::vector<int32_t>> EncodePrompt(const nlohmann::ordered_json& prompt) const;

 private:
  // The chat template on `messages` with the template variables.
  absl::StatusOr<std::string> Render(const nlohmann::ordered_json& messages, bool add_generation_prompt) const;
};

}  // namespace rlhf::text
