// The reward sources of the scorer, as a chain (like the sampler chain of rollout/): each source has a name,
// a weight and Score(batch); the scorer runs the chain in order and each sample's reward is the sum of
// weight * value over the sources (reward_parts holds every value before weighting).
//
// Adding a source: a class implementing RewardSource (in a file of its own or beside its kin) and one line
// in the registry (Sources() in sources.cc), with its weight key in RewardConfig.
//
// Order: the rule-based sources (uses_models false) run first; then the samples are checked against the
// models (token ids within the vocabulary, length within the context: a sample that fails is an "input"
// error); then the model sources. A source that cannot score a sample fails that sample alone (no reward,
// never a made-up number); the first failure of a sample is the one reported.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "common/model/checkpoint.h"
#include "common/model/transformer.h"
#include "common/status.h"
#include "rlhf/sample.pb.h"

namespace rlhf::text {
class Tokenizer;
}

namespace rlhf::scoring {

struct RewardConfig;

// A batch being scored. Thread-safety: one source at a time.
class ScoreBatch {
 public:
  ScoreBatch(std::vector<Sample>& samples, const std::vector<int32_t>& groups)
      : samples(samples), groups(groups), parts_(samples.size()), errors_(samples.size()), model_ok_(samples.size(), true) {}

  std::vector<Sample>& samples;
  const std::vector<int32_t>& groups;  // empty, or the request each sample came in (pairwise judging)

  void Set(size_t i, const std::string& source, float value) { parts_[i][source] = value; }
  // Sample i has no reward: the first failure is kept (as "<source>: <message>") and counted in
  // rlhf_reward_failures_total{source}.
  void Fail(size_t i, const std::string& source, const absl::Status& why);
  bool model_ok(size_t i) const { return model_ok_[i]; }  // passed the model checks (model sources)
  void set_model_ok(size_t i, bool ok) { model_ok_[i] = ok; }
  const std::map<std::string, float>& parts(size_t i) const { return parts_[i]; }
  const absl::Status& error(size_t i) const { return errors_[i]; }

 private:
  std::vector<std::map<std::string, float>> parts_;
  std::vector<absl::Status> errors_;
  std::vector<bool> model_ok_;
};

class RewardSource {
 public:
  virtual ~RewardSource() = default;
  // Scores the batch: batch.Set(i, name, value) or batch.Fail(i, name, why) for the samples it scores.
  virtual void Score(ScoreBatch& batch) = 0;
  // The models it runs, whose context and vocabulary bound what a sample may hold; none by default.
  virtual std::vector<const model::TransformerImpl*> models() const { return {}; }
  // OK, or why it scores nothing on this machine (the code reward without isolation).
  virtual absl::Status refusal() const { return absl::OkStatus(); }
};

// What the sources of one scorer share, loaded once.
struct SourceContext {
  const RewardConfig& config;
  model::LoadOptions load;                     // dtype of the models (reward.dtype)
  std::shared_ptr<text::Tokenizer> tokenizer;  // reward.tokenizer, the policy's; may be null
};

struct SourceSpec {
  std::string name;              // in reward_parts and rlhf_reward_failures_total{source}
  double RewardConfig::*weight;  // its weight key (reward.<name>_weight); 0 = off
  bool monitorable;              // rule-based: computed with weight 0 when listed in reward.monitor
  bool uses_models;              // runs after the model checks
  absl::StatusOr<std::unique_ptr<RewardSource>> (*make)(const SourceContext& context);
};

// Every source, in chain order.
const std::vector<SourceSpec>& Sources();

// The registered makers, each in the file of its source.
absl::StatusOr<std::unique_ptr<RewardSource>> MakeExactMatchSource(const SourceContext& c);
absl::StatusOr<std::unique_ptr<RewardSource>> MakeFormatSource(const SourceContext& c);
absl::StatusOr<std::unique_ptr<RewardSource>> MakeLengthSource(const SourceContext& c);
absl::StatusOr<std::unique_ptr<RewardSource>> MakeMissingEosSource(const SourceContext& c);
absl::StatusOr<std::unique_ptr<RewardSource>> MakeCodeSource(const SourceContext& c);
absl::StatusOr<std::unique_ptr<RewardSource>> MakeRewardModelSource(const SourceContext& c);
absl::StatusOr<std::unique_ptr<RewardSource>> MakeJudgeSource(const SourceContext& c);
absl::StatusOr<std::unique_ptr<RewardSource>> MakeProcessSource(const SourceContext& c);

// How an evaluation judges an answer, for its log line and eval results: the reward source `success_part`
// (or the sources the total reward sums, with their weights), the exact-match mode where exact_match takes
// part, and the threshold, e.g. "exact_match (reward.extract flexible) >= 1".
std::string DescribeJudge(const RewardConfig& config, const std::string& success_part, double threshold);

// A pass-through value as text: a JSON string unquoted, anything else as written.
std::string ExtraText(const std::string& json_text);

}  // namespace rlhf::scoring
