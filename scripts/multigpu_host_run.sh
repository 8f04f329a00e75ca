#!/usr/bin/env bash
# the multigpu run on a host of several NVIDIA GPUs, in one go. from the project root, after
# `source .gpu/setup.sh`, with .gpu-layer carried (scripts/device_select_layer.sh pack, here):
#   1. installs Mesa's device-select layer (openGpus tells the GPUs apart through it)
#   2. scripts/multigpu_probe.ts: each Gpu's memory must land on its own GPU, or the run stops here
#   3. npm run bench -- multigpu --largest [args]: one GPU against the table sharded over all of them
# logs and the result file go to ${OUT:-.}/multigpu_host/. set ENGRAM_COMMIT to the commit (a copy without
# .git cannot say it).
#
#   bash scripts/multigpu_host_run.sh [--gpus=2]
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-.}/multigpu_host"
mkdir -p "$out" /tmp/xdg
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp/xdg}
bash scripts/device_select_layer.sh install
export LD_LIBRARY_PATH="$PWD/.gpu-layer/lib:${LD_LIBRARY_PATH:-}"
nvidia-smi -L | tee "$out/gpus.txt"
if ! node --import tsx scripts/multigpu_probe.ts > "$out/probe.txt" 2>&1; then
  grep -v Warning "$out/probe.txt" | tail -8
  # what the layer sees (it lists the devices with their PCI addresses and exits), and the loader's view
  MESA_VK_DEVICE_SELECT=list node --import tsx -e "import { Gpu } from './src/gpu/device.ts'; await Gpu.create();" > "$out/device_select_list.txt" 2>&1
  VK_LOADER_DEBUG=layer,driver node --import tsx -e "import { Gpu } from './src/gpu/device.ts'; (await Gpu.create()).destroy();" > "$out/loader.txt" 2>&1
  echo "the probe failed: the Gpus did not land on the GPUs at their addresses (see $out/probe.txt, device_select_list.txt, loader.txt)"
  exit 1
fi
grep -v Warning "$out/probe.txt" | tail -4
node --import tsx bench/run.ts multigpu --largest "$@" > "$out/multigpu.txt" 2>&1
rc=$?
grep -v Warning "$out/multigpu.txt" | grep -v -e '^ - ' -e 'validation' -e 'Invalid' | tail -30
cp bench/results/multigpu-*.json "$out/" 2>/dev/null
exit $rc
