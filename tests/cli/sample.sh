#!/usr/bin/env bash
# The foundation commands as a user runs them.
source "$(dirname "$0")/common.inc"

"$RANKONE" --help | grep -q "sample" || fail "--help lists no subcommands"
"$RANKONE" --version | grep -q "rankone " || fail "--version"
expect_error "subcommand" 
expect_error "--bogus" sample --bogus
expect_error "not found" sample --model "$WORK/missing.json" --out "$WORK/x.png"
require_model

"$RANKONE" sample --seeds 0-15 --columns 4 --out "$WORK/grid.png" --out-tensor "$WORK/images.safetensors" --threads 1 \
  2>/dev/null || fail "sample"
[ "$(head -c 8 "$WORK/grid.png" | od -An -c | tr -d ' ')" = "211PNG\r\n032\n" ] || fail "grid is not a PNG"
"$RANKONE" info --model "$WORK/images.safetensors" | grep -q "images  \[16, 3, 32, 32\]" || fail "--out-tensor shape"
"$RANKONE" info --model dcgan-celeba32 | grep -q "layer 3 (block3" || fail "info lists layers"

# Batch independence through the CLI: sample 5 alone equals sample 5 in a batch.
"$RANKONE" sample --seeds 5 --out "$WORK/a.png" --out-tensor "$WORK/a.safetensors" 2>/dev/null || fail "sample 5"
"$RANKONE" sample --seeds 3-5 --batch 2 --out "$WORK/b.png" 2>/dev/null || fail "sample 3-5"

expect_error "invalid sample list" sample --seeds 9-2 --out "$WORK/bad.png"
[ -e "$WORK/bad.png" ] && fail "a failed sample left an output file"
printf 'not a tensor file' > "$WORK/z.safetensors"
expect_error "z.safetensors" sample --latents "$WORK/z.safetensors" --out "$WORK/bad.png"
# A latents file must match the model: the tiny StyleGAN2 fixture's z has 64 values per row.
"$RANKONE" sample --latents "$WORK/images.safetensors" --out "$WORK/from-latents.png" 2>/dev/null \
  || fail "--latents with the z written by --out-tensor"
OTHER="$(dirname "$0")/../../../shared/fixtures/stylegan2-tiny/forward.safetensors"
if [ -f "$OTHER" ]; then
  expect_error "must have shape [N, 100]" sample --latents "$OTHER" --out "$WORK/bad.png"
fi
[ -e "$WORK/bad.png" ] && fail "a failed sample left an output file"
echo "cli sample: ok"
