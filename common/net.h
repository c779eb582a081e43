// Small facts about network addresses, shared by the RPC layer and the process groups.
#pragma once

#include <string>

namespace rlhf {

// True for "localhost", any 127.x.y.z and the IPv6 loopback ("::1" or "[::1]"). Other names are not
// resolved: a host name counts as reachable from elsewhere.
bool IsLoopbackHost(const std::string& host);

// The host part of "host:port" ("[::1]:50051" -> "[::1]"; "" when there is no colon).
std::string HostOfAddress(const std::string& address);

}  // namespace rlhf
