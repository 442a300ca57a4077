#!/usr/bin/env bash
# Profiles the end-to-end bench (benches/e2e.rs) with `perf record` and renders a flame graph
# SVG with inferno. See perf/README.md.
#
# Usage: perf/flamegraph.sh [OUT.svg]          (default: perf/out/flamegraph.svg)
#
# Environment:
#   SCOPE=ringtail   profile only the ringtail processes the bench starts (default)
#   SCOPE=all        the whole bench: generator, receiver and ringtail
#   CALLGRAPH=dwarf  unwind with DWARF CFI (default: Rust release builds have no frame pointers,
#                    so `-g` alone gives one-frame stacks); CALLGRAPH=fp uses plain `-g`
#   FREQ=499         samples per second
#   E2E_*            passed to the bench; defaults here: E2E_RUNS=1 E2E_THREADS=2
#                    (e.g. E2E_MB=128 E2E_FILES=2000 E2E_IO=pread perf/flamegraph.sh)
#
# Installs what is missing: perf (Debian's linux-perf) and inferno (cargo install inferno).
set -euo pipefail
cd "$(dirname "$0")/.."

out=${1:-perf/out/flamegraph.svg}
scope=${SCOPE:-ringtail}
callgraph=${CALLGRAPH:-dwarf}
freq=${FREQ:-499}
export E2E_RUNS=${E2E_RUNS:-1}
export E2E_THREADS=${E2E_THREADS:-2}
work=$(mktemp -d /tmp/ringtail-perf.XXXXXX)
trap 'rm -rf "$work"' EXIT
mkdir -p "$(dirname "$out")"

if ! command -v perf >/dev/null 2>&1; then
  echo "perf is missing: installing linux-perf" >&2
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq linux-perf >/dev/null
fi
if ! command -v inferno-flamegraph >/dev/null 2>&1 || ! command -v inferno-collapse-perf >/dev/null 2>&1; then
  echo "inferno is missing: cargo install inferno" >&2
  cargo install inferno --locked
fi

# Hardware counters are often missing in VMs (firecracker, many clouds): sample on the CPU
# clock there. perf_event_paranoid > 1 needs root (or CAP_PERFMON) for other processes.
event=cycles
if perf stat -e cycles true 2>&1 | grep -q "not supported"; then
  event=cpu-clock
fi
case "$callgraph" in
  fp) cg=(-g) ;;
  dwarf) cg=(--call-graph dwarf,16384) ;;
  *) cg=(--call-graph "$callgraph") ;;
esac

# Build first, then run the bench binary itself (so cargo is not in the profile).
exe=$(cargo bench --bench e2e --no-run 2>&1 | sed -n 's/.*Executable .*(\(.*\))$/\1/p' | tail -n1)
if [ -z "$exe" ] || [ ! -x "$exe" ]; then
  echo "cannot find the e2e bench executable (cargo bench --bench e2e --no-run)" >&2
  exit 1
fi

echo "recording: perf record -e $event -F $freq ${cg[*]} -- $exe --bench (SCOPE=$scope)" >&2
perf record -e "$event" -F "$freq" "${cg[@]}" -o "$work/perf.data" -- "$exe" --bench \
  | tee "$work/bench.txt"

filter=()
if [ "$scope" = ringtail ]; then
  pids=$(sed -n 's/.*ringtail pid \([0-9]*\).*/\1/p' "$work/bench.txt" | paste -sd, -)
  if [ -z "$pids" ]; then
    echo "no ringtail pid in the bench output; profiling everything" >&2
  else
    filter=(--pid "$pids")
  fi
fi
perf script -i "$work/perf.data" "${filter[@]}" 2>/dev/null \
  | inferno-collapse-perf >"$work/folded.txt"
inferno-flamegraph --title "ringtail e2e ($scope, $event, E2E_THREADS=$E2E_THREADS)" \
  <"$work/folded.txt" >"$out"
cp "$work/folded.txt" "${out%.svg}.folded"
echo "wrote $out (and ${out%.svg}.folded, the collapsed stacks)" >&2
