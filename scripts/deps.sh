#!/usr/bin/env bash
# Installs the Debian packages Amtsbote needs to build, test and run its demo.
# As root it runs apt-get; otherwise it prints the exact command and stops.
# Sourced by demo.sh and test.sh; may also be run on its own.
set -euo pipefail

AMTSBOTE_PACKAGES=(
  build-essential cmake pkg-config
  libzmq3-dev libuv1-dev
  protobuf-c-compiler libprotobuf-c-dev
  libyaml-dev uthash-dev libssl-dev
  libcmocka-dev stunnel4 openssl python3-zmq
  protobuf-compiler libprotobuf-dev libprotoc-dev libjansson-dev libsqlite3-dev clang
  libhttp-parser-dev faketime
)

ab_missing_packages() {
  local p missing=()
  for p in "${AMTSBOTE_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  echo "${missing[@]:-}"
}

ab_install_deps() {
  local missing
  missing=$(ab_missing_packages)
  [ -z "$missing" ] && return 0
  if [ "$(id -u)" -ne 0 ]; then
    echo "amtsbote: missing Debian packages: $missing" >&2
    echo "amtsbote: install them with:" >&2
    echo "  sudo apt-get update && sudo apt-get install -y $missing" >&2
    exit 1
  fi
  echo "==> installing Debian packages: $missing"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # shellcheck disable=SC2086
  apt-get install -y -qq --no-install-recommends $missing >/dev/null
}

# Configures and builds into $1 (default build/) with extra CMake flags after it.
ab_build() {
  local dir=${1:-build}
  shift || true
  local jobs
  jobs=$(nproc 2>/dev/null || echo 2)
  mkdir -p "$dir"
  echo "==> building into $dir/"
  if ! cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo "$@" >"$dir/configure.log" 2>&1; then
    tail -n 40 "$dir/configure.log" >&2
    exit 1
  fi
  if ! cmake --build "$dir" -j"$jobs" >"$dir/build.log" 2>&1; then
    grep -E -A3 'error|Error' "$dir/build.log" | head -n 60 >&2
    exit 1
  fi
  grep -E 'warning:' "$dir/build.log" >&2 || true
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  cd "$(dirname "$0")/.."
  ab_install_deps
  echo "amtsbote: all build dependencies are installed"
fi
