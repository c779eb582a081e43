// The JSONL form of rlhf.Sample: one JSON object per line with the proto's field names.
//   {"prompt_id": "...", "prompt_index": 3, "sample_index": 0, "prompt_ids": [...], "completion_ids": [...],
//    "logprobs": [...], "policy_version": 2, "finish_reason": "stop"|"length", "seed": 123,
//    "temperature": 1.0, "prompt": "...", "completion": "...", "reward": 1.0, "reward_parts": {...},
//    "ref_logprobs": [...], "step_rewards": [...], "step_ends": [...], <pass-through fields such as "answer">}
// Pass-through fields (Sample.extra) appear as top-level keys with their original JSON values. Fields at
// their proto default are omitted on output, except the identity and token fields.
#pragma once

#include <string>
#include <vector>

#include "common/status.h"
#include "rlhf/sample.pb.h"

namespace rlhf {

// One line of JSON (no trailing newline).
std::string SampleToJson(const Sample& sample);
// Parses one line. INVALID_ARGUMENT naming the field when a known field has the wrong type, or a
// pass-through key collides with nothing (any unknown key is kept as pass-through).
absl::StatusOr<Sample> SampleFromJson(const std::string& line);

// Every sample of a JSONL file (blank lines skipped). NOT_FOUND when the file cannot be opened;
// INVALID_ARGUMENT naming "path:line" for a line that is not a sample.
absl::StatusOr<std::vector<Sample>> ReadSamplesJsonl(const std::string& path);

const char* FinishReasonName(FinishReason r);            // "stop", "length", ""
absl::StatusOr<FinishReason> ParseFinishReason(const std::string& s);

}  // namespace rlhf
