#!/usr/bin/env bash
# sweep_facts_parallel.sh <dir> <minutes> <runs for GPU 0> [<runs for GPU 1> ...]
# one scripts/sweep_facts.ts process per GPU on one sweep folder, each on its own runs (a
# comma-separated list, e.g. dense,memory,memory_plus), each GPU given to its process by
# scripts/on_gpu.sh (with a single list, no isolation: the default GPU). prepare the folder first
# (a call of sweep_facts.ts with --minutes 0 and the plan's first-call options): the processes
# must not all build the data at once. logs: <dir>/log.gpu<i>.txt (appended); their tails are
# printed at the end. exits non-zero when any process failed.
set -euo pipefail
if [ $# -lt 3 ]; then
  echo "usage: scripts/sweep_facts_parallel.sh <dir> <minutes> <runs for GPU 0> [<runs for GPU 1> ...]" >&2
  exit 2
fi
dir=$1
minutes=$2
shift 2
[ -f "$dir/plan.json" ] || { echo "sweep_facts_parallel.sh: $dir has no plan.json; prepare it with sweep_facts.ts --dir $dir --minutes 0 ..." >&2; exit 2; }
cd "$(dirname "$0")/.."
i=0
pids=()
for runs in "$@"; do
  wrap=()
  [ $# -gt 1 ] && wrap=(bash scripts/on_gpu.sh "$i")
  echo "== $(date -u +%FT%TZ) GPU $i: $runs, $minutes min" >> "$dir/log.gpu$i.txt"
  "${wrap[@]}" node --import tsx scripts/sweep_facts.ts --dir "$dir" --minutes "$minutes" --runs "$runs" >> "$dir/log.gpu$i.txt" 2>&1 &
  pids+=($!)
  i=$((i + 1))
done
status=0
for p in "${pids[@]}"; do wait "$p" || status=1; done
for f in "$dir"/log.gpu*.txt; do
  echo "== $f"
  grep -v -e '^Warning' "$f" | tail -n 30
done
exit $status
