#include "services/coordinator/coordinator.h"

#include <spdlog/spdlog.h>

#include <algorithm>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace rlhf::coordinator {

Coordinator::Coordinator(CoordinatorOptions options, std::vector<Prompt> prompts, uint64_t seed, RolloutPool* pool,
                         ScorerClient* scorer)
    : options_(std::move(options)), prompts_(std::move(prompts)), seed_(seed), pool_(pool), scorer_(scorer),
      ledger_(static_cast<int64_t>(prompts_.size()), seed) {}

bool Coordinator::Done() const {
  std::lock_guard<std::mutex> lock(mu_);
  return ledger_.EpochFinished() && ledger_.epoch() + 1 >= options_.epochs;
}

LedgerCounts Coordinator::Totals() const {
  std::lock_guard<std::mutex> lock(mu_);
  return ledger_.Totals();
}

LedgerCounts Coordinator::Current() const {
  std::lock_guard<std::mutex> lock(mu_);
  return ledger_.Current();
}

int64_t Coordinator::epoch() const {
  std::lock_guard<std::mutex> lock(mu_);
  return ledger_.epoch();
}

absl::Status Coordinator::Check() const {
  std::lock_guard<std::mutex> lock(mu_);
  return ledger_.Check();
}

void Coordinator::Count(const std::string& event, int64_t n) {
  std::lock_guard<std::mutex> lock(mu_);
  ledger_.Count(event, n);
}

nlohmann::json Coordinator::State() const {
  std::lock_guard<std::mutex> lock(mu_);
  return ledger_.ToJson();
}

absl::Status Coordinator::Restore(const nlohmann::json& state) {
  std::lock_guard<std::mutex> lock(mu_);
  ASSIGN_OR_RETURN(ledger_, Ledger::FromJson(state, static_cast<int64_t>(prompts_.size()), seed_));
  return absl::OkStatus();
}

absl::StatusOr<StepBatch> Coordinator::NextBatch(int64_t version, int64_t max_groups) {
  StepBatch b;
  const int32_t g = options_.group_size;
  const int64_t want = max_groups > 0 ? max_groups : options_.rollout_batch_size;
  // The ledger is locked only around its own changes; generation and scoring run unlocked, so that another
  // thread may settle an earlier batch meanwhile.
  std::unique_lock<std::mutex> lock(mu_, std::defer_lock);
  while (static_cast<int64_t>(b.prompts.size()) < want) {
    lock.lock();
    if (ledger_.EpochFinished()) {
      if (!b.prompts.empty() || ledger_.epoch() + 1 >= options_.epochs) break;  // a batch never spans epochs
      RETURN_IF_ERROR(ledger_.NextEpoch());
    }
    b.epoch = ledger_.epoch();
    const auto leased = ledger_.Lease(want - static_cast<int64_t>(b.prompts.size()));
    lock.unlock();
    if (leased.empty()) break;
    std::vector<Prompt> ps;
    for (int64_t i : leased) ps.push_back(prompts_[static_cast<size_t>(i)]);
    auto gen = pool_->Generate(ps, options_.params, g, version);
    b.generate_seconds += gen.seconds;
    b.generated_tokens += gen.tokens;
    lock.lock();
    for (size_t j = 0; j < leased.size(); ++j) {
      for (int64_t r = 0; r < gen.relets[j]; ++r) RETURN_IF_ERROR(ledger_.Relet(leased[j]));
    }
    // A service that stays unreachable, or cannot serve this run at all (FAILED_PRECONDITION: e.g. a scorer
    // that refuses the code reward where it cannot isolate it), is not the prompts' fault: hand the leases
    // back and stop the run (a resumed run leases them again) instead of dropping the epoch prompt by prompt.
    // Called with the lock held.
    auto unreachable = [&](const std::vector<absl::Status>& errors, const char* role) -> absl::Status {
      for (const auto& e : errors) {
        const bool precondition = e.code() == absl::StatusCode::kFailedPrecondition;
        if (e.ok() || !(Retryable(e.code()) || precondition)) continue;
        for (int64_t p : leased) {
          if (ledger_.state(p) == PromptState::kLeased) RETURN_IF_ERROR(ledger_.Release(p));
        }
        for (int64_t p : b.prompts) RETURN_IF_ERROR(ledger_.Release(p));
        if (precondition) return absl::FailedPreconditionError(absl::StrCat(role, " cannot serve this run: ", e.message()));
        return absl::UnavailableError(absl::StrCat(role, " unreachable after the retries: ", e.message()));
      }
      return absl::OkStatus();
    };
    RETURN_IF_ERROR(unreachable(gen.errors, "rollout workers"));
    std::vector<Sample> flat;
    std::vector<size_t> owner;  // position in `leased` of each flat sample
    for (size_t j = 0; j < leased.size(); ++j) {
      if (!gen.errors[j].ok()) {
        spdlog::warn("prompt {} dropped: rollout failed: {}", leased[j], std::string(gen.errors[j].message()));
        RETURN_IF_ERROR(ledger_.Settle(leased[j], PromptState::kDropped,
                                       absl::StrCat("rollout ", absl::StatusCodeToString(gen.errors[j].code()))));
        ++b.dropped;
        continue;
      }
      for (auto& s : gen.groups[j]) {
        flat.push_back(std::move(s));
        owner.push_back(j);
      }
    }
    lock.unlock();
    b.generated_samples += static_cast<int64_t>(flat.size());
    auto scored = scorer_->Score(std::move(flat), options_.want_ref_logprobs);
    b.score_seconds += scored.seconds;
    lock.lock();
    RETURN_IF_ERROR(unreachable(scored.errors, "scorer"));
    // Sort the groups (samples of one prompt are consecutive in `scored`).
    for (size_t k = 0; k < scored.samples.size();) {
      const size_t j = owner[k];
      size_t end = k;
      absl::Status err;
      bool equal = true;
      while (end < scored.samples.size() && owner[end] == j) {
        if (!scored.errors[end].ok() && err.ok()) err = scored.errors[end];
        if (scored.errors[end].ok()) {
          b.reward_sum += scored.samples[end].reward();
          ++b.rewarded;
          equal = equal && scored.samples[end].reward() == scored.samples[k].reward();
        }
        ++end;
      }
      const int64_t p = leased[j];
      if (!err.ok()) {
        spdlog::warn("prompt {} dropped: scorer: {}", p, std::string(err.message()));
        RETURN_IF_ERROR(ledger_.Settle(p, PromptState::kDropped, absl::StrCat("scorer ", absl::StatusCodeToString(err.code()))));
        ++b.dropped;
      } else {
        ++b.scored_groups;
        b.equal_reward_groups += equal ? 1 : 0;
        if (options_.dynamic_sampling && equal) {
          RETURN_IF_ERROR(ledger_.Settle(p, PromptState::kFiltered, "equal rewards"));
          ++b.filtered;
        } else {
          b.prompts.push_back(p);
          for (size_t i = k; i < end; ++i) b.samples.push_back(std::move(scored.samples[i]));
        }
      }
      k = end;
    }
    lock.unlock();
  }
  if (!lock.owns_lock()) lock.lock();  // the epoch's end leaves the loop with the lock held
  RETURN_IF_ERROR(ledger_.Check());
  return b;
}

absl::StatusOr<int64_t> Coordinator::DropStale(StepBatch& batch, int64_t min_version) {
  std::lock_guard<std::mutex> lock(mu_);
  const size_t g = static_cast<size_t>(options_.group_size);
  // The kept groups, in order; the batch's other figures (generation, scoring) stay: that work was done.
  std::vector<int64_t> prompts;
  std::vector<Sample> samples;
  int64_t dropped = 0;
  for (size_t j = 0; j < batch.prompts.size(); ++j) {
    const auto first = batch.samples.begin() + static_cast<std::ptrdiff_t>(j * g), end = first + static_cast<std::ptrdiff_t>(g);
    if (std::any_of(first, end, [&](const Sample& s) { return s.policy_version() < min_version; })) {
      RETURN_IF_ERROR(ledger_.Release(batch.prompts[j], "stale"));
      ++dropped;
      continue;
    }
    prompts.push_back(batch.prompts[j]);
    samples.insert(samples.end(), std::make_move_iterator(first), std::make_move_iterator(end));
  }
  batch.prompts = std::move(prompts);
  batch.samples = std::move(samples);
  RETURN_IF_ERROR(ledger_.Check());
  return dropped;
}

void StepBatch::Append(StepBatch&& more) {
  prompts.insert(prompts.end(), more.prompts.begin(), more.prompts.end());
  samples.insert(samples.end(), std::make_move_iterator(more.samples.begin()), std::make_move_iterator(more.samples.end()));
  generated_samples += more.generated_samples, generated_tokens += more.generated_tokens;
  filtered += more.filtered, dropped += more.dropped;
  scored_groups += more.scored_groups, equal_reward_groups += more.equal_reward_groups;
  generate_seconds += more.generate_seconds, score_seconds += more.score_seconds;
  reward_sum += more.reward_sum, rewarded += more.rewarded;
}

absl::Status Coordinator::Release(const StepBatch& batch) {
  std::lock_guard<std::mutex> lock(mu_);
  for (int64_t p : batch.prompts) RETURN_IF_ERROR(ledger_.Release(p));
  return ledger_.Check();
}

absl::Status Coordinator::MarkTrained(const StepBatch& batch, const std::map<size_t, std::string>& refused) {
  std::lock_guard<std::mutex> lock(mu_);
  for (size_t j = 0; j < batch.prompts.size(); ++j) {
    auto it = refused.find(j);
    RETURN_IF_ERROR(it == refused.end() ? ledger_.Settle(batch.prompts[j], PromptState::kTrained)
                                        : ledger_.Settle(batch.prompts[j], PromptState::kDropped, it->second));
  }
  return ledger_.Check();
}

absl::Status Coordinator::Discard(const StepBatch& batch, const std::string& reason) {
  std::lock_guard<std::mutex> lock(mu_);
  for (int64_t p : batch.prompts) RETURN_IF_ERROR(ledger_.Settle(p, PromptState::kFiltered, reason));
  return ledger_.Check();
}

}  // namespace rlhf::coordinator
