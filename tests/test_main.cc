// main() of every test executable: the same process set-up as the rlhf binary (BLAS kernel selection,
// oneDNN ISA cap where AMX faults), then GoogleTest.
#include <gtest/gtest.h>

#include "common/logging.h"
#include "common/runtime.h"

int main(int argc, char** argv) {
  rlhf::PrepareProcess(argc, argv);
  rlhf::InitLogging("warn");
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
