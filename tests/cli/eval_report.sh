#!/usr/bin/env bash
# `rankone eval` as a user runs it: evaluate the bundled sunglasses edit with the discriminator
# and check the report folder. tests/cli/eval_resume.sh covers interruption and resuming.
# Skips (exit 77) when the bundled model is not fetched.
#   usage: eval_report.sh path/to/rankone
set -euo pipefail
rankone="$1"
source_dir="${RANKONE_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}"
work="$(mktemp -d "${TMPDIR:-/tmp}/rankone-eval-cli.XXXXXX")"
trap 'rm -rf "$work"' EXIT
export OMP_NUM_THREADS=2

models="${RANKONE_MODELS:-${XDG_CACHE_HOME:-$HOME/.cache}/rankone/models}"
if [ ! -f "$models/dcgan-celeba32/generator.pt" ]; then
  echo "skip: the dcgan-celeba32 weights are not fetched (set RANKONE_MODELS and run 'rankone fetch dcgan-celeba32')"
  exit 77
fi
fail() {
  echo "FAIL: $*"
  exit 1
}

# The bundled sunglasses request as `rankone edit` solves it (see tests/data).
patch="$source_dir/tests/data/sunglasses_patch.safetensors"

# A short run with the discriminator, when `rankone fetch` brought it beside the generator.
critic=()
if [ -f "$models/dcgan-celeba32/discriminator.pt" ]; then
  critic=(--discriminator "$models/dcgan-celeba32/discriminator.pt")
fi
summary="$("$rankone" eval --patch "$patch" --samples 0-31 --out "$work/report" --grid 4 "${critic[@]}")"
echo "$summary"
grep -q "rule applies in [0-9]* of 32 samples" <<<"$summary" || fail "no summary line"
for file in report.html report.json response_histogram.png most_changed.png least_changed.png; do
  [ -s "$work/report/$file" ] || fail "$file was not written"
done
if [ "${#critic[@]}" -gt 0 ]; then
  [ -s "$work/report/discriminator_histogram.png" ] || fail "discriminator_histogram.png was not written"
  grep -q "discriminator logit: mean" <<<"$summary" || fail "no discriminator line"
fi
if grep -q "https\?://" "$work/report/report.html"; then fail "report.html refers to an external address"; fi

echo "eval report: ok"
