#!/usr/bin/env bash
# Builds the image the examples run, busybox:latest (busybox-static with httpd, nc, wget, sh), as an `image load`
# archive, and loads it into the local daemon when `shoal` can reach one. On a cluster, run the printed
# `shoal image load` on every node (or push the image to a registry the nodes can pull from).
#   usage: compose-examples/build-images.sh [OUT_DIR]   (default: compose-examples/images)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/images}
mkdir -p "$out"
bash "$here/../scripts/build-test-image.sh" "$out/busybox.tar" busybox:latest
if command -v shoal >/dev/null && shoal info >/dev/null 2>&1; then
  shoal image load -i "$out/busybox.tar"
else
  echo "load it on each node with: shoal image load -i $out/busybox.tar"
fi
