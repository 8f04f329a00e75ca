#!/usr/bin/env bash
# on_gpu.sh <index> <command> [args...]: runs the command so that it sees only NVIDIA GPU <index>
# (the N of /dev/nvidiaN, nvidia-smi's index).
#
# why: WebGPU has no way to pick one of several identical GPUs. Dawn's Node binding takes the
# first adapter whose name contains its `adapter=` flag, and the GPUs of one host all have the
# same name. NVIDIA's Vulkan driver lists the GPUs whose device nodes it can open, so a process
# that cannot reach the other GPUs' nodes gets this one as its only, default, adapter. Container
# runtimes expose a subset of a host's GPUs the same way.
#
# how: a private mount namespace (unshare; needs root or CAP_SYS_ADMIN) in which /dev/null is
# bound over each other GPU's /dev/nvidiaN node (and an empty tmpfs over its
# /proc/driver/nvidia/gpus/<bus id> folder): the driver opens the node, finds no GPU there and
# lists only this one. (Removing the other nodes instead does not work: the driver, running as root,
# creates a missing node again.) Nothing changes outside the namespace: other processes still
# see every GPU. scripts/probe_gpu_select.sh checks this on a host: nvidia-smi shows where the
# memory of a process started under each method went.
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: scripts/on_gpu.sh <gpu index> <command> [args...]" >&2
  exit 2
fi
gpu=$1
shift
if [ ! -e "/dev/nvidia$gpu" ]; then
  echo "on_gpu.sh: there is no /dev/nvidia$gpu; this host has: $(ls /dev/nvidia[0-9]* 2>/dev/null | tr '\n' ' ')" >&2
  exit 2
fi
exec unshare --mount --propagation private -- bash -c '
set -euo pipefail
gpu=$1
shift
for d in /dev/nvidia[0-9]*; do
  [ "$d" = "/dev/nvidia$gpu" ] || mount --bind /dev/null "$d"
done
for info in /proc/driver/nvidia/gpus/*/information; do
  [ -e "$info" ] || continue
  minor=$(sed -n "s/^Device Minor:[[:space:]]*//p" "$info")
  [ "$minor" = "$gpu" ] || mount -t tmpfs on_gpu "${info%/information}"
done
exec "$@"
' on_gpu "$gpu" "$@"
