#!/usr/bin/env bash
# The demo: builds Shoal, puts `shoal` and `shoald` on the PATH (links in /usr/local/bin), starts shoald (which
# starts its own containerd), makes a one-node swarm, loads the busybox test image and runs a 3-replica service,
# then shows `service ps` and `service logs`, and publishes a web service on port 8080 whose page it fetches
# through the routing mesh.
# It builds the same (debug) binaries as the test command, so running one after the other compiles once.
# Leaves the daemon running; stop it with: kill $(cat /run/shoal/shoald.pid)
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
echo "building (the first build takes about 5 minutes on 2 cores; later ones only what changed)"
cargo build --workspace --bins
for bin in shoal shoald shoal-logger; do
  ln -sf "$PWD/target/debug/$bin" "/usr/local/bin/$bin"
done
echo "shoal, shoald and shoal-logger are linked into /usr/local/bin"

if ! shoal version >/dev/null 2>&1; then
  mkdir -p /run/shoal /var/log
  echo "starting shoald (log: /var/log/shoald.log)"
  nohup shoald >/var/log/shoald.log 2>&1 &
  echo $! > /run/shoal/shoald.pid
  for _ in $(seq 100); do shoal version >/dev/null 2>&1 && break; sleep 0.2; done
  shoal version >/dev/null || { echo "shoald did not start; see /var/log/shoald.log" >&2; tail -n 20 /var/log/shoald.log >&2; exit 1; }
fi

bash scripts/build-test-image.sh /tmp/shoal-busybox.tar
shoal image load -i /tmp/shoal-busybox.tar
shoal info | grep -q 'Swarm: active' || shoal swarm init --advertise-addr 127.0.0.1
shoal service rm demo >/dev/null 2>&1 || true
shoal service create --name demo --replicas 3 busybox \
  sh -c 'while true; do echo "hello from $(hostname)"; sleep 2; done'
shoal service ls
shoal service ps demo
# Wait for a line from each task rather than a fixed time.
for _ in $(seq 50); do
  [ "$(shoal service logs demo 2>/dev/null | grep -c 'hello from')" -ge 3 ] && break
  sleep 0.2
done
shoal service logs --tail 1 demo

# The routing mesh: port 8080 on every node leads to the web service's tasks, wherever they run.
shoal service rm web >/dev/null 2>&1 || true
shoal service create --name web --replicas 2 -p 8080:80 busybox httpd -f -p 80 -h /var/www
shoal service ls
# The host's own address (not 127.0.0.1: published ports are DNATed on the host's addresses).
addr=$(ip -4 route get 1.1.1.1 2>/dev/null | awk '{for (i = 1; i < NF; i++) if ($i == "src") print $(i + 1)}')
addr=${addr:-$(hostname -I | awk '{print $1}')}
echo "fetching http://$addr:8080/ through the routing mesh"
for _ in $(seq 100); do
  # curl, not busybox wget: Debian's static busybox wget segfaults (exit 139) on this system.
  page=$(curl -sf -m 2 "http://$addr:8080/" 2>/dev/null) && break
  sleep 0.2
done
echo "${page:?no answer on port 8080 through the routing mesh}"
