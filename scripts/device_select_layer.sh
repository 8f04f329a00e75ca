#!/usr/bin/env bash
# device_select_layer.sh pack|install: Mesa's device-select Vulkan layer for a host without Mesa (the
# GPU host), so that openGpus (src/gpu/multi.ts) can tell its GPUs apart.
#   pack     (here, where .ci/install-vulkan.sh installed Mesa) copies the layer, its manifest and the
#            libraries it needs into .gpu-layer/ (git-ignored: carry it to the host)
#   install  (on the host, from the project root) puts the manifest, with the library's absolute path, in
#            /etc/vulkan/implicit_layer.d, where every Vulkan loader looks (an older loader ignores
#            VK_ADD_IMPLICIT_LAYER_PATH); then export LD_LIBRARY_PATH=$PWD/.gpu-layer/lib:$LD_LIBRARY_PATH
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
  pack)
    mkdir -p .gpu-layer/lib
    cp /usr/share/vulkan/implicit_layer.d/VkLayer_MESA_device_select.json .gpu-layer/
    lib=/usr/lib/x86_64-linux-gnu/libVkLayer_MESA_device_select.so
    cp -L "$lib" .gpu-layer/lib/
    # the libraries it links beside libc
    ldd "$lib" | awk '/=> \// { print $3 }' | grep -v -E '/(libc|libpthread|libdl|libm)\.so' | xargs -I{} cp -L {} .gpu-layer/lib/
    grep -qx '/.gpu-layer/' .git/info/exclude || echo '/.gpu-layer/' >> .git/info/exclude
    ls .gpu-layer/lib
    ;;
  install)
    mkdir -p /etc/vulkan/implicit_layer.d
    sed "s|\"libVkLayer_MESA_device_select.so\"|\"$PWD/.gpu-layer/lib/libVkLayer_MESA_device_select.so\"|" .gpu-layer/VkLayer_MESA_device_select.json > /etc/vulkan/implicit_layer.d/VkLayer_MESA_device_select.json
    echo "installed: export LD_LIBRARY_PATH=$PWD/.gpu-layer/lib:\${LD_LIBRARY_PATH:-}"
    ;;
  *)
    echo "usage: scripts/device_select_layer.sh pack|install" >&2
    exit 2
    ;;
esac
