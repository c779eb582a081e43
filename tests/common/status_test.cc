#include "common/status.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

namespace rlhf {
namespace {

absl::StatusOr<int> Half(int x) {
  if (x % 2 != 0) return absl::InvalidArgumentError("odd");
  return x / 2;
}

absl::StatusOr<int> Quarter(int x) {
  ASSIGN_OR_RETURN(int h, Half(x));
  ASSIGN_OR_RETURN(int q, Half(h));
  return q;
}

absl::Status CheckEven(int x) {
  RETURN_IF_ERROR(Half(x).status());
  return absl::OkStatus();
}

TEST(Status, MacrosPropagate) {
  EXPECT_EQ(*Quarter(8), 2);
  EXPECT_EQ(Quarter(6).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(CheckEven(2).ok());
  EXPECT_FALSE(CheckEven(3).ok());
}

TEST(Status, AnnotateKeepsTheCode) {
  auto s = Annotate(absl::NotFoundError("x"), "loading y");
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(s.message(), "loading y: x");
  EXPECT_TRUE(Annotate(absl::OkStatus(), "ctx").ok());
}

TEST(Status, TorchExceptionsBecomeStatuses) {
  auto s = GuardExceptions("matmul", []() -> absl::Status {
    auto a = torch::ones({2, 3});
    auto b = torch::ones({2, 3});
    (void)torch::matmul(a, b);  // shape mismatch: c10::Error
    return absl::OkStatus();
  });
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("matmul: "), std::string::npos);
  EXPECT_EQ(s.message().find('\n'), std::string::npos) << "one line, no backtrace: " << s.message();
  auto idx = GuardExceptions("index", []() -> absl::Status {
    auto a = torch::ones({2});
    (void)a.index_select(0, torch::tensor({5}, torch::kLong));
    return absl::OkStatus();
  });
  EXPECT_FALSE(idx.ok());
  auto ok = GuardExceptions("fine", [] { return absl::OkStatus(); });
  EXPECT_TRUE(ok.ok());
}

}  // namespace
}  // namespace rlhf
