#include "common/data/dataset.h"

#include "common/text/model_text.h"

#include <fstream>
#include <random>

#include "absl/strings/str_format.h"
#include "common/hash.h"
#include "common/text/chat_template.h"
#include "common/text/tokenizer.h"

namespace rlhf::data {

const config::Section<DataConfig>& DataConfig::Spec() {
  static const auto* s = [] {
    auto* s = new config::Section<DataConfig>("data");
    AddTo(*s);
    return s;
  }();
  return *s;
}

void DataConfig::AddTo(config::Section<DataConfig>& sec) {
  using D = DataConfig;
  auto* s = &sec;
  {
    s->Add("path", &D::path, "JSONL dataset file");
    s->Add("kind", &D::kind, "auto, prompt_completion, messages, preference, kto or prompt_answer",
           config::OneOf({"auto", "prompt_completion", "messages", "preference", "kto", "prompt_answer"}));
    s->Add("prompt_field", &D::prompt_field, "name of the prompt field");
    s->Add("completion_field", &D::completion_field, "name of the completion field");
    s->Add("messages_field", &D::messages_field, "name of the conversation field");
    s->Add("chosen_field", &D::chosen_field, "name of the preferred-response field");
    s->Add("rejected_field", &D::rejected_field, "name of the dispreferred-response field");
    s->Add("label_field", &D::label_field, "name of the KTO desirability field (true/false)");
    s->Add("answer_field", &D::answer_field, "name of the ground-truth answer field");
    s->Add("strict", &D::strict, "a bad line fails the load; false skips and counts it");
    s->Add("heldout_fraction", &D::heldout_fraction, "share of prompts (by hash) held out for evaluation",
           config::InRange(0, 1));
    s->Add("split_salt", &D::split_salt, "salt of the prompt hash that assigns splits");
    s->Add("max_examples", &D::max_examples, "read at most this many examples; 0 = all", config::AtLeast(0));
  }
}

const char* KindName(Kind k) {
  switch (k) {
    case Kind::kPromptCompletion: return "prompt_completion";
    case Kind::kMessages: return "messages";
    case Kind::kPreference: return "preference";
    case Kind::kKto: return "kto";
    case Kind::kPromptAnswer: return "prompt_answer";
  }
  return "?";
}

std::string HashText(const std::string& text) { return absl::StrFormat("%016x", Fnv1a64(text)); }

namespace {

// A prompt or response: a non-empty string, or a non-empty list of {role, content} messages.
std::string CheckTurns(const ojson& v, const std::string& field, bool allow_empty_text) {
  if (v.is_string()) return allow_empty_text || !v.get<std::string>().empty() ? "" : "field '" + field + "' is empty";
  if (!v.is_array()) return "field '" + field + "' must be a string or a list of messages";
  if (v.empty()) return "field '" + field + "' is an empty list";
  for (size_t i = 0; i < v.size(); ++i) {
    const auto& m = v[i];
    if (!m.is_object() || !m.contains("role") || !m["role"].is_string()) {
      return absl::StrCat("field '", field, "' message ", i, " has no string 'role'");
    }
    if (!m.contains("content") || !(m["content"].is_string() || m["content"].is_null())) {
      return absl::StrCat("field '", field, "' message ", i, " has no string 'content'");
    }
  }
  return "";
}

std::optional<Kind> Detect(const ojson& j, const DataConfig& c) {
  if (j.contains(c.messages_field)) return Kind::kMessages;
  if (j.contains(c.chosen_field) || j.contains(c.rejected_field)) return Kind::kPreference;
  if (j.contains(c.label_field)) return Kind::kKto;
  if (j.contains(c.completion_field)) return Kind::kPromptCompletion;
  if (j.contains(c.answer_field)) return Kind::kPromptAnswer;
  return std::nullopt;
}

absl::StatusOr<Kind> ParseKind(const std::string& s) {
  if (s == "prompt_completion") return Kind::kPromptCompletion;
  if (s == "messages") return Kind::kMessages;
  if (s == "preference") return Kind::kPreference;
  if (s == "kto") return Kind::kKto;
  if (s == "prompt_answer") return Kind::kPromptAnswer;
  return absl::InvalidArgumentError(absl::StrCat("unknown dataset kind '", s, "'"));
}

// Fills `e` from line `j` for `kind`; returns what is wrong, or "".
std::string Parse(const ojson& j, Kind kind, const DataConfig& c, Example* e) {
  auto need = [&](const std::string& f) -> std::string {
    return j.contains(f) ? "" : "missing field '" + f + "'";
  };
  std::vector<std::string> used;
  std::string err;
  switch (kind) {
    case Kind::kMessages: {
      if (!(err = need(c.messages_field)).empty()) return err;
      const auto& msgs = j[c.messages_field];
      if (!(err = CheckTurns(msgs, c.messages_field, false)).empty()) return err;
      if (!msgs.is_array()) return "field '" + c.messages_field + "' must be a list of messages";
      if (msgs.back()["role"] != "assistant") return "field '" + c.messages_field + "' must end with an assistant message";
      if (msgs.size() < 2) return "field '" + c.messages_field + "' needs a prompt before the assistant message";
      e->prompt = ojson(msgs.begin(), msgs.end() - 1);
      e->completion = ojson::array({msgs.back()});
      used = {c.messages_field};
      break;
    }
    case Kind::kPromptCompletion:
    case Kind::kKto:
    case Kind::kPreference:
    case Kind::kPromptAnswer: {
      if (!(err = need(c.prompt_field)).empty()) return err;
      if (!(err = CheckTurns(j[c.prompt_field], c.prompt_field, false)).empty()) return err;
      e->prompt = j[c.prompt_field];
      used = {c.prompt_field};
      if (kind == Kind::kPreference) {
        for (const auto& f : {c.chosen_field, c.rejected_field}) {
          if (!(err = need(f)).empty()) return err;
          if (!(err = CheckTurns(j[f], f, true)).empty()) return err;
          used.push_back(f);
        }
        e->chosen = j[c.chosen_field];
        e->rejected = j[c.rejected_field];
        if (e->chosen.is_string() != e->prompt.is_string() || e->rejected.is_string() != e->prompt.is_string()) {
          return "fields '" + c.chosen_field + "' and '" + c.rejected_field + "' must be text when '" +
                 c.prompt_field + "' is text, and messages when it is messages";
        }
      } else if (kind == Kind::kPromptAnswer) {
        if (!(err = need(c.answer_field)).empty()) return err;
        const auto& a = j[c.answer_field];
        if (!(a.is_string() || a.is_number())) return "field '" + c.answer_field + "' must be a string or a number";
        e->answer = a;
        used.push_back(c.answer_field);
      } else {
        if (!(err = need(c.completion_field)).empty()) return err;
        if (!(err = CheckTurns(j[c.completion_field], c.completion_field, true)).empty()) return err;
        e->completion = j[c.completion_field];
        used.push_back(c.completion_field);
        if (kind == Kind::kKto) {
          if (!(err = need(c.label_field)).empty()) return err;
          if (!j[c.label_field].is_boolean()) return "field '" + c.label_field + "' must be true or false";
          e->label = j[c.label_field].get<bool>();
          used.push_back(c.label_field);
        }
      }
      break;
    }
  }
  for (const auto& [k, v] : j.items()) {
    if (std::find(used.begin(), used.end(), k) == used.end()) e->extra[k] = v;
  }
  return "";
}

}  // namespace

absl::StatusOr<Dataset> Dataset::Load(const DataConfig& c, LoadStats* stats_out) {
  LoadStats local;
  LoadStats& stats = stats_out ? *stats_out : local;
  stats = LoadStats();
  if (c.path.empty()) return absl::InvalidArgumentError("config key 'data.path' is empty: name a JSONL file");
  std::ifstream in(c.path);
  if (!in) return absl::NotFoundError(absl::StrCat(c.path, ": cannot open (config key 'data.path')"));
  Dataset d;
  std::optional<Kind> kind;
  if (c.kind != "auto") {
    ASSIGN_OR_RETURN(Kind k, ParseKind(c.kind));
    kind = k;
  }
  std::string line;
  int64_t n = 0;
  while (std::getline(in, line)) {
    ++n;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    ++stats.lines;
    std::string err;
    Example e;
    e.line = n;
    ojson j = ojson::parse(line, nullptr, false);
    if (j.is_discarded() || !j.is_object()) {
      err = "not a JSON object";
    } else {
      if (!kind) kind = Detect(j, c);
      if (!kind) {
        err = absl::StrCat("no field tells the dataset kind (expected '", c.messages_field, "', '", c.completion_field,
                           "', '", c.chosen_field, "', '", c.label_field, "' or '", c.answer_field, "')");
      } else {
        err = Parse(j, *kind, c, &e);
      }
    }
    if (!err.empty()) {
      std::string msg = absl::StrCat(c.path, ":", n, ": ", err);
      if (c.strict) return absl::InvalidArgumentError(msg + " (set data.strict=false to skip bad lines)");
      ++stats.skipped;
      if (stats.first_errors.size() < 5) stats.first_errors.push_back(msg);
      continue;
    }
    for (const auto& [k, v] : j.items()) ++stats.fields[k];
    std::string key = e.prompt.is_string() ? e.prompt.get<std::string>() : e.prompt.dump();
    e.prompt_id = HashText(key);
    uint64_t h = std::stoull(HashText(c.split_salt + "\x1f" + key), nullptr, 16);
    // FNV-1a's high bits mix poorly on short, similar strings: finish with splitmix64's mixer.
    h ^= h >> 30, h *= 0xbf58476d1ce4e5b9ull, h ^= h >> 27, h *= 0x94d049bb133111ebull, h ^= h >> 31;
    e.split = static_cast<double>(h >> 11) / static_cast<double>(1ull << 53) < c.heldout_fraction ? Split::kHeldout
                                                                                                    : Split::kTrain;
    (e.split == Split::kTrain ? stats.train : stats.heldout)++;
    d.examples_.push_back(std::move(e));
    ++stats.loaded;
    if (c.max_examples > 0 && stats.loaded >= c.max_examples) break;
  }
  if (d.examples_.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(c.path, ": no valid examples (", stats.lines, " lines, ",
                                                   stats.skipped, " skipped)"));
  }
  d.kind_ = *kind;
  return d;
}

std::vector<size_t> Dataset::Indices(Split split) const {
  std::vector<size_t> out;
  for (size_t i = 0; i < examples_.size(); ++i) {
    if (examples_[i].split == split) out.push_back(i);
  }
  return out;
}

std::vector<size_t> Dataset::Shuffled(Split split, uint64_t seed, uint64_t epoch) const {
  auto idx = Indices(split);
  std::mt19937_64 rng(seed * 0x9E3779B97F4A7C15ull + epoch);
  for (size_t i = idx.size(); i > 1; --i) {
    size_t j = static_cast<size_t>(rng() % i);
    std::swap(idx[i - 1], idx[j]);
  }
  return idx;
}

absl::StatusOr<SftTokens> BuildSft(const ojson& prompt, const ojson& completion, const text::ModelText& text) {
  if (prompt.is_string() && !completion.is_string()) {
    return absl::InvalidArgumentError("a text prompt needs a text completion");
  }
  // The prompt carries the tokenizer's special tokens (e.g. BOS) once; the completion none.
  ASSIGN_OR_RETURN(auto p, text.TokenizePrompt(prompt));
  std::string completion_text;
  if (prompt.is_string()) {
    completion_text = completion.get<std::string>();
  } else {
    ojson all = prompt;
    for (const auto& m : completion) all.push_back(m);
    ASSIGN_OR_RETURN(std::string full, text.RenderConversation(all));
    if (full.compare(0, p.text.size(), p.text) != 0) {
      return absl::InvalidArgumentError(
          "the chat template renders the conversation so that it does not start with the rendered prompt; "
          "cannot tell the completion apart");
    }
    completion_text = full.substr(p.text.size());
  }
  auto c = text.tokenizer.Encode(completion_text, /*add_special_tokens=*/false);
  // A text completion ends with eos; a conversation's ends with the template's end-of-turn already.
  if (prompt.is_string() && text.eos >= 0 && (c.empty() || c.back() != text.eos)) c.push_back(text.eos);
  SftTokens out;
  out.ids = p.ids;
  out.ids.insert(out.ids.end(), c.begin(), c.end());
  out.labels.assign(p.ids.size(), 0);
  out.labels.resize(out.ids.size(), 1);
  return out;
}

}  // namespace rlhf::data
