// The sample ledger of the online loop: every prompt of an epoch ends in exactly one final state.
//
//   pending --Lease--> leased --Settle--> trained | filtered (reason) | dropped (reason)
//                        |
//                        +--Release--> pending   (a lease handed back: a worker failed, or its samples
//                                                 are too stale to train; counted)
//
// Invariant, checked by Check(): for every epoch, pending + leased + trained + filtered + dropped = epoch
// size, and once an epoch is finished pending = leased = 0. Settling a prompt that is not leased is refused
// (FAILED_PRECONDITION) and counted as a duplicate, so nothing is trained twice. The ledger is part of the
// training checkpoint (ToJson / FromJson): leases in flight at the checkpoint come back as pending, so a
// resumed run neither loses nor repeats a prompt.
//
// The order of an epoch is a seeded shuffle of the prompts (the cursor): Lease hands out pending prompts in
// that order. Thread-safety: none; the coordinator's step loop owns it.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/status.h"

namespace rlhf::coordinator {

enum class PromptState : uint8_t { kPending = 0, kLeased, kTrained, kFiltered, kDropped };
const char* StateName(PromptState s);

struct LedgerCounts {
  int64_t size = 0, pending = 0, leased = 0, trained = 0, filtered = 0, dropped = 0;
  int64_t released = 0;    // leases handed back and leased again later
  int64_t duplicates = 0;  // settle attempts for a prompt already settled (refused)
  std::map<std::string, int64_t> reasons;  // filtered / dropped, by reason
  // Events that settle nothing, by name: stale (a group too many versions behind the learner, generated
  // again), lease_expired (a worker missed its lease's deadline; the lease went to another worker),
  // late_refused (the results of an expired lease that came in after all, not used).
  std::map<std::string, int64_t> events;
  // Adds another epoch's counts (all but pending and leased, which describe one moment).
  void Add(const LedgerCounts& o);
};

class Ledger {
 public:
  // `num_prompts` prompts (dataset positions 0..num_prompts-1); each epoch visits all of them in the order
  // of a shuffle seeded by (seed, epoch).
  Ledger(int64_t num_prompts, uint64_t seed);

  int64_t epoch() const { return epoch_; }
  int64_t num_prompts() const { return static_cast<int64_t>(state_.size()); }

  // Up to `max` pending prompts of the current epoch (dataset positions), now leased. Empty when the epoch
  // has no pending prompt left (leases may still be out).
  std::vector<int64_t> Lease(int64_t max);
  // Hands a leased prompt back (pending again, leased later), counting `event` when one is named (e.g.
  // "stale"). FAILED_PRECONDITION when it is not leased.
  absl::Status Release(int64_t prompt, const std::string& event = "");
  // Counts an event that settles nothing (see LedgerCounts::events).
  void Count(const std::string& event, int64_t n = 1) { events_[event] += n; }
  // Counts a leased prompt's lease as handed back and handed out again at once (its chunk moved to
  // another try or worker). FAILED_PRECONDITION when it is not leased.
  absl::Status Relet(int64_t prompt);
  // Moves a leased prompt to its final state (trained, filtered or dropped; a reason for the last two).
  // FAILED_PRECONDITION, counted as a duplicate, when the prompt is not leased.
  absl::Status Settle(int64_t prompt, PromptState state, const std::string& reason = "");

  PromptState state(int64_t prompt) const { return state_.at(static_cast<size_t>(prompt)); }
  // True when every prompt of the current epoch is settled.
  bool EpochFinished() const;
  // Starts the next epoch (all prompts pending, a new order). FAILED_PRECONDITION when the current one is
  // not finished.
  absl::Status NextEpoch();

  // Counts of the current epoch, and the totals over the finished epochs plus the current one.
  LedgerCounts Current() const;
  LedgerCounts Totals() const;
  // The invariant: INTERNAL naming the broken count when it does not hold.
  absl::Status Check() const;

  nlohmann::json ToJson() const;
  // Restores a ledger written by ToJson for the same number of prompts and seed; leased prompts become
  // pending. INVALID_ARGUMENT for a ledger of another dataset or a malformed one.
  static absl::StatusOr<Ledger> FromJson(const nlohmann::json& j, int64_t num_prompts, uint64_t seed);

 private:
  void Shuffle();
  uint64_t seed_;
  int64_t epoch_ = 0;
  std::vector<int64_t> order_;      // this epoch's order of dataset positions
  size_t cursor_ = 0;               // first position of order_ that may still be pending
  std::vector<PromptState> state_;  // by dataset position
  std::vector<std::string> reason_; // by dataset position (filtered / dropped)
  LedgerCounts finished_;           // totals of the finished epochs
  int64_t released_ = 0, duplicates_ = 0;  // this epoch
  std::map<std::string, int64_t> events_;  // this epoch
  std::vector<int64_t> requeue_;    // released prompts, leased again before the cursor moves on
};

}  // namespace rlhf::coordinator
