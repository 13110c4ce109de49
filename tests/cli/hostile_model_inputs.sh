#!/usr/bin/env bash
# Hostile and broken inputs that reach the bundled face model, given to the real CLI: each
# command must fail with exit status 1 or 2 and print the expected `error:` line. Skips (exit 77)
# when the model's weights are not fetched.
#   usage: hostile_model_inputs.sh path/to/rankone
source "$(dirname "$0")/hostile.inc"

models="${RANKONE_MODELS:-${XDG_CACHE_HOME:-$HOME/.cache}/rankone/models}"
if [ ! -f "$models/dcgan-celeba32/generator.pt" ]; then
  echo "skip: the dcgan-celeba32 weights are not fetched (set RANKONE_MODELS and run 'rankone fetch dcgan-celeba32')"
  exit 77
fi
expect_error "request image index too large" "out of range: use 0 to 4294967295" \
  "$rankone" edit --request "$hostile/request_image_too_large.json" --out "$work/p.safetensors" --stats-samples 50 --no-cache
expect_error "mask that vanishes at the layer" "cover no pixel" \
  "$rankone" edit --request "$hostile/request_mask_speck.json" --out "$work/p.safetensors" --stats-samples 50 --no-cache
expect_error "non-finite patch" "patch contains NaN or infinite values" \
  "$rankone" eval --patch "$hostile/patch_inf.safetensors" --samples 0-3 --out "$work/eval"
expect_error "patch for another model" "made for another model" \
  "$rankone" compare --patch "$hostile/patch_other_model.safetensors" --samples 0-3 --out "$work/x.png"
expect_error "patch for another model in eval" "made for another model" \
  "$rankone" eval --patch "$hostile/patch_other_model.safetensors" --samples 0-3 --out "$work/eval"
expect_error "generator given as discriminator" "no discriminator found" \
  "$rankone" eval --patch "$hostile/patch_inf.safetensors" --samples 0-3 --out "$work/eval" \
  --discriminator "$hostile/tiny_nan.safetensors"

echo "$((checks - failures)) passed, $failures failed"
[ "$failures" -eq 0 ]
