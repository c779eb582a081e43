#!/usr/bin/env bash
# Installs every Debian package the project needs to build, test and run.
# Idempotent: packages already present are left alone. Needs root (or sudo) on Debian bookworm.
set -euo pipefail

PACKAGES=(
  # toolchain
  build-essential cmake ninja-build ccache pkg-config git
  # LibTorch (CPU), its collectives and a fast BLAS
  libtorch-dev libgloo-dev libopenblas0-openmp
  # launch and bootstrap
  libopenmpi-dev openmpi-bin
  # RPC and metrics
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler libabsl-dev prometheus-cpp-dev
  # config, CLI, logging, JSON, Unicode
  nlohmann-json3-dev libyaml-cpp-dev libcli11-dev libspdlog-dev libfmt-dev libicu-dev
  # tests and benchmarks
  googletest libgtest-dev libgmock-dev libbenchmark-dev
  # independent references used by the tests
  python3 python3-torch python3-numpy python3-grpcio python3-protobuf python3-jinja2
  # test certificates (TLS, mutual TLS) and the sandbox tests' namespace tools
  openssl util-linux
  # promtool checks the metrics we expose and the Prometheus config in deploy/
  prometheus
)

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${#missing[@]} missing packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  echo "setup: all ${#PACKAGES[@]} packages present"
fi

# Node.js and npm run the reference tokenizer (npm `tokenizers`) in the tests; Debian's when none is installed.
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  echo "setup: installing nodejs and npm"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends nodejs npm
fi

# LibTorch must use OpenBLAS (OpenMP build), not the reference BLAS: ~30x slower matmuls otherwise.
arch_lib="/usr/lib/$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || echo x86_64-linux-gnu)"
want="${arch_lib}/openblas-openmp/libblas.so.3"
if [ -e "$want" ]; then
  current=$(update-alternatives --query "libblas.so.3-$(basename "$arch_lib")" 2>/dev/null | awk '/^Value:/{print $2}')
  if [ "$current" != "$want" ]; then
    $SUDO update-alternatives --set "libblas.so.3-$(basename "$arch_lib")" "$want"
  fi
  want_l="${arch_lib}/openblas-openmp/liblapack.so.3"
  if [ -e "$want_l" ]; then
    current=$(update-alternatives --query "liblapack.so.3-$(basename "$arch_lib")" 2>/dev/null | awk '/^Value:/{print $2}')
    if [ "$current" != "$want_l" ]; then
      $SUDO update-alternatives --set "liblapack.so.3-$(basename "$arch_lib")" "$want_l"
    fi
  fi
fi
echo "setup: BLAS = $(update-alternatives --query "libblas.so.3-$(basename "$arch_lib")" 2>/dev/null | awk '/^Value:/{print $2}')"
