#include "common/text/utf8.h"

#include <unicode/utf8.h>

namespace rlhf::text {

std::vector<std::string> SplitCodePoints(std::string_view s) {
  std::vector<std::string> out;
  int32_t i = 0;
  const int32_t n = static_cast<int32_t>(s.size());
  while (i < n) {
    int32_t start = i;
    UChar32 c;
    U8_NEXT(reinterpret_cast<const uint8_t*>(s.data()), i, n, c);
    out.emplace_back(s.substr(start, i - start));
  }
  return out;
}

}  // namespace rlhf::text
