#!/usr/bin/env bash
# probe_gpu_select.sh: on a host with several NVIDIA GPUs, which ways of giving a Node process one
# GPU work with Dawn? For each way, scripts/gpu_hold.ts runs in the background holding a distinct
# amount of memory (so nvidia-smi shows where it went) while nvidia-smi is sampled; the adapters
# Dawn lists under that way are printed too. Output: a log on stdout.
set -u
cd "$(dirname "$0")/.."
run() { node --import tsx scripts/gpu_hold.ts "$@"; }
adapters() { ENGRAM_DAWN_TOGGLES=adapter=__list__ node --import tsx -e "import('./src/gpu/device.ts').then(m => m.Gpu.create()).catch(e => { console.log(String(e.message ?? e).split('\n').filter(l => /\\*|adapter/i.test(l)).join('\n')); process.exit(0); })" 2>&1 | grep -v Warning; }
smi() { nvidia-smi --query-gpu=index,memory.used,utilization.gpu --format=csv,noheader | tr '\n' ';'; echo; }
echo "== nvidia-smi -L"; nvidia-smi -L
echo "== device nodes: $(ls /dev/nvidia* | tr '\n' ' ')"
echo "== /proc/driver/nvidia/gpus: $(ls /proc/driver/nvidia/gpus 2>/dev/null | tr '\n' ' ')"
echo "== idle: $(smi)"
try() {
  local name=$1 gib=$2; shift 2
  echo "== $name (holds $gib GiB)"
  echo "adapters: $("$@" bash -c "$(declare -f adapters); adapters" | tr '\n' ' ')"
  "$@" node --import tsx scripts/gpu_hold.ts "$gib" 8 > /tmp/probe_$name.log 2>&1 &
  local pid=$!
  for s in 1 2 3; do sleep 3; echo "t+$((3 * s))s: $(smi)"; done
  wait $pid; echo "exit $?: $(grep -v Warning /tmp/probe_$name.log | tr '\n' ' ')"
}
try plain 3 env
try cuda_visible_1 5 env CUDA_VISIBLE_DEVICES=1

try on_gpu_1 9 bash scripts/on_gpu.sh 1
echo "== both at once: on_gpu 0 (4 GiB) and on_gpu 1 (6 GiB)"
bash scripts/on_gpu.sh 0 node --import tsx scripts/gpu_hold.ts 4 8 > /tmp/probe_a.log 2>&1 &
a=$!
bash scripts/on_gpu.sh 1 node --import tsx scripts/gpu_hold.ts 6 8 > /tmp/probe_b.log 2>&1 &
b=$!
for s in 1 2 3; do sleep 3; echo "t+$((3 * s))s: $(smi)"; done
wait $a; echo "gpu 0: exit $?: $(grep -v Warning /tmp/probe_a.log | tr '\n' ' ')"
wait $b; echo "gpu 1: exit $?: $(grep -v Warning /tmp/probe_b.log | tr '\n' ' ')"
