#!/usr/bin/env bash
# Runs the whole test suite: lint, types, then pytest. As root, the tests run inside a
# fresh network namespace that has only loopback (127.0.0.1 plus 127.0.0.2 for WebRTC host
# candidates), so no test can send traffic off this machine.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh

.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy

mkdir -p var/test-artifacts
if [ "$(id -u)" = 0 ] && unshare --net true 2>/dev/null; then
  exec unshare --net -- bash -c '
    ip link set lo up
    ip addr add 127.0.0.2/8 dev lo
    exec .venv/bin/python -m pytest "$@"' pytest "$@"
fi
exec .venv/bin/python -m pytest "$@"
