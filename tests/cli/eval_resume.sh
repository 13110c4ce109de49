#!/usr/bin/env bash
# `rankone eval` interrupted with SIGINT (Ctrl-C) stops after its current chunk and saves its
# partial results. The same command resumes from them, and other settings are rejected.
# Skips (exit 77) when the bundled model is not fetched.
#   usage: eval_resume.sh path/to/rankone
set -euo pipefail
rankone="$1"
source_dir="${RANKONE_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}"
work="$(mktemp -d "${TMPDIR:-/tmp}/rankone-eval-resume.XXXXXX")"
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

# SIGINT stops a long run after its current chunk, with exit status 1.
out="$work/interrupted"
"$rankone" eval --patch "$patch" --samples 0-159 --chunk 4 --out "$out" >"$work/first.log" 2>&1 &
pid=$!
for _ in $(seq 1 600); do
  [ -f "$out/partial.safetensors" ] && break
  sleep 0.05
done
[ -f "$out/partial.safetensors" ] || { kill -9 "$pid"; fail "no partial results after 30 s"; }
kill -INT "$pid"
status=0
wait "$pid" || status=$?
[ "$status" -eq 1 ] || { cat "$work/first.log"; fail "interrupted run exited with $status, expected 1"; }
grep -q "evaluation interrupted after" "$work/first.log" || { cat "$work/first.log"; fail "no interruption message"; }

"$rankone" eval --patch "$patch" --samples 0-159 --chunk 4 --threshold 0.7 --out "$out" >"$work/other.log" 2>&1 &&
  fail "partial results of another threshold were accepted"
grep -q "threshold differ" "$work/other.log" || { cat "$work/other.log"; fail "no settings mismatch message"; }

# The same settings resume. The chunk size may differ because results are kept per sample.
"$rankone" eval --patch "$patch" --samples 0-159 --chunk 160 --out "$out" >"$work/second.log" 2>&1 ||
  { cat "$work/second.log"; fail "the resumed run failed"; }
grep -q "resumed: [0-9]* samples were read" "$work/second.log" || { cat "$work/second.log"; fail "did not resume"; }
echo "eval interruption and resume: ok"
