#!/usr/bin/env bash
# Installs Debian's Chromium for the browser test (headless, WebGPU through SwiftShader).
# Idempotent; needs root (or sudo).
set -euo pipefail
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
if [ -x /usr/bin/chromium ]; then echo "chromium present: $(/usr/bin/chromium --version 2>/dev/null)"; exit 0; fi
$SUDO apt-get update -qq
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium
echo "chromium installed: $(/usr/bin/chromium --version 2>/dev/null)"
