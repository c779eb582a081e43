// JSONL datasets in the field conventions of TRL:
//   prompt_completion  {"prompt": P, "completion": C}              (SFT; P/C text or message lists)
//   messages           {"messages": [{"role":..., "content":...}, ...]}   (SFT; the last assistant turn
//                      is the completion)
//   preference         {"prompt": P, "chosen": C, "rejected": R}  (reward models, DPO family; plain or
//                      conversational)
//   kto                {"prompt": P, "completion": C, "label": true|false}
//   prompt_answer      {"prompt": P, "answer": A}                  (verifiable tasks: RLVR, evaluation)
// Field names are remappable in the config. Every other field passes through (extra) to samples, so that a
// verifier sees e.g. "answer". A bad line is an INVALID_ARGUMENT naming file, line and field; with
// strict = false it is skipped and counted instead. Each example belongs to the train or the held-out
// split by a hash of its prompt, so the two never share a prompt; shuffling is deterministic per seed.
#pragma once

#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "common/config/config.h"
#include "common/status.h"

namespace rlhf::text {
class Tokenizer;
class ChatTemplate;
struct ModelText;
}  // namespace rlhf::text

namespace rlhf::data {

using ojson = nlohmann::ordered_json;

enum class Kind { kPromptCompletion, kMessages, kPreference, kKto, kPromptAnswer };
const char* KindName(Kind k);

struct DataConfig {
  std::string path;                      // JSONL file
  std::string kind = "auto";             // auto | prompt_completion | messages | preference | kto | prompt_answer
  std::string prompt_field = "prompt";   // field names, remappable
  std::string completion_field = "completion";
  std::string messages_field = "messages";
  std::string chosen_field = "chosen";
  std::string rejected_field = "rejected";
  std::string label_field = "label";
  std::string answer_field = "answer";
  bool strict = true;                    // a bad line fails the load; false: skipped and counted
  double heldout_fraction = 0.1;         // share of prompts (by hash) in the held-out split
  std::string split_salt = "rlhf";       // salt of the split hash (change it for another split)
  int64_t max_examples = 0;              // 0 = all
  static const config::Section<DataConfig>& Spec();                 // under "data"
  static void AddTo(config::Section<DataConfig>& section);  // the same keys under another prefix
};

enum class Split { kTrain, kHeldout };

struct Example {
  int64_t line = 0;        // 1-based line in the file
  std::string prompt_id;   // hex hash of the prompt (stable identity, the split key)
  ojson prompt;            // string, or a list of messages
  ojson completion;        // string or list of messages (prompt_completion, messages, kto)
  ojson chosen, rejected;  // preference
  std::optional<bool> label;  // kto: desirable?
  ojson answer;            // prompt_answer: the ground truth as given (string or number)
  ojson extra = ojson::object();  // every other field, passed through
  Split split = Split::kTrain;
};

struct LoadStats {
  int64_t lines = 0;    // non-empty lines read
  int64_t loaded = 0;
  int64_t skipped = 0;  // bad lines skipped (strict = false)
  std::vector<std::string> first_errors;  // up to 5 messages of skipped lines
  std::map<std::string, int64_t> fields;  // how many examples carry each field
  int64_t train = 0, heldout = 0;
};

class Dataset {
 public:
  // Loads and validates the file. Kind "auto" takes the kind of the first valid line.
  static absl::StatusOr<Dataset> Load(const DataConfig& config, LoadStats* stats = nullptr);

  Kind kind() const { return kind_; }
  const std::vector<Example>& examples() const { return examples_; }
  // Indices of the examples of a split.
  std::vector<size_t> Indices(Split split) const;
  // Indices of a split in a deterministic order for (seed, epoch) (Fisher-Yates on mt19937_64).
  std::vector<size_t> Shuffled(Split split, uint64_t seed, uint64_t epoch) const;

 private:
  Kind kind_ = Kind::kPromptCompletion;
  std::vector<Example> examples_;
};

// Hex of a 64-bit FNV-1a hash of text (the prompt id).
std::string HashText(const std::string& text);

// An SFT example as tokens: labels[i] = 1 where the token is trained on (the completion, its closing
// EOS / end-of-turn token included), 0 on the prompt.
struct SftTokens {
  std::vector<int32_t> ids;
  std::vector<uint8_t> labels;
};
// Text prompts: encode(prompt) + encode(completion) + [eos] (eos added unless the completion already ends
// with it). Conversational ones: the chat template renders the prompt (with the generation prompt) and the
// whole conversation; the completion is what the latter adds, so it ends with the template's end-of-turn
// token. The prompt's ids are text.EncodePrompt's, as every other role encodes it.
absl::StatusOr<SftTokens> BuildSft(const ojson& prompt, const ojson& completion, const text::ModelText& text);

}  // namespace rlhf::data
