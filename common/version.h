#pragma once
namespace rlhf {
// Version of the rlhf binary and libraries.
const char* BuildVersion();
}  // namespace rlhf
