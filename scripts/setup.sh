#!/usr/bin/env bash
# Installs every package rankone needs on Debian 12 (run as root or with sudo).
# OpenBLAS (libopenblas0-pthread) is installed on purpose: Debian's libtorch calls
# BLAS through the libblas.so.3 alternative, and the reference BLAS it falls back
# to is several times slower for the matrix products of statistics and solves.
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

PACKAGES=(
  build-essential cmake ninja-build ccache pkg-config git curl ca-certificates
  libtorch-dev libopenblas0-pthread
  nlohmann-json3-dev libcli11-dev libspdlog-dev libcpp-httplib-dev libstb-dev libssl-dev
  libgtest-dev libbenchmark-dev clang libclang-rt-14-dev
  chromium
)
# Node.js runs the browser tests; Debian's nodejs and npm packages are used only where no
# node is installed already (a NodeSource nodejs bundles npm and conflicts with Debian's).
if ! command -v npm >/dev/null 2>&1; then PACKAGES+=(nodejs npm); fi

missing=()
for package in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# Browser tests drive Debian's chromium through playwright-core (no browser download).
root="$(cd "$(dirname "$0")/.." && pwd)"
if [ -f "$root/tests/e2e/package.json" ] && [ ! -d "$root/tests/e2e/node_modules/playwright-core" ]; then
  (cd "$root/tests/e2e" && npm install --no-audit --no-fund --loglevel=error)
fi
