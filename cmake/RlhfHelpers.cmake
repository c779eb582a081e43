# Small helpers shared by every CMakeLists.txt of the project.

# The one precompiled header of the project: torch/torch.h is by far the heaviest include.
# Targets call rlhf_use_torch_pch(target) to reuse it instead of compiling their own.
function(rlhf_use_torch_pch target)
  if(NOT RLHF_USE_PCH)
    return()
  endif()
  if(NOT TARGET rlhf_torch_pch)
    # file(CONFIGURE) rewrites only when the content changes, so a re-configure does not rebuild the PCH.
    file(CONFIGURE OUTPUT ${CMAKE_BINARY_DIR}/rlhf_torch_pch.cc
         CONTENT "// translation unit that owns the torch precompiled header\n")
    add_library(rlhf_torch_pch OBJECT ${CMAKE_BINARY_DIR}/rlhf_torch_pch.cc)
    target_link_libraries(rlhf_torch_pch PUBLIC torch Threads::Threads)
    target_precompile_headers(rlhf_torch_pch PRIVATE <torch/torch.h>)
  endif()
  target_precompile_headers(${target} REUSE_FROM rlhf_torch_pch)
endfunction()

# rlhf_add_test(NAME name SOURCES a.cc b.cc LIBS lib1 lib2 [TORCH] [TIMING Suite.Test Suite.* ...])
# One GoogleTest executable per module; every test case is registered with CTest. The cases named (or
# matched, gtest filter patterns) by TIMING are the ones that run several processes or threads against each
# other, servers or deadlines: they get the CTest label `timing` (the others `unit`), which
# scripts/flake_check.sh repeats.
function(rlhf_add_test)
  cmake_parse_arguments(T "TORCH" "NAME" "SOURCES;LIBS;TIMING" ${ARGN})
  add_executable(${T_NAME} ${T_SOURCES} ${PROJECT_SOURCE_DIR}/tests/test_main.cc)
  target_link_libraries(${T_NAME} PRIVATE ${T_LIBS} rlhf_common GTest::gtest Threads::Threads)
  target_include_directories(${T_NAME} PRIVATE ${PROJECT_SOURCE_DIR})
  target_compile_definitions(${T_NAME} PRIVATE
    RLHF_SOURCE_DIR="${PROJECT_SOURCE_DIR}"
    RLHF_BINARY_DIR="${PROJECT_BINARY_DIR}"
    RLHF_PYTHON3="${DEBIAN_PYTHON3}")
  if(T_TORCH)
    rlhf_use_torch_pch(${T_NAME})
  endif()
  if(T_TIMING)
    list(JOIN T_TIMING ":" timing_filter)
    gtest_discover_tests(${T_NAME}
      DISCOVERY_MODE PRE_TEST TEST_FILTER "-${timing_filter}"
      PROPERTIES ENVIRONMENT "RLHF_LOG_LEVEL=warn" TIMEOUT 600 LABELS unit)
    gtest_discover_tests(${T_NAME}
      DISCOVERY_MODE PRE_TEST TEST_FILTER "${timing_filter}"
      PROPERTIES ENVIRONMENT "RLHF_LOG_LEVEL=warn" TIMEOUT 600 LABELS timing)
  else()
    gtest_discover_tests(${T_NAME}
      DISCOVERY_MODE PRE_TEST
      PROPERTIES ENVIRONMENT "RLHF_LOG_LEVEL=warn" TIMEOUT 600 LABELS unit)
  endif()
endfunction()
