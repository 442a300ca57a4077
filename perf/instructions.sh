#!/usr/bin/env bash
# Instruction counts of ringtail on the end-to-end bench, under valgrind's callgrind: stable on a
# shared, noisy machine (a VM without hardware counters, where `perf stat -e instructions`
# prints <not supported>), so two builds can be compared to within a fraction of a percent.
#
# Usage: perf/instructions.sh [BIN ...]       (default: this checkout's release build)
#   Each BIN is a ringtail binary, e.g. one built from another commit. Prints, per binary,
#   instructions per input byte for the whole process (startup included, and the idle polling
#   of the seconds the run takes under valgrind) and the 15 functions with the most.
#
# Environment: E2E_MB [16], E2E_FILES [200], E2E_THREADS [1], passed to the bench.
# Installs valgrind when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v valgrind >/dev/null 2>&1; then
  echo "valgrind is missing: installing it" >&2
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq valgrind >/dev/null
fi
export E2E_MB=${E2E_MB:-16} E2E_FILES=${E2E_FILES:-200} E2E_THREADS=${E2E_THREADS:-1}
export E2E_RUNS=1 E2E_TIMEOUT=900
bins=("$@")
if [ ${#bins[@]} -eq 0 ]; then
  cargo build --release --locked
  bins=("$PWD/target/release/ringtail")
fi
work=$(mktemp -d /tmp/ringtail-instr.XXXXXX)
trap 'rm -rf "$work"' EXIT
list=""
for i in "${!bins[@]}"; do
  bin=$(realpath "${bins[$i]}")
  cat >"$work/wrap-$i.sh" <<WRAP
#!/bin/sh
exec valgrind --tool=callgrind --callgrind-out-file=$work/out-$i.%p -q "$bin" "\$@"
WRAP
  chmod +x "$work/wrap-$i.sh"
  list="${list:+$list,}b$i=$work/wrap-$i.sh"
done
E2E_BIN=$list cargo bench --bench e2e | tee "$work/bench.txt" | grep -E "^e2e: [0-9]+ files|lost" || true
bytes=$(sed -n 's/^e2e: [0-9]* files, \([0-9.]*\) MiB.*/\1/p' "$work/bench.txt")
for i in "${!bins[@]}"; do
  out=$(ls "$work"/out-$i.* | head -n1)
  total=$(callgrind_annotate "$out" 2>/dev/null | sed -n 's/^\([0-9,]*\) (100.0%).*PROGRAM TOTALS.*/\1/p' | tr -d ,)
  echo "== ${bins[$i]}: $total instructions, $(awk -v t="$total" -v m="$bytes" 'BEGIN{printf "%.1f", t/(m*1048576)}') per input byte"
  callgrind_annotate --inclusive=no "$out" 2>/dev/null | sed -n '/file:function/,$p' | sed -n '2,16p'
done
