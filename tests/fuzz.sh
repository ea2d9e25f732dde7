#!/usr/bin/env bash
# Runs every fuzz target in fuzz/ for SECONDS each (default 60) on the stable toolchain
# (cargo fuzz, libFuzzer, no sanitizer: `-s none`), starting from fuzz/seeds/ and fuzz/regressions/.
# Prints each target's executions and exits non-zero if any target found a crash; a crashing
# input is left in fuzz/artifacts/<target>/ (copy it to fuzz/regressions/<target>/ once fixed).
set -uo pipefail
secs="${1:-60}"
case "$secs" in ''|*[!0-9]*) echo "usage: tests/fuzz.sh SECONDS" >&2; exit 2 ;; esac
cd "$(dirname "$0")/../fuzz"

if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked || exit 1
fi
cargo fuzz build -s none || exit 1

failed=()
for target in $(cargo fuzz list); do
  mkdir -p "corpus/$target" "seeds/$target" "regressions/$target"
  log="$(mktemp)"
  cargo fuzz run -s none "$target" "corpus/$target" "seeds/$target" "regressions/$target" -- \
    -max_total_time="$secs" -print_final_stats=1 >"$log" 2>&1
  status=$?
  runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)"
  done_line="$(grep -E '^Done [0-9]+ runs in' "$log" | tail -1)"
  if [ "$status" -ne 0 ]; then
    failed+=("$target")
    echo "$target: CRASH (exit $status) after ${runs:-?} executions"
    grep -E 'panicked at|ERROR: libFuzzer|Test unit written to' "$log" | head -5
  else
    echo "$target: ${runs:-?} executions in ${secs} s (${done_line:-no stats line})"
  fi
  rm -f "$log"
done

if [ "${#failed[@]}" -ne 0 ]; then
  echo "crashes in: ${failed[*]}"
  exit 1
fi
echo "no crash in $(cargo fuzz list | wc -l) targets"
