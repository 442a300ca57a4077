#!/usr/bin/env bash
# What ringtail costs while its files are quiet: CPU ticks from 10 s to 40 s after start, and
# VmRSS at 40 s, with the stdout sink (no receiver), 2 tailers.
#
# Usage: perf/idle.sh TREE [BIN ...]
#   TREE is a pod log tree, e.g. the one `E2E_KEEP=1 E2E_FILES=2000 E2E_MB=8 E2E_RUNS=1
#   cargo bench --bench e2e` keeps (it prints the path; pass its `pods` directory). Every file
#   is read to its end in the first seconds; the 30 s after that are idle polling.
#   Each BIN is a ringtail binary (default: this checkout's release build); they run in turn.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 1 ] || { echo "usage: perf/idle.sh TREE [BIN ...]" >&2; exit 2; }
tree=$1; shift
[ -d "$tree" ] || { echo "perf/idle.sh: $tree is not a directory (a pod log tree)" >&2; exit 2; }
if [ $# -eq 0 ]; then
  cargo build --release --quiet
  set -- target/release/ringtail
fi
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
for bin in "$@"; do
  work=$(mktemp -d)
  cat > "$work/ringtail.yaml" <<YAML
node_name: idle-node
data_dir: $work/data
server: { listen: "127.0.0.1:0" }
loki: { url: "" }
logs:
  pods: { enabled: true, path: "$tree", read_from: beginning }
  events: { enabled: false }
  journal: { enabled: false }
  rke2: { enabled: false }
tail: { threads: 2 }
log: { level: warn }
YAML
  "$bin" run --config "$work/ringtail.yaml" >/dev/null 2>"$work/stderr.log" &
  pid=$!
  sleep 10
  kill -0 "$pid" 2>/dev/null || { echo "perf/idle.sh: $bin exited; see $work/stderr.log" >&2; exit 1; }
  a=$(ticks "$pid"); sleep 30; b=$(ticks "$pid")
  rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status")
  kill "$pid"; wait "$pid" 2>/dev/null || true
  hz=$(getconf CLK_TCK)
  echo "$bin: $((b - a)) ticks in 30 s ($(awk -v t=$((b - a)) -v hz="$hz" 'BEGIN {printf "%.1f", 100 * t / hz / 30}') % of a core), VmRSS $((rss / 1024)) MiB"
  rm -rf "$work"
done
