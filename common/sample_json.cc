#include "common/sample_json.h"

#include <fstream>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"

namespace rlhf {

using nlohmann::json;

const char* FinishReasonName(FinishReason r) {
  switch (r) {
    case FINISH_REASON_STOP: return "stop";
    case FINISH_REASON_LENGTH: return "length";
    default: return "";
  }
}

absl::StatusOr<FinishReason> ParseFinishReason(const std::string& s) {
  if (s == "stop") return FINISH_REASON_STOP;
  if (s == "length") return FINISH_REASON_LENGTH;
  if (s.empty()) return FINISH_REASON_UNSPECIFIED;
  return absl::InvalidArgumentError(absl::StrCat("finish_reason must be \"stop\" or \"length\", got \"", s, "\""));
}

std::string SampleToJson(const Sample& s) {
  json j = json::object();
  j["prompt_id"] = s.prompt_id();
  j["prompt_index"] = s.prompt_index();
  j["sample_index"] = s.sample_index();
  j["prompt_ids"] = std::vector<int32_t>(s.prompt_ids().begin(), s.prompt_ids().end());
  j["completion_ids"] = std::vector<int32_t>(s.completion_ids().begin(), s.completion_ids().end());
  j["logprobs"] = std::vector<float>(s.logprobs().begin(), s.logprobs().end());
  j["policy_version"] = s.policy_version();
  j["finish_reason"] = FinishReasonName(s.finish_reason());
  j["seed"] = s.seed();
  j["temperature"] = s.temperature();
  if (!s.prompt().empty()) j["prompt"] = s.prompt();
  // A sample with a text prompt has a text completion, even an empty one (eos at once): always written then.
  if (!s.completion().empty() || !s.prompt().empty()) j["completion"] = s.completion();
  if (s.has_reward()) j["reward"] = s.reward();
  if (!s.reward_parts().empty()) {
    json parts = json::object();
    for (const auto& [k, v] : s.reward_parts()) parts[k] = v;
    j["reward_parts"] = parts;
  }
  if (!s.ref_logprobs().empty()) j["ref_logprobs"] = std::vector<float>(s.ref_logprobs().begin(), s.ref_logprobs().end());
  if (!s.step_rewards().empty()) j["step_rewards"] = std::vector<float>(s.step_rewards().begin(), s.step_rewards().end());
  if (!s.step_ends().empty()) j["step_ends"] = std::vector<int32_t>(s.step_ends().begin(), s.step_ends().end());
  if (s.has_rollout_worker()) j["rollout_worker"] = s.rollout_worker();
  if (!s.token_versions().empty()) {
    j["token_versions"] = std::vector<int64_t>(s.token_versions().begin(), s.token_versions().end());
  }
  for (const auto& [k, v] : s.extra()) {
    if (j.contains(k)) continue;  // a pass-through key never shadows a sample field
    j[k] = json::parse(v, nullptr, /*allow_exceptions=*/false);
    if (j[k].is_discarded()) j[k] = v;
  }
  return j.dump();
}

namespace {

template <typename T, typename Field>
absl::Status ReadArray(const json& j, const char* name, Field* out) {
  if (!j.contains(name)) return absl::OkStatus();
  const json& a = j.at(name);
  if (!a.is_array()) return absl::InvalidArgumentError(absl::StrCat("field '", name, "' must be an array"));
  for (const auto& x : a) {
    if (!x.is_number()) return absl::InvalidArgumentError(absl::StrCat("field '", name, "' must hold numbers"));
    out->Add(x.get<T>());
  }
  return absl::OkStatus();
}

absl::Status Expect(const json& j, const char* name, bool ok, const char* what) {
  if (j.contains(name) && !ok) {
    return absl::InvalidArgumentError(absl::StrCat("field '", name, "' must be ", what));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<Sample> SampleFromJson(const std::string& line) {
  json j = json::parse(line, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return absl::InvalidArgumentError("not valid JSON");
  if (!j.is_object()) return absl::InvalidArgumentError("a sample must be a JSON object");
  Sample s;
  auto is_int = [&](const char* k) { return j.contains(k) && j[k].is_number_integer(); };
  auto is_num = [&](const char* k) { return j.contains(k) && j[k].is_number(); };
  auto is_str = [&](const char* k) { return j.contains(k) && j[k].is_string(); };
  RETURN_IF_ERROR(Expect(j, "prompt_id", is_str("prompt_id") || is_int("prompt_id"), "a string"));
  RETURN_IF_ERROR(Expect(j, "prompt_index", is_int("prompt_index"), "an integer"));
  RETURN_IF_ERROR(Expect(j, "sample_index", is_int("sample_index"), "an integer"));
  RETURN_IF_ERROR(Expect(j, "policy_version", is_int("policy_version"), "an integer"));
  RETURN_IF_ERROR(Expect(j, "seed", is_int("seed"), "an integer"));
  RETURN_IF_ERROR(Expect(j, "temperature", is_num("temperature"), "a number"));
  RETURN_IF_ERROR(Expect(j, "reward", is_num("reward"), "a number"));
  RETURN_IF_ERROR(Expect(j, "prompt", is_str("prompt"), "a string"));
  RETURN_IF_ERROR(Expect(j, "completion", is_str("completion"), "a string"));
  RETURN_IF_ERROR(Expect(j, "finish_reason", is_str("finish_reason"), "a string"));
  if (j.contains("prompt_id")) {
    s.set_prompt_id(j["prompt_id"].is_string() ? j["prompt_id"].get<std::string>() : j["prompt_id"].dump());
  }
  if (j.contains("prompt_index")) s.set_prompt_index(j["prompt_index"].get<int64_t>());
  if (j.contains("sample_index")) s.set_sample_index(j["sample_index"].get<int32_t>());
  RETURN_IF_ERROR(ReadArray<int32_t>(j, "prompt_ids", s.mutable_prompt_ids()));
  RETURN_IF_ERROR(ReadArray<int32_t>(j, "completion_ids", s.mutable_completion_ids()));
  RETURN_IF_ERROR(ReadArray<float>(j, "logprobs", s.mutable_logprobs()));
  RETURN_IF_ERROR(ReadArray<float>(j, "ref_logprobs", s.mutable_ref_logprobs()));
  RETURN_IF_ERROR(ReadArray<float>(j, "step_rewards", s.mutable_step_rewards()));
  RETURN_IF_ERROR(ReadArray<int32_t>(j, "step_ends", s.mutable_step_ends()));
  RETURN_IF_ERROR(ReadArray<int64_t>(j, "token_versions", s.mutable_token_versions()));
  if (j.contains("policy_version")) s.set_policy_version(j["policy_version"].get<int64_t>());
  RETURN_IF_ERROR(Expect(j, "rollout_worker", is_int("rollout_worker"), "an integer"));
  if (j.contains("rollout_worker")) s.set_rollout_worker(j["rollout_worker"].get<int32_t>());
  if (j.contains("finish_reason")) {
    ASSIGN_OR_RETURN(auto fr, ParseFinishReason(j["finish_reason"].get<std::string>()));
    s.set_finish_reason(fr);
  }
  if (j.contains("seed")) s.set_seed(j["seed"].get<uint64_t>());
  if (j.contains("temperature")) s.set_temperature(j["temperature"].get<float>());
  if (j.contains("prompt")) s.set_prompt(j["prompt"].get<std::string>());
  if (j.contains("completion")) s.set_completion(j["completion"].get<std::string>());
  if (j.contains("reward")) s.set_reward(j["reward"].get<float>());
  if (j.contains("reward_parts")) {
    const json& p = j["reward_parts"];
    if (!p.is_object()) return absl::InvalidArgumentError("field 'reward_parts' must be an object of numbers");
    for (const auto& [k, v] : p.items()) {
      if (!v.is_number()) return absl::InvalidArgumentError(absl::StrCat("reward_parts.", k, " must be a number"));
      (*s.mutable_reward_parts())[k] = v.get<float>();
    }
  }
  if (s.logprobs_size() > 0 && s.logprobs_size() != s.completion_ids_size()) {
    return absl::InvalidArgumentError(absl::StrCat("logprobs has ", s.logprobs_size(), " entries for ",
                                                   s.completion_ids_size(), " completion_ids"));
  }
  static const char* kKnown[] = {"prompt_id", "prompt_index", "sample_index", "prompt_ids", "completion_ids",
                                 "logprobs", "policy_version", "finish_reason", "seed", "temperature",
                                 "prompt", "completion", "reward", "reward_parts", "ref_logprobs",
                                 "step_rewards", "step_ends", "rollout_worker", "token_versions"};
  for (const auto& [k, v] : j.items()) {
    bool known = false;
    for (const char* n : kKnown) known = known || k == n;
    if (!known) (*s.mutable_extra())[k] = v.dump();
  }
  return s;
}

absl::StatusOr<std::vector<Sample>> ReadSamplesJsonl(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  std::vector<Sample> samples;
  std::string line;
  int64_t n = 0;
  while (std::getline(in, line)) {
    ++n;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    auto s = SampleFromJson(line);
    if (!s.ok()) return absl::InvalidArgumentError(absl::StrCat(path, ":", n, ": ", s.status().message()));
    samples.push_back(std::move(*s));
  }
  return samples;
}

}  // namespace rlhf
