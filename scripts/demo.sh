#!/usr/bin/env bash
# The main job on a fresh Debian 12 machine: install, build, fetch the bundled
# face model, rewrite it with the bundled sunglasses request and write the
# before / after grid to out/sunglasses.png.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
"$root/scripts/setup.sh"
"$root/scripts/build.sh"
mkdir -p "$root/out"
rankone="$root/build/rankone"
"$rankone" fetch dcgan-celeba32
"$rankone" edit --model dcgan-celeba32 --request "$root/requests/dcgan-sunglasses.json" --out "$root/out/sunglasses.safetensors"
"$rankone" compare --model dcgan-celeba32 --patch "$root/out/sunglasses.safetensors" --samples 0-31 --columns 8 \
  --out "$root/out/sunglasses.png"
echo "demo: open $root/out/sunglasses.png (rows of originals, each above its rewritten row)"
