#include "services/coordinator/ledger.h"

#include <algorithm>
#include <numeric>
#include <random>

#include "absl/strings/str_cat.h"

namespace rlhf::coordinator {

using json = nlohmann::json;

const char* StateName(PromptState s) {
  switch (s) {
    case PromptState::kPending: return "pending";
    case PromptState::kLeased: return "leased";
    case PromptState::kTrained: return "trained";
    case PromptState::kFiltered: return "filtered";
    case PromptState::kDropped: return "dropped";
  }
  return "?";
}

void LedgerCounts::Add(const LedgerCounts& o) {
  size += o.size;
  trained += o.trained;
  filtered += o.filtered;
  dropped += o.dropped;
  released += o.released;
  duplicates += o.duplicates;
  for (const auto& [k, v] : o.reasons) reasons[k] += v;
  for (const auto& [k, v] : o.events) events[k] += v;
}

Ledger::Ledger(int64_t num_prompts, uint64_t seed)
    : seed_(seed), state_(static_cast<size_t>(num_prompts), PromptState::kPending),
      reason_(static_cast<size_t>(num_prompts)) {
  Shuffle();
}

void Ledger::Shuffle() {
  order_.resize(state_.size());
  std::iota(order_.begin(), order_.end(), int64_t{0});
  std::mt19937_64 rng(seed_ * 0x9e3779b97f4a7c15ull + static_cast<uint64_t>(epoch_) + 1);
  for (size_t i = order_.size(); i > 1; --i) {
    std::uniform_int_distribution<size_t> pick(0, i - 1);
    std::swap(order_[i - 1], order_[pick(rng)]);
  }
  cursor_ = 0;
}

std::vector<int64_t> Ledger::Lease(int64_t max) {
  std::vector<int64_t> out;
  while (static_cast<int64_t>(out.size()) < max && !requeue_.empty()) {
    out.push_back(requeue_.front());
    requeue_.erase(requeue_.begin());
  }
  while (static_cast<int64_t>(out.size()) < max && cursor_ < order_.size()) {
    const int64_t p = order_[cursor_++];
    if (state_[static_cast<size_t>(p)] == PromptState::kPending) out.push_back(p);
  }
  for (int64_t p : out) state_[static_cast<size_t>(p)] = PromptState::kLeased;
  return out;
}

absl::Status Ledger::Release(int64_t prompt, const std::string& event) {
  if (prompt < 0 || prompt >= num_prompts() || state_[static_cast<size_t>(prompt)] != PromptState::kLeased) {
    return absl::FailedPreconditionError(absl::StrCat("ledger: prompt ", prompt, " is not leased"));
  }
  state_[static_cast<size_t>(prompt)] = PromptState::kPending;
  requeue_.push_back(prompt);
  ++released_;
  if (!event.empty()) ++events_[event];
  return absl::OkStatus();
}

absl::Status Ledger::Relet(int64_t prompt) {
  if (prompt < 0 || prompt >= num_prompts() || state_[static_cast<size_t>(prompt)] != PromptState::kLeased) {
    return absl::FailedPreconditionError(absl::StrCat("ledger: prompt ", prompt, " is not leased"));
  }
  ++released_;
  return absl::OkStatus();
}

absl::Status Ledger::Settle(int64_t prompt, PromptState state, const std::string& reason) {
  if (state != PromptState::kTrained && state != PromptState::kFiltered && state != PromptState::kDropped) {
    return absl::InvalidArgumentError("ledger: a prompt settles as trained, filtered or dropped");
  }
  if (prompt < 0 || prompt >= num_prompts() || state_[static_cast<size_t>(prompt)] != PromptState::kLeased) {
    ++duplicates_;
    return absl::FailedPreconditionError(absl::StrCat(
        "ledger: prompt ", prompt, " is ",
        prompt < 0 || prompt >= num_prompts() ? "unknown" : StateName(state_[static_cast<size_t>(prompt)]),
        ", not leased: refusing to settle it twice"));
  }
  state_[static_cast<size_t>(prompt)] = state;
  reason_[static_cast<size_t>(prompt)] = state == PromptState::kTrained ? "" : reason;
  return absl::OkStatus();
}

bool Ledger::EpochFinished() const {
  return std::all_of(state_.begin(), state_.end(), [](PromptState s) {
    return s != PromptState::kPending && s != PromptState::kLeased;
  });
}

absl::Status Ledger::NextEpoch() {
  if (!EpochFinished()) {
    return absl::FailedPreconditionError(absl::StrCat("ledger: epoch ", epoch_, " still has unsettled prompts"));
  }
  finished_.Add(Current());
  std::fill(state_.begin(), state_.end(), PromptState::kPending);
  std::fill(reason_.begin(), reason_.end(), std::string());
  released_ = duplicates_ = 0;
  events_.clear();
  requeue_.clear();
  ++epoch_;
  Shuffle();
  return absl::OkStatus();
}

LedgerCounts Ledger::Current() const {
  LedgerCounts c;
  c.size = num_prompts();
  for (size_t i = 0; i < state_.size(); ++i) {
    switch (state_[i]) {
      case PromptState::kPending: ++c.pending; break;
      case PromptState::kLeased: ++c.leased; break;
      case PromptState::kTrained: ++c.trained; break;
      case PromptState::kFiltered: ++c.filtered; ++c.reasons[reason_[i]]; break;
      case PromptState::kDropped: ++c.dropped; ++c.reasons[reason_[i]]; break;
    }
  }
  c.released = released_;
  c.events = events_;
  c.duplicates = duplicates_;
  return c;
}

LedgerCounts Ledger::Totals() const {
  LedgerCounts t = finished_;
  const LedgerCounts c = Current();
  t.Add(c);
  t.pending = c.pending;
  t.leased = c.leased;
  return t;
}

absl::Status Ledger::Check() const {
  const LedgerCounts c = Current();
  const int64_t sum = c.pending + c.leased + c.trained + c.filtered + c.dropped;
  if (sum != c.size) {
    return absl::InternalError(absl::StrCat("ledger: epoch ", epoch_, " accounts for ", sum, " of ", c.size, " prompts"));
  }
  const LedgerCounts t = Totals();
  if (t.trained + t.filtered + t.dropped + t.pending + t.leased != t.size) {
    return absl::InternalError("ledger: the totals over epochs do not add up");
  }
  return absl::OkStatus();
}

json Ledger::ToJson() const {
  std::string states(state_.size(), '0');
  json reasons = json::object();
  for (size_t i = 0; i < state_.size(); ++i) {
    // Leases in flight are not settled: a resumed run leases them again.
    const PromptState s = state_[i] == PromptState::kLeased ? PromptState::kPending : state_[i];
    states[i] = static_cast<char>('0' + static_cast<int>(s));
    if (!reason_[i].empty()) reasons[std::to_string(i)] = reason_[i];
  }
  json fin = {{"size", finished_.size},         {"trained", finished_.trained},   {"filtered", finished_.filtered},
              {"dropped", finished_.dropped},   {"released", finished_.released}, {"duplicates", finished_.duplicates},
              {"reasons", finished_.reasons},   {"events", finished_.events}};
  return {{"version", 1},       {"prompts", num_prompts()}, {"seed", seed_},           {"epoch", epoch_},
          {"states", states},   {"reasons", reasons},       {"released", released_}, {"duplicates", duplicates_},
          {"events", events_},  {"finished", fin}};
}

absl::StatusOr<Ledger> Ledger::FromJson(const json& j, int64_t num_prompts, uint64_t seed) {
  try {
    if (j.at("version").get<int>() != 1) return absl::InvalidArgumentError("ledger: unknown version");
    if (j.at("prompts").get<int64_t>() != num_prompts || j.at("seed").get<uint64_t>() != seed) {
      return absl::InvalidArgumentError(absl::StrCat(
          "ledger: the checkpoint's ledger is for ", j.at("prompts").get<int64_t>(), " prompts and seed ",
          j.at("seed").get<uint64_t>(), ", this run has ", num_prompts, " and ", seed,
          ": resume with the same data and seed"));
    }
    Ledger l(num_prompts, seed);
    l.epoch_ = j.at("epoch").get<int64_t>();
    l.Shuffle();
    const std::string states = j.at("states").get<std::string>();
    if (static_cast<int64_t>(states.size()) != num_prompts) return absl::InvalidArgumentError("ledger: bad states");
    for (size_t i = 0; i < states.size(); ++i) {
      const int v = states[i] - '0';
      if (v < 0 || v > static_cast<int>(PromptState::kDropped) || v == static_cast<int>(PromptState::kLeased)) {
        return absl::InvalidArgumentError("ledger: bad state");
      }
      l.state_[i] = static_cast<PromptState>(v);
    }
    for (const auto& [k, v] : j.at("reasons").items()) {
      const size_t i = std::stoul(k);
      if (i >= l.reason_.size()) return absl::InvalidArgumentError("ledger: bad reason index");
      l.reason_[i] = v.get<std::string>();
    }
    l.released_ = j.at("released").get<int64_t>();
    l.duplicates_ = j.at("duplicates").get<int64_t>();
    // Events came with the asynchronous loop: a ledger written before has none.
    if (j.contains("events")) l.events_ = j.at("events").get<std::map<std::string, int64_t>>();
    const json& f = j.at("finished");
    l.finished_.size = f.at("size").get<int64_t>();
    l.finished_.trained = f.at("trained").get<int64_t>();
    l.finished_.filtered = f.at("filtered").get<int64_t>();
    l.finished_.dropped = f.at("dropped").get<int64_t>();
    l.finished_.released = f.at("released").get<int64_t>();
    l.finished_.duplicates = f.at("duplicates").get<int64_t>();
    l.finished_.reasons = f.at("reasons").get<std::map<std::string, int64_t>>();
    if (f.contains("events")) l.finished_.events = f.at("events").get<std::map<std::string, int64_t>>();
    RETURN_IF_ERROR(l.Check());
    return l;
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("ledger: malformed checkpoint state: ", e.what()));
  }
}

}  // namespace rlhf::coordinator
