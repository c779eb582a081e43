#include "common/model/safetensors.h"

#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>

namespace rlhf::model {
namespace {

std::string TempPath(const std::string& name) { return ::testing::TempDir() + "/st_" + name; }

// Writes header JSON + data bytes in the safetensors layout (no validation).
void WriteRaw(const std::string& path, const std::string& header, const std::string& data, int64_t len_override = -1) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  uint64_t n = len_override >= 0 ? static_cast<uint64_t>(len_override) : header.size();
  for (int i = 0; i < 8; ++i) out.put(static_cast<char>((n >> (8 * i)) & 0xff));
  out << header << data;
}

absl::Status OpenStatus(const std::string& path) { return SafetensorsFile::Open(path).status(); }

void ExpectError(const absl::Status& s, absl::StatusCode code, const std::string& needle) {
  EXPECT_EQ(s.code(), code) << s;
  EXPECT_NE(s.message().find(needle), std::string::npos) << "'" << needle << "' not in: " << s.message();
  EXPECT_EQ(s.message().find('\n'), std::string::npos) << "one line: " << s.message();
}

TEST(Safetensors, WriteThenReadBack) {
  std::vector<float> a = {1, 2, 3, 4, 5, 6};
  std::vector<uint16_t> b = {0x3f80, 0x4000};  // bf16 1.0, 2.0
  std::string path = TempPath("ok.safetensors");
  ASSERT_TRUE(WriteSafetensors(path,
                               {{"a", StDType::kF32, {2, 3}, a.data()}, {"b.weight", StDType::kBF16, {2}, b.data()}},
                               {{"format", "pt"}})
                  .ok());
  auto f = SafetensorsFile::Open(path);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ((*f)->metadata().at("format"), "pt");
  ASSERT_EQ((*f)->tensors().size(), 2u);
  const TensorInfo* ta = (*f)->Find("a");
  ASSERT_NE(ta, nullptr);
  EXPECT_EQ(ta->shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(std::memcmp((*f)->Data(*ta), a.data(), 24), 0);
  const TensorInfo* tb = (*f)->Find("b.weight");
  ASSERT_NE(tb, nullptr);
  EXPECT_EQ(tb->dtype, StDType::kBF16);
  EXPECT_EQ(std::memcmp((*f)->Data(*tb), b.data(), 4), 0);
  EXPECT_EQ((*f)->Find("c"), nullptr);
  // The header is padded to 8 bytes and no temporary file is left behind.
  std::ifstream in(path, std::ios::binary);
  uint64_t n = 0;
  in.read(reinterpret_cast<char*>(&n), 8);
  EXPECT_EQ(n % 8, 0u);
  for (const auto& e : std::filesystem::directory_iterator(::testing::TempDir())) {
    EXPECT_EQ(e.path().string().find("ok.safetensors.tmp"), std::string::npos);
  }
  EXPECT_EQ(WriteSafetensors(TempPath("dup"), {{"a", StDType::kF32, {1}, a.data()}, {"a", StDType::kF32, {1}, a.data()}}, {})
                .code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(Safetensors, MissingFile) { ExpectError(OpenStatus(TempPath("none")), absl::StatusCode::kNotFound, "no such file"); }

TEST(Safetensors, ShorterThanTheLengthField) {
  std::string p = TempPath("short");
  std::ofstream(p) << "abc";
  ExpectError(OpenStatus(p), absl::StatusCode::kDataLoss, "too short");
}

TEST(Safetensors, HeaderLengthPastTheEnd) {
  std::string p = TempPath("hlen");
  WriteRaw(p, R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", "abcd", 5000);
  ExpectError(OpenStatus(p), absl::StatusCode::kDataLoss, "goes past the end of the file");
}

TEST(Safetensors, TruncatedData) {
  std::string p = TempPath("trunc");
  WriteRaw(p, R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", "12345678");
  ExpectError(OpenStatus(p), absl::StatusCode::kDataLoss, "tensor 'a': data_offsets [0, 16] are outside the data (8 bytes)");
}

TEST(Safetensors, OverlappingTensors) {
  std::string p = TempPath("overlap");
  WriteRaw(p,
           R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
           "123456789012");
  ExpectError(OpenStatus(p), absl::StatusCode::kInvalidArgument, "overlap tensor 'a'");
}

TEST(Safetensors, ShapeAndDtypeDisagreeWithOffsets) {
  std::string p = TempPath("size");
  WriteRaw(p, R"({"w":{"dtype":"BF16","shape":[2,2],"data_offsets":[0,16]}})", std::string(16, 'x'));
  ExpectError(OpenStatus(p), absl::StatusCode::kInvalidArgument, "tensor 'w': shape [2, 2] of BF16 needs 8 bytes but data_offsets span 16");
}

TEST(Safetensors, HolesAndTrailingBytes) {
  std::string p = TempPath("hole");
  WriteRaw(p, R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", "12345678");
  ExpectError(OpenStatus(p), absl::StatusCode::kInvalidArgument, "belong to no tensor");
  std::string q = TempPath("trail");
  WriteRaw(q, R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", "12345678");
  ExpectError(OpenStatus(q), absl::StatusCode::kDataLoss, "cover 4 bytes but the data buffer has 8");
}

TEST(Safetensors, MalformedHeaders) {
  std::string p = TempPath("json");
  WriteRaw(p, "{not json", "");
  ExpectError(OpenStatus(p), absl::StatusCode::kInvalidArgument, "not a JSON object");
  WriteRaw(p, R"({"a":{"dtype":"Q4","shape":[1],"data_offsets":[0,1]}})", "x");
  ExpectError(OpenStatus(p), absl::StatusCode::kInvalidArgument, "tensor 'a': unsupported dtype 'Q4'");
  WriteRaw(p, R"({"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", "1234");
  ExpectError(OpenStatus(p), absl::StatusCode::kInvalidArgument, "non-negative");
  WriteRaw(p, R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[8,4]}})", "12345678");
  ExpectError(OpenStatus(p), absl::StatusCode::kInvalidArgument, "end before they begin");
  WriteRaw(p, R"({"a":{"dtype":"F32","shape":[1]}})", "1234");
  ExpectError(OpenStatus(p), absl::StatusCode::kInvalidArgument, "data_offsets must be [begin, end]");
}

}  // namespace
}  // namespace rlhf::model
