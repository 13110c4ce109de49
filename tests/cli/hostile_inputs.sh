#!/usr/bin/env bash
# Hostile and broken inputs given to the real CLI, rejected before any model is loaded: each
# command must fail with exit status 1 or 2 and print the expected `error:` line.
# tests/cli/hostile_model_inputs.sh has the cases that need the bundled model.
#   usage: hostile_inputs.sh path/to/rankone
set -uo pipefail
rankone="$1"
source_dir="${RANKONE_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}"
hostile="$source_dir/tests/hostile"
work="$(mktemp -d "${TMPDIR:-/tmp}/rankone-hostile-cli.XXXXXX")"
trap 'rm -rf "$work"' EXIT
export OMP_NUM_THREADS=1

failures=0
checks=0
# expect_error NAME EXPECTED-SUBSTRING COMMAND...
expect_error() {
  local name="$1" expected="$2"
  shift 2
  checks=$((checks + 1))
  local output status
  output="$(timeout 120 "$@" 2>&1)"
  status=$?
  if [ "$status" -ne 1 ] && [ "$status" -ne 2 ]; then
    echo "FAIL $name: exit status $status, expected 1 or 2; output:"
    echo "$output" | tail -n 5
    failures=$((failures + 1))
  elif ! grep -qF -- "error:" <<<"$output" || ! grep -qF -- "$expected" <<<"$output"; then
    echo "FAIL $name: the output lacks 'error:' and '$expected'; output:"
    echo "$output" | tail -n 5
    failures=$((failures + 1))
  else
    echo "ok   $name: $(grep -F "error:" <<<"$output" | head -n 1 | cut -c 1-150)"
  fi
}

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
