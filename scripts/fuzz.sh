#!/usr/bin/env bash
# Builds the libFuzzer targets with clang in build-fuzz/ and runs each for SECONDS seconds,
# one after the other on one core.
#
#   scripts/fuzz.sh [SECONDS] [TARGET ...]      # default: 20 s for every target
#
# Targets: pickle torch_zip torch_legacy safetensors mask_url request (the last one compiles the
# whole engine with instrumentation, so its first build takes longest). Each starts from its
# seeds in fuzz/seeds/<target> plus what earlier runs added to build-fuzz/corpus/<target>.
# Exits 1 when any target finds a crash (the input is saved under build-fuzz/artifacts/),
# 2 when clang or libFuzzer is missing or the build fails.
# Environment: RANKONE_FUZZ_BUILD (build folder), RANKONE_FUZZ_SANITIZER ("address", the
# default, or "none" for coverage-guided fuzzing without a sanitizer).
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
seconds="${1:-20}"
shift || true
targets=("$@")
if [ "${#targets[@]}" -eq 0 ]; then
  targets=(pickle torch_zip torch_legacy safetensors mask_url request)
fi
build="${RANKONE_FUZZ_BUILD:-$root/build-fuzz}"
sanitizer="${RANKONE_FUZZ_SANITIZER:-address}"
[ "$sanitizer" = "none" ] && sanitizer=""

if ! [[ "$seconds" =~ ^[0-9]+$ ]] || [ "$seconds" -lt 1 ]; then
  echo "fuzz: SECONDS must be a positive integer, got '$seconds'" >&2
  exit 2
fi
if ! command -v clang++ >/dev/null 2>&1; then
  echo "fuzz: clang++ not found; install it with 'apt-get install clang libclang-rt-14-dev'" >&2
  exit 2
fi
runtime_dir="$(clang++ -print-runtime-dir 2>/dev/null)"
if ! ls "$runtime_dir"/libclang_rt.fuzzer*.a >/dev/null 2>&1 &&
   ! ls "$(dirname "$(clang++ -print-libgcc-file-name -rtlib=compiler-rt 2>/dev/null)")"/libclang_rt.fuzzer*.a \
     >/dev/null 2>&1; then
  echo "fuzz: libFuzzer (libclang_rt.fuzzer) not found; install it with 'apt-get install libclang-rt-14-dev'" >&2
  exit 2
fi

known=" pickle torch_zip torch_legacy safetensors mask_url request "
for target in "${targets[@]}"; do
  if [[ "$known" != *" $target "* ]]; then
    echo "fuzz: unknown target '$target' (choose from:$known)" >&2
    exit 2
  fi
done

echo "fuzz: building the targets in $build (sanitizer: ${sanitizer:-none})"
if ! CXX=clang++ CC=clang cmake -S "$root" -B "$build" -G Ninja -DRANKONE_BUILD_FUZZ=ON \
    -DRANKONE_BUILD_TESTS=OFF -DRANKONE_BUILD_BENCH=OFF -DRANKONE_FUZZ_SANITIZER="$sanitizer" >/dev/null ||
   ! cmake --build "$build" --target "${targets[@]/#/fuzz_}"; then
  echo "fuzz: the build failed (see the compiler output above)" >&2
  exit 2
fi

# libtorch allocates caches at start-up that it never frees, so leak reports are not findings.
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=0:allocator_may_return_null=1}"
export OMP_NUM_THREADS=1
mkdir -p "$build/artifacts"
failed=()
for target in "${targets[@]}"; do
  binary="$build/fuzz/fuzz_$target"
  corpus="$build/corpus/$target"
  mkdir -p "$corpus"
  echo "fuzz: $target for $seconds s"
  # -rss_limit_mb and -malloc_limit_mb turn runaway allocations into findings, and -timeout
  # does the same for one input that takes longer than 10 s.
  if "$binary" "$corpus" "$root/fuzz/seeds/$target" -max_total_time="$seconds" -max_len=65536 \
      -timeout=10 -rss_limit_mb=4096 -malloc_limit_mb=2048 -print_final_stats=1 \
      -artifact_prefix="$build/artifacts/$target-" >"$build/artifacts/$target.log" 2>&1; then
    grep -E "^stat::(number_of_executed_units|peak_rss_mb|new_units_added)" "$build/artifacts/$target.log" |
      tr '\n' ' '
    echo
  else
    echo "fuzz: $target FAILED; the last lines of $build/artifacts/$target.log:" >&2
    tail -n 30 "$build/artifacts/$target.log" >&2
    failed+=("$target")
  fi
done

if [ "${#failed[@]}" -gt 0 ]; then
  echo "fuzz: crashes in ${failed[*]}; inputs are in $build/artifacts/" >&2
  exit 1
fi
echo "fuzz: no crash in ${targets[*]} ($seconds s each)"
