#!/usr/bin/env bash
# Builds a one-layer OCI image-layout tarball from Debian's busybox-static: /bin/busybox plus a link for every
# applet (sh, httpd, sleep, nc, wget, …), /etc/passwd and /etc/group, /tmp, and /var/www/index.html.
# Deterministic: the same busybox gives the same digests.
#   usage: build-test-image.sh OUT.tar [REF]   (REF defaults to busybox:latest)
set -euo pipefail
out=${1:?usage: build-test-image.sh OUT.tar [REF]}
ref=${2:-busybox:latest}

if [ ! -x /bin/busybox ]; then
  [ "$(id -u)" = 0 ] || { echo "busybox-static is missing: apt-get install busybox-static" >&2; exit 1; }
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq busybox-static >/dev/null
fi

# Same modes whatever the caller's umask: the digests must not depend on it.
umask 022

# docker.io/library/NAME:TAG, as Docker normalizes a familiar reference (a ':' before the last '/' is a port).
name=$ref
case "${name##*/}" in *:*) ;; *) name="$name:latest" ;; esac
case "$name" in
  */*) case "${name%%/*}" in *.*|*:*|localhost) full=$name ;; *) full="docker.io/$name" ;; esac ;;
  *) full="docker.io/library/$name" ;;
esac
tag=${full##*:}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root=$work/rootfs
mkdir -p "$root"/{bin,etc,tmp,var/www,root,proc,sys,dev}
chmod 1777 "$root/tmp"
cp /bin/busybox "$root/bin/busybox"
for applet in $(/bin/busybox --list); do
  [ "$applet" = busybox ] || ln -sf busybox "$root/bin/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' > "$root/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' > "$root/etc/group"
printf '<html><body><h1>Hello from Shoal</h1></body></html>\n' > "$root/var/www/index.html"

layout=$work/layout
mkdir -p "$layout/blobs/sha256"
tar --format=gnu --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$root" -cf "$work/layer.tar" .
layer_digest=$(sha256sum "$work/layer.tar" | cut -d' ' -f1)
layer_size=$(stat -c %s "$work/layer.tar")
mv "$work/layer.tar" "$layout/blobs/sha256/$layer_digest"

arch=$(dpkg --print-architecture 2>/dev/null || echo amd64)
put() { # put FILE → prints "digest size", storing FILE as a blob
  local d s
  d=$(sha256sum "$1" | cut -d' ' -f1); s=$(stat -c %s "$1")
  mv "$1" "$layout/blobs/sha256/$d"
  echo "$d $s"
}
printf '{"architecture":"%s","os":"linux","created":"1970-01-01T00:00:00Z","config":{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"Cmd":["sh"],"WorkingDir":"/"},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]},"history":[{"created":"1970-01-01T00:00:00Z","created_by":"shoal scripts/build-test-image.sh (busybox-static)"}]}' \
  "$arch" "$layer_digest" > "$work/config.json"
read -r config_digest config_size < <(put "$work/config.json")
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:%s","size":%s}]}' \
  "$config_digest" "$config_size" "$layer_digest" "$layer_size" > "$work/manifest.json"
read -r manifest_digest manifest_size < <(put "$work/manifest.json")
printf '{"imageLayoutVersion":"1.0.0"}' > "$layout/oci-layout"
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"%s"}}]}' \
  "$manifest_digest" "$manifest_size" "$full" "$tag" > "$layout/index.json"

mkdir -p "$(dirname "$out")"
tar --format=gnu --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$layout" -cf "$out" oci-layout index.json blobs
echo "built $out ($full, manifest sha256:$manifest_digest)"
