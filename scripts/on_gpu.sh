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
# how: a private mount namespace (unshare; needs root or CAP_SYS_ADMIN) in which the other GPUs'
# /dev/nvidiaN nodes are covered, by ENGRAM_GPU_HIDE=
#   devfs (default)  a fresh /dev holding every entry of the real one except the other GPUs' nodes
#   null             /dev/null bound over each other GPU's node (it opens, but is not a GPU)
# and, with either, each other GPU's /proc/driver/nvidia/gpus/<bus id> folder covered by an empty
# tmpfs. Nothing changes outside the namespace: other processes still see every GPU.
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
others=()
for d in /dev/nvidia[0-9]*; do [ "$d" = "/dev/nvidia$gpu" ] || others+=("$d"); done
case "${ENGRAM_GPU_HIDE:-devfs}" in
  null)
    for d in "${others[@]}"; do mount --bind /dev/null "$d"; done ;;
  devfs)
    real=$(mktemp -d /tmp/on_gpu_dev.XXXXXX)
    mount --bind /dev "$real"
    mount -t tmpfs -o mode=755 on_gpu /dev
    for e in "$real"/* "$real"/.[!.]*; do
      [ -e "$e" ] || [ -L "$e" ] || continue
      n=${e##*/}
      skip=0
      for d in "${others[@]}"; do [ "/dev/$n" = "$d" ] && skip=1; done
      [ $skip = 1 ] && continue
      if [ -L "$e" ]; then cp -P "$e" "/dev/$n"
      elif [ -d "$e" ]; then mkdir "/dev/$n" && mount --rbind "$e" "/dev/$n"
      else touch "/dev/$n" && mount --bind "$e" "/dev/$n"
      fi
    done ;;
  *) echo "on_gpu.sh: ENGRAM_GPU_HIDE must be devfs or null" >&2; exit 2 ;;
esac
for info in /proc/driver/nvidia/gpus/*/information; do
  [ -e "$info" ] || continue
  minor=$(sed -n "s/^Device Minor:[[:space:]]*//p" "$info")
  [ "$minor" = "$gpu" ] || mount -t tmpfs on_gpu "${info%/information}"
done
exec "$@"
' on_gpu "$gpu" "$@"
