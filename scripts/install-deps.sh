#!/usr/bin/env bash
# Installs what Shoal builds and runs with, when missing: a C toolchain and pkg-config (crates with C parts),
# protoc (containerd-client's build), containerd and runc (the runtime), tini (its static binary is the init of
# `--init` containers), busybox-static (the test image), nftables, iproute2 and conntrack (networking),
# docker-registry and apache2-utils (a registry and htpasswd for the pull tests), curl (the demo's fetch). Checks that cargo is new enough; it
# does not install Rust.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v cc >/dev/null || need+=(build-essential)
command -v pkg-config >/dev/null || need+=(pkg-config)
command -v protoc >/dev/null || need+=(protobuf-compiler)
command -v containerd >/dev/null || need+=(containerd)
command -v runc >/dev/null || need+=(runc)
command -v ctr >/dev/null || need+=(containerd)
[ -x /usr/bin/tini-static ] || need+=(tini)
[ -x /bin/busybox ] || need+=(busybox-static)
command -v nft >/dev/null || need+=(nftables)
command -v ip >/dev/null || need+=(iproute2)
command -v conntrack >/dev/null || need+=(conntrack)
command -v sha256sum >/dev/null || need+=(coreutils)
command -v docker-registry >/dev/null || need+=(docker-registry)
command -v htpasswd >/dev/null || need+=(apache2-utils)
command -v curl >/dev/null || need+=(curl)

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

# Rust is not a Debian 12 package recent enough: say how to get it rather than install a toolchain behind the
# user's back.
want=$(sed -n 's/^rust-version *= *"\([0-9.]*\)".*/\1/p' Cargo.toml)
if ! command -v cargo >/dev/null; then
  echo "cargo is missing: install Rust $want or newer with rustup (https://rustup.rs), then run this again" >&2
  exit 1
fi
have=$(cargo --version | sed -n 's/^cargo \([0-9][0-9.]*\).*/\1/p')
if [ "$(printf '%s\n%s\n' "$want" "$have" | sort -V | head -n1)" != "$want" ]; then
  echo "cargo $have is older than the $want this workspace needs: run 'rustup update' (or install a newer Rust), then run this again" >&2
  exit 1
fi
