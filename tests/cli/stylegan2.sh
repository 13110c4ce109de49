#!/usr/bin/env bash
# info and sample on the tiny StyleGAN2 in its three file formats.
source "$(dirname "$0")/common.inc"
DIR="${RANKONE_FIXTURES:-$(dirname "$0")/../../../shared/fixtures}/stylegan2-tiny"
[ -d "$DIR" ] || { echo "reference fixtures not found; skipping"; exit 77; }

for file in generator.pt generator_legacy.pt generator.safetensors; do
  "$RANKONE" info --model "$DIR/$file" > "$WORK/info.txt" 2>&1 || fail "info $file"
  grep -q "StyleGAN2 64x64" "$WORK/info.txt" || fail "info $file: no architecture line"
  grep -q "g_ema.convs.3.conv.weight  \[1, 64, 64, 3, 3\]" "$WORK/info.txt" || fail "info $file: tensor list"
  "$RANKONE" sample --model "$DIR/$file" --seeds 0-7 --truncation 0.5 --noise sample \
    --out-tensor "$WORK/$file.safetensors" --out "$WORK/$file.png" 2>/dev/null || fail "sample $file"
done
cmp -s "$WORK/generator.pt.png" "$WORK/generator_legacy.pt.png" || fail "zip and legacy files sample differently"
cmp -s "$WORK/generator.pt.png" "$WORK/generator.safetensors.png" || fail "zip and safetensors sample differently"
for noise in stored reference zero; do
  "$RANKONE" sample --model "$DIR/generator.pt" --seeds 0-3 --noise "$noise" --out "$WORK/$noise.png" 2>/dev/null \
    || fail "sample --noise $noise"
done
expect_error "truncation" sample --model "$DIR/generator.pt" --truncation 3 --out "$WORK/bad.png"
echo "cli stylegan2: ok"
