// Errors across module boundaries: absl::Status / absl::StatusOr, with codes that carry retry meaning:
//   UNAVAILABLE          transient; retry (peer down, deadline on a healthy path)
//   ABORTED              stale or superseded work; redo it against fresh state
//   FAILED_PRECONDITION  the system is not in a state to do this (fix the state, not the request)
//   INVALID_ARGUMENT     the request or input is wrong; retrying the same thing fails again
//   RESOURCE_EXHAUSTED   back off (queue full, memory)
//   DATA_LOSS            a file is damaged (truncated, bad checksum)
//   NOT_FOUND            a named file, tensor or key does not exist
// Debian's abseil (20220623) has no status_macros.h, hence the two small macros below.
#pragma once

#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"

namespace rlhf {

// Returns `status` with `context + ": "` put before its message; OK stays OK.
absl::Status Annotate(const absl::Status& status, const std::string& context);

// Runs `fn` (returning absl::Status), turning any C++ exception (LibTorch's c10::Error included) into a
// Status: c10 index/value errors become INVALID_ARGUMENT, everything else INTERNAL. For the boundaries
// between LibTorch code and the rest of the system.
template <typename Fn>
absl::Status GuardExceptions(const std::string& what, Fn&& fn);

// Implementation detail of GuardExceptions, in status.cc so that this header stays free of torch.
absl::Status StatusFromCurrentException(const std::string& what);

template <typename Fn>
absl::Status GuardExceptions(const std::string& what, Fn&& fn) {
  try {
    return std::forward<Fn>(fn)();
  } catch (...) {
    return StatusFromCurrentException(what);
  }
}

}  // namespace rlhf

#define RLHF_STATUS_CONCAT_INNER_(a, b) a##b
#define RLHF_STATUS_CONCAT_(a, b) RLHF_STATUS_CONCAT_INNER_(a, b)

// Returns from the current function when `expr` (an absl::Status) is not OK.
#define RETURN_IF_ERROR(expr)                                           \
  do {                                                                  \
    ::absl::Status rlhf_status_ = (expr);                               \
    if (!rlhf_status_.ok()) return rlhf_status_;                        \
  } while (0)

// `lhs = value of expr` (an absl::StatusOr<T>), or returns its error from the current function.
// lhs may declare a variable: ASSIGN_OR_RETURN(auto x, Make());
#define ASSIGN_OR_RETURN(lhs, expr) \
  RLHF_ASSIGN_OR_RETURN_IMPL_(RLHF_STATUS_CONCAT_(rlhf_statusor_, __LINE__), lhs, expr)

#define RLHF_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                                \
  if (!tmp.ok()) return std::move(tmp).status();    \
  lhs = std::move(tmp).value()
