#!/usr/bin/env bash
# Runs every test tier: unit and component tests, openraft's storage conformance suite, the containerd executor
# tests and the end-to-end suites with real shoald processes and real containers. Installs what it needs.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
  echo "the end-to-end tests run containers: run as root" >&2
  exit 1
fi
bash scripts/install-deps.sh

# The e2e tests drive the real binaries.
cargo build --workspace --bins
cargo test --workspace --no-fail-fast -- --test-threads=2
