#!/usr/bin/env bash
# Installs Mesa's software Vulkan driver (lavapipe), so Dawn finds an adapter on a machine
# without a GPU. Debian 12's own Mesa (22.3) is too old for Dawn; bookworm-backports has 25.x.
set -euo pipefail
if vulkan_ok=$(ls /usr/share/vulkan/icd.d/lvp_icd*.json 2>/dev/null) && [ -n "$vulkan_ok" ] && [ -e /usr/lib/x86_64-linux-gnu/libvulkan.so.1 ]; then
  echo "setup:vulkan: lavapipe already installed ($vulkan_ok)"; exit 0
fi
lines=()
. /etc/os-release 2>/dev/null || true
if [ "${ID:-}" = debian ] && [ "${VERSION_CODENAME:-}" = bookworm ]; then
  lines+=("echo 'deb http://deb.debian.org/debian bookworm-backports main' > /etc/apt/sources.list.d/backports.list")
  lines+=("apt-get update")
  lines+=("DEBIAN_FRONTEND=noninteractive apt-get install -y -t bookworm-backports mesa-vulkan-drivers libvulkan1")
elif [ "${ID:-}" = debian ] || [ "${ID:-}" = ubuntu ] || [ "${ID_LIKE:-}" = debian ]; then
  lines+=("apt-get update")
  lines+=("DEBIAN_FRONTEND=noninteractive apt-get install -y mesa-vulkan-drivers libvulkan1")
else
  echo "setup:vulkan: unsupported distribution '${ID:-unknown}'. Install Mesa >= 24 with its Vulkan drivers (lavapipe) and the Vulkan loader (libvulkan1) with your package manager." >&2
  exit 1
fi
if [ "$(id -u)" != 0 ]; then
  echo "setup:vulkan: needs root. Run these as root:"; printf '  %s\n' "${lines[@]}"; exit 1
fi
for l in "${lines[@]}"; do echo "+ $l"; bash -c "$l"; done
