#!/usr/bin/env bash
# Install Debian's wrk (the benchmark's load generator: C, one thread). Needs root (or sudo) and apt.
# Without it `python -m loadtests.bench_server --peers` falls back to the Python generator (httpload).
set -euo pipefail
if command -v wrk >/dev/null 2>&1; then
    echo "wrk already installed: $(command -v wrk)"
    exit 0
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq wrk
wrk --version 2>&1 | head -1 || true   # wrk --version exits 1 after printing its usage
