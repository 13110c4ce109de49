#!/usr/bin/env bash
# Hostile and broken inputs given to the real CLI, rejected before any model is loaded: each
# command must fail with exit status 1 or 2 and print the expected `error:` line.
# tests/cli/hostile_model_inputs.sh has the cases that need the bundled model.
#   usage: hostile_inputs.sh path/to/rankone
source "$(dirname "$0")/hostile.inc"

# Inputs rejected before any model is loaded.
expect_error "huge sample range" "more than 100000 samples" \
  "$rankone" eval --patch "$hostile/patch_inf.safetensors" --samples 0-4294967295 --out "$work/eval"
expect_error "sample index too large" "is not a non-negative integer" \
  "$rankone" eval --patch "$hostile/patch_inf.safetensors" --samples 0-99999999999 --out "$work/eval"
expect_error "NaN weights in a model card" "contains NaN or infinite values" \
  "$rankone" sample --model "$hostile/tiny_nan.json" --samples 0-3 --out "$work/x.png"
expect_error "infinite weights in a model card" "contains NaN or infinite values" \
  "$rankone" info --model "$hostile/tiny_inf.json"
expect_error "pickle that calls os.system" "pickle global 'os.system'" \
  "$rankone" info --model "$hostile/pickle_os_system.pt"
expect_error "zip bomb" "is compressed (method 8)" \
  "$rankone" info --model "$hostile/zip_bomb_deflate.pt"
expect_error "empty mask" "is empty (paint some pixels white)" \
  "$rankone" edit --request "$hostile/request_empty_mask.json" --out "$work/p.safetensors"
expect_error "broken data URL" "invalid base64 data" \
  "$rankone" edit --request "$hostile/request_broken_base64.json" --out "$work/p.safetensors"
expect_error "missing request file" "cannot open the request file" \
  "$rankone" edit --request "$work/absent.json" --out "$work/p.safetensors"
expect_error "zero threshold" "'0' is not a positive number" \
  "$rankone" eval --patch "$hostile/patch_inf.safetensors" --threshold 0 --out "$work/eval"

echo "$((checks - failures)) passed, $failures failed"
[ "$failures" -eq 0 ]
