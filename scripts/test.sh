#!/usr/bin/env bash
# The whole test suite on a fresh Debian 12 machine: installs packages, builds,
# fetches the bundled model (from $RANKONE_LOCAL_MODELS when set, else from its
# public address) and runs every test with ctest.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
"$root/scripts/setup.sh"
"$root/scripts/build.sh"
export RANKONE_MODELS="${RANKONE_MODELS:-$root/build/models}"
export RANKONE_CACHE="${RANKONE_CACHE:-$root/build/cache}"
"$root/build/rankone" fetch dcgan-celeba32
cd "$root/build"
ctest --output-on-failure --timeout 600 "$@"
