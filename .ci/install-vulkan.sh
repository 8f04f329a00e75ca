#!/usr/bin/env bash
# Installs Mesa's lavapipe software Vulkan (>= 25, from bookworm-backports) so that Dawn
# finds a WebGPU adapter on a machine without a GPU. Idempotent; needs root (or sudo).
set -euo pipefail
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
have() { dpkg-query -W -f='${Version}' mesa-vulkan-drivers 2>/dev/null | grep -Eq '^(2[5-9]|[3-9][0-9])\.'; }
if have && dpkg-query -W libvulkan1 >/dev/null 2>&1; then echo "lavapipe present: $(dpkg-query -W -f='${Version}' mesa-vulkan-drivers)"; exit 0; fi
if ! grep -rqs bookworm-backports /etc/apt/sources.list /etc/apt/sources.list.d/; then
  echo "deb http://deb.debian.org/debian bookworm-backports main" | $SUDO tee /etc/apt/sources.list.d/bookworm-backports.list >/dev/null
fi
$SUDO apt-get update -qq
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends -t bookworm-backports mesa-vulkan-drivers libvulkan1
have || { echo "mesa-vulkan-drivers >= 25 is required (got $(dpkg-query -W -f='${Version}' mesa-vulkan-drivers 2>/dev/null))" >&2; exit 1; }
echo "lavapipe installed: $(dpkg-query -W -f='${Version}' mesa-vulkan-drivers)"
