// FNV-1a 64: the project's one non-cryptographic hash of bytes (prompt ids, the train / held-out split,
// sampling stream seeds, checkpoint file checksums). Stable across builds and machines: its values are
// stored on disk and compared across processes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace rlhf {

inline constexpr uint64_t kFnv1a64Offset = 1469598103934665603ULL;

// Continues the hash `h` over `n` bytes (start with kFnv1a64Offset; feed a stream in pieces).
inline uint64_t Fnv1a64(const void* data, size_t n, uint64_t h = kFnv1a64Offset) {
  const auto* p = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < n; ++i) {
    h ^= p[i];
    h *= 1099511628211ULL;
  }
  return h;
}
inline uint64_t Fnv1a64(std::string_view text) { return Fnv1a64(text.data(), text.size()); }

}  // namespace rlhf
