// UTF-8 helpers shared by the tokenizer and the chat templates.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace rlhf::text {

// The code points of a UTF-8 string, each as its own UTF-8 substring (an invalid byte is one element).
std::vector<std::string> SplitCodePoints(std::string_view s);

}  // namespace rlhf::text
