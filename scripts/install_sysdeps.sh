#!/usr/bin/env bash
# Install the Debian tools the tests drive for real (each test skips, naming this script, without its tool):
#   wrk                       C load generator (loadtests.wrkload, bench_server --peers)
#   prometheus                real Prometheus scraping two replicas (tests/deploy), promtool check rules
#   chromium chromium-driver  headless browser tests of the playground page (tests/e2e/test_playground_browser.py)
# Needs root (or sudo) and apt; anywhere else it says what is missing and exits 0 so `make test` still runs.
set -euo pipefail
want=(wrk prometheus chromium chromium-driver)
missing=()
for pkg in "${want[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"; fi
fi
if ! command -v apt-get >/dev/null 2>&1 || { [ "$(id -u)" != 0 ] && [ -z "$SUDO" ]; }; then
    echo "install_sysdeps: cannot install ${missing[*]} (needs apt-get as root); their tests will skip" >&2
    exit 0
fi
echo "install_sysdeps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq || echo "install_sysdeps: apt-get update failed" >&2
if ! $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; then
    echo "install_sysdeps: apt-get install ${missing[*]} failed; their tests will skip" >&2
fi
