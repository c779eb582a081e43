#include "common/runtime.h"

#include <ATen/Parallel.h>
#include <dlfcn.h>
#include <spdlog/spdlog.h>
#include <sys/wait.h>
#include <torch/torch.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>
#include <thread>

namespace rlhf {

namespace {

std::set<std::string> CpuFlags() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  std::set<std::string> flags;
  while (std::getline(in, line)) {
    if (line.rfind("flags", 0) == 0) {
      std::istringstream ss(line.substr(line.find(':') + 1));
      std::string f;
      while (ss >> f) flags.insert(f);
      break;
    }
  }
  return flags;
}

// True when a bf16 matrix product completes in a child process (it dies with SIGILL where oneDNN's AMX
// kernels are not usable).
bool Bf16MatmulWorks() {
  pid_t pid = fork();
  if (pid < 0) return true;  // cannot probe: leave oneDNN alone
  if (pid == 0) {
    try {
      at::set_num_threads(1);
      auto a = torch::ones({32, 32}, torch::kBFloat16);
      auto c = torch::matmul(a, a);
      _exit(c.sum().item<float>() == 32.f * 32 * 32 ? 0 : 3);
    } catch (...) {
      _exit(4);
    }
  }
  int status = 0;
  waitpid(pid, &status, 0);
  return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

}  // namespace

namespace {
std::vector<std::string>& Args() {
  static std::vector<std::string> args;
  return args;
}
}  // namespace

const std::vector<std::string>& ProcessArgs() { return Args(); }

void PrepareProcess(int argc, char** argv) {
  Args().assign(argv, argv + argc);
  const char* no_reexec = std::getenv("RLHF_NO_REEXEC");
  const bool may_reexec = no_reexec == nullptr || std::strcmp(no_reexec, "1") != 0;
  auto flags = CpuFlags();
  bool changed = false;
  if (std::getenv("OPENBLAS_CORETYPE") == nullptr) {
    const char* core = nullptr;
    if (flags.count("avx512f") && flags.count("avx512bw") && flags.count("avx512vl")) {
      core = "SkylakeX";
    } else if (flags.count("avx2") && flags.count("fma")) {
      core = "Haswell";
    }
    if (core != nullptr) {
      setenv("OPENBLAS_CORETYPE", core, 1);
      changed = true;
    }
  }
  if (std::getenv("ONEDNN_MAX_CPU_ISA") == nullptr && flags.count("amx_bf16") && !Bf16MatmulWorks()) {
    setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16", 1);
    setenv("DNNL_MAX_CPU_ISA", "AVX512_CORE_BF16", 1);
    changed = true;
  }
  if (changed && may_reexec) {
    setenv("RLHF_NO_REEXEC", "1", 1);  // once only
    execv("/proc/self/exe", argv);
    // exec failed: carry on with the kernels already loaded.
  }
}

RuntimeInfo DescribeRuntime() {
  RuntimeInfo info;
  std::ifstream maps("/proc/self/maps");
  std::string line;
  while (std::getline(maps, line)) {
    auto pos = line.find('/');
    if (pos == std::string::npos) continue;
    std::string path = line.substr(pos);
    if (path.find("libblas") != std::string::npos || path.find("libopenblas") != std::string::npos ||
        path.find("libmkl") != std::string::npos) {
      char real[4096];
      if (realpath(path.c_str(), real) != nullptr) path = real;
      info.blas_library = path;
      if (path.find("openblas") != std::string::npos || path.find("mkl") != std::string::npos) break;
    }
  }
  info.reference_blas = !info.blas_library.empty() && info.blas_library.find("openblas") == std::string::npos &&
                        info.blas_library.find("mkl") == std::string::npos;
  using CharFn = char* (*)();
  if (auto fn = reinterpret_cast<CharFn>(dlsym(RTLD_DEFAULT, "openblas_get_corename"))) info.openblas_core = fn();
  if (auto fn = reinterpret_cast<CharFn>(dlsym(RTLD_DEFAULT, "openblas_get_config"))) info.openblas_config = fn();
  if (const char* isa = std::getenv("ONEDNN_MAX_CPU_ISA")) info.onednn_max_isa = isa;
  info.threads = at::get_num_threads();
  return info;
}

void ConfigureRuntime(int threads) {
  int n = threads > 0 ? threads : static_cast<int>(std::thread::hardware_concurrency());
  if (n <= 0) n = 1;
  at::set_num_threads(n);
  auto info = DescribeRuntime();
  spdlog::info("runtime: LibTorch {} | threads {} | BLAS {} (core {}) | oneDNN ISA cap {}", TORCH_VERSION,
               info.threads, info.blas_library.empty() ? "unknown" : info.blas_library,
               info.openblas_core.empty() ? "?" : info.openblas_core,
               info.onednn_max_isa.empty() ? "none" : info.onednn_max_isa);
  if (info.reference_blas) {
    spdlog::warn("LibTorch is using the reference BLAS ({}): float matmuls run about 30x slower. "
                 "Run scripts/setup.sh (installs libopenblas0-openmp and selects it).",
                 info.blas_library);
  }
}

}  // namespace rlhf
