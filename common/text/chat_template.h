// Chat templates: the subset of Jinja that the templates of Qwen2/Qwen3, Llama 3 and ChatML use, rendered
// as Hugging Face transformers renders them (jinja2 with trim_blocks, lstrip_blocks, raise_exception and
// tojson as json.dumps(ensure_ascii=False)).
//
// Supported: {{ }}, {% if/elif/else %}, {% for %} (loop.index, index0, first, last, length, revindex,
// revindex0), {% set %} (also ns.attr with namespace()), {# #}, whitespace control (-), literals (strings,
// numbers, true/false/none, lists, dicts), attribute / item / slice access, calls, and, or, not, in,
// is [not] (defined, none, string, number, mapping, sequence, iterable, true, false, boolean, integer,
// float), arithmetic and ~, conditional expressions; filters length, count, tojson, trim, string, upper,
// lower, first, last, join, default, list, reverse, items, title, capitalize, int, float, abs, replace;
// string methods startswith, endswith, split, strip, lstrip, rstrip, upper, lower, replace, title,
// capitalize; dict methods items, keys, values, get; globals namespace(), raise_exception(), range(),
// strftime_now(); {% generation %} blocks render their body. Strings count, index and slice by code
// point, as Python's do. Anything else fails with the template line and a clear message.
//
// Thread-safety: a ChatTemplate is immutable after parsing; Render may run from many threads.
#pragma once

#include <memory>
#include <string>

#include "common/status.h"

namespace rlhf::text {

struct TemplateNode;

class ChatTemplate {
 public:
  // Parses a template. INVALID_ARGUMENT with "line N:" and what is wrong for syntax errors and
  // unsupported constructs.
  static absl::StatusOr<ChatTemplate> Parse(const std::string& source);
  // Reads chat_template from a model folder: chat_template.jinja, else tokenizer_config.json's
  // "chat_template" (a string, or the "default" entry of a list of {name, template}). Also returns
  // bos_token / eos_token from tokenizer_config.json when given, for Render's context.
  struct FromFolderResult;
  static absl::StatusOr<FromFolderResult> FromFolder(const std::string& dir);

  // Renders with `context_json`: a JSON object with "messages" and any other variables
  // (add_generation_prompt, bos_token, eos_token, tools, enable_thinking, ...); key order is kept, as
  // tojson shows it. raise_exception() in the template and evaluation errors come back as
  // INVALID_ARGUMENT with the line.
  absl::StatusOr<std::string> Render(const std::string& context_json) const;

  ChatTemplate(ChatTemplate&&) noexcept;
  ChatTemplate& operator=(ChatTemplate&&) noexcept;
  ~ChatTemplate();

 private:
  ChatTemplate();
  std::shared_ptr<const TemplateNode> root_;
};

struct ChatTemplate::FromFolderResult {
  ChatTemplate chat_template;
  std::string bos_token, eos_token;
};

}  // namespace rlhf::text
