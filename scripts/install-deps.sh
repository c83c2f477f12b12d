#!/usr/bin/env bash
# Installs the system packages Shoal builds and runs with, when missing: containerd and runc (the runtime),
# protoc (containerd-client's build), busybox-static (the test image), nftables and iproute2 (networking),
# tini (its static binary is the init of `--init` containers).
set -euo pipefail

need=()
command -v containerd >/dev/null || need+=(containerd)
command -v runc >/dev/null || need+=(runc)
command -v ctr >/dev/null || need+=(containerd)
command -v protoc >/dev/null || need+=(protobuf-compiler)
[ -x /bin/busybox ] || need+=(busybox-static)
[ -x /usr/bin/tini-static ] || need+=(tini)
command -v nft >/dev/null || need+=(nftables)
command -v ip >/dev/null || need+=(iproute2)
command -v sha256sum >/dev/null || need+=(coreutils)

if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "missing packages: ${need[*]}; run as root (or: sudo apt-get install ${need[*]})" >&2
    exit 1
  fi
  echo "installing: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
