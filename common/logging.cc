#include "common/logging.h"

#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/sinks/stdout_color_sinks.h>

#include <cstdlib>
#include <mutex>

namespace rlhf {

namespace {
std::mutex g_mu;  // the logger's set-up (sinks, level)
}

void InitLogging(const std::string& level) {
  std::lock_guard<std::mutex> lock(g_mu);
  auto logger = spdlog::get("rlhf");
  if (!logger) {
    auto sink = std::make_shared<spdlog::sinks::stderr_color_sink_mt>();
    logger = std::make_shared<spdlog::logger>("rlhf", sink);
    logger->set_pattern("%Y-%m-%d %H:%M:%S.%e %^%L%$ %v");
    spdlog::set_default_logger(logger);
  }
  std::string chosen = level;
  if (const char* env = std::getenv("RLHF_LOG_LEVEL"); env != nullptr && *env != '\0') chosen = env;
  spdlog::set_level(spdlog::level::from_str(chosen));
  logger->flush_on(spdlog::level::warn);
}

absl::Status AddLogFile(const std::string& path) {
  std::lock_guard<std::mutex> lock(g_mu);
  auto logger = spdlog::default_logger();
  try {
    auto sink = std::make_shared<spdlog::sinks::basic_file_sink_mt>(path, /*truncate=*/false);
    sink->set_pattern("%Y-%m-%d %H:%M:%S.%e %L %v");
    logger->sinks().push_back(sink);
  } catch (const spdlog::spdlog_ex& e) {
    return absl::FailedPreconditionError(absl::StrCat("cannot open log file ", path, ": ", e.what()));
  }
  return absl::OkStatus();
}

}  // namespace rlhf
