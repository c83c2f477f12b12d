#!/usr/bin/env bash
# The demo: builds Shoal, starts shoald (which starts its own containerd), makes a one-node swarm, loads the
# busybox test image and runs a 3-replica service, then shows `service ps` and `service logs`.
# Leaves the daemon running; stop it with: kill $(cat /run/shoal/shoald.pid)
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
cargo build --release --workspace --bins
export PATH="$PWD/target/release:$PATH"

if ! shoal version >/dev/null 2>&1; then
  mkdir -p /run/shoal /var/log
  echo "starting shoald (log: /var/log/shoald.log)"
  nohup shoald >/var/log/shoald.log 2>&1 &
  echo $! > /run/shoal/shoald.pid
  for _ in $(seq 100); do shoal version >/dev/null 2>&1 && break; sleep 0.2; done
fi

bash scripts/build-test-image.sh /tmp/shoal-busybox.tar
shoal image load -i /tmp/shoal-busybox.tar
shoal info | grep -q 'Swarm: active' || shoal swarm init --advertise-addr 127.0.0.1
shoal service rm demo >/dev/null 2>&1 || true
shoal service create --name demo --replicas 3 busybox \
  sh -c 'while true; do echo "hello from $(hostname)"; sleep 2; done'
shoal service ls
shoal service ps demo
sleep 3
shoal service logs --tail 3 demo
