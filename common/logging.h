// Process-wide logging on spdlog: a console sink, plus a file sink in the run directory once known.
// Level from the config (`run.log_level`) or the RLHF_LOG_LEVEL environment variable, which wins.
#pragma once

#include <spdlog/spdlog.h>

#include <string>

#include "common/status.h"

namespace rlhf {

// Sets up the default logger (idempotent). `level` is trace|debug|info|warn|error|off.
void InitLogging(const std::string& level);
// Also writes log lines to `path` (appending). Fails when the file cannot be opened.
absl::Status AddLogFile(const std::string& path);

}  // namespace rlhf
