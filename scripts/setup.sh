#!/usr/bin/env bash
# Installs what the project needs on a Debian/Ubuntu machine; safe to run again.
#   - Debian packages (only when run as root and only those missing)
#   - the virtual environment at .venv with the project and its development tools
set -euo pipefail
cd "$(dirname "$0")/.."

DEBIAN_PACKAGES=(
  python3-venv python3-dev build-essential ffmpeg chromium fonts-noto-cjk poppler-utils
  pcscd vsmartcard-vpcd libpcsclite-dev pcsc-tools
  coturn cups cups-client cups-filters redis-server postgresql nftables iproute2 util-linux
)

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  missing=()
  for p in "${DEBIAN_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing Debian packages: ${missing[*]}"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
  fi
elif [ "$(id -u)" != 0 ]; then
  echo "setup: not root, so Debian packages are not installed; see README for the list"
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$PY" -m venv .venv
fi
stamp=.venv/.ekichika-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "setup: installing Python packages into .venv"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".[dev]"
  touch "$stamp"
fi

# PeerJS server for bench/relay_load.py (the relay benchmark compares against it). Optional:
# without npm the benchmark measures the signaling server alone and says so.
if command -v npm >/dev/null; then
  if [ ! -f bench/peerjs/node_modules/.package-lock.json ] \
    || [ bench/peerjs/package-lock.json -nt bench/peerjs/node_modules/.package-lock.json ]; then
    echo "setup: installing the PeerJS server into bench/peerjs (npm ci)"
    (cd bench/peerjs && npm ci --no-audit --no-fund --loglevel=error) \
      || echo "setup: npm ci failed; bench/relay_load.py will run without PeerJS"
  fi
else
  echo "setup: npm not found; bench/relay_load.py will run without PeerJS"
fi
