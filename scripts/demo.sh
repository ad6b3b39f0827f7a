#!/usr/bin/env bash
# Runs the whole system on the embedded defaults: signaling, the HQ console and one
# simulated booth, with SQLite in ./var (the first run also makes a local test CA in
# ./var/demo/test-ca for issuing certificates). Prints the URLs and demo logins; Ctrl-C stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec .venv/bin/python -m demo "$@"
