#include "common/net.h"

namespace rlhf {

bool IsLoopbackHost(const std::string& host) {
  return host == "localhost" || host.rfind("127.", 0) == 0 || host == "::1" || host == "[::1]";
}

std::string HostOfAddress(const std::string& address) {
  const auto colon = address.rfind(':');
  if (colon == std::string::npos) return "";
  return address.substr(0, colon);
}

}  // namespace rlhf
