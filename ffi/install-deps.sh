#!/usr/bin/env bash
# Installs what the rapax-ffi bindings need on Debian 12 (bookworm) or a derivative:
# rdma-core's headers and providers (libibverbs, librdmacm), DPDK 22.11 (headers, libraries and
# PMDs such as net_ring), libclang for bindgen, and pkg-config. Idempotent and non-interactive:
# with everything already installed it changes nothing.
set -euo pipefail

packages=(
    pkg-config
    libclang-dev
    libibverbs-dev
    librdmacm-dev
    ibverbs-providers
    libdpdk-dev
    dpdk
)

missing=()
for p in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$p")
    fi
done
if [ "${#missing[@]}" -eq 0 ]; then
    echo "rapax-ffi dependencies already installed: ${packages[*]}"
    exit 0
fi

sudo=()
if [ "$(id -u)" -ne 0 ]; then
    sudo=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive
echo "installing rapax-ffi dependencies: ${missing[*]}"
"${sudo[@]}" apt-get update -q
"${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
