#include "common/status.h"

#include <c10/util/Exception.h>

#include <exception>
#include <new>
#include <stdexcept>

namespace rlhf {

absl::Status Annotate(const absl::Status& status, const std::string& context) {
  if (status.ok()) return status;
  return absl::Status(status.code(), absl::StrCat(context, ": ", status.message()));
}

namespace {
// c10::Error messages carry a multi-line C++ backtrace; keep the first line, which says what went wrong.
std::string FirstLine(const std::string& s) {
  auto pos = s.find('\n');
  return pos == std::string::npos ? s : s.substr(0, pos);
}
}  // namespace

absl::Status StatusFromCurrentException(const std::string& what) {
  try {
    throw;
  } catch (const c10::IndexError& e) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": ", FirstLine(e.what_without_backtrace())));
  } catch (const c10::ValueError& e) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": ", FirstLine(e.what_without_backtrace())));
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat(what, ": ", FirstLine(e.what_without_backtrace())));
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError(absl::StrCat(what, ": out of memory"));
  } catch (const std::invalid_argument& e) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": ", e.what()));
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat(what, ": ", e.what()));
  } catch (...) {
    return absl::InternalError(absl::StrCat(what, ": unknown exception"));
  }
}

}  // namespace rlhf
