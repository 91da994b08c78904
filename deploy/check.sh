#!/usr/bin/env bash
# `make deploy-check`: render every overlay into build/deploy/ (what `kubectl apply -f` would take), then
# the deployment checks: kubernetes-validate --strict, promtool, hadolint, and tests/deploy (the
# cross-checks against the server, deploy/install.sh into a fresh venv, a real Prometheus over two
# replicas). Tools that are missing are named; their tests skip with the reason.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${VENV:-$ROOT/.venv}/bin"
OUT="${1:-$ROOT/build/deploy}"
K8S_VERSIONS=(1.29.0 1.37.0)
cd "$ROOT"
mkdir -p "$OUT"

for overlay in deploy/k8s/overlays/*/; do
    name="$(basename "$overlay")"
    kubectl kustomize "$overlay" >"$OUT/$name.yaml"
    for v in "${K8S_VERSIONS[@]}"; do
        # ServiceMonitor is a CRD without a shipped schema: reported as WARN, checked by tests/deploy
        "$BIN/kubernetes-validate" --strict --quiet -k "$v" "$OUT/$name.yaml"
    done
    echo "deploy-check: $OUT/$name.yaml rendered and valid (Kubernetes ${K8S_VERSIONS[*]})"
done
if command -v promtool >/dev/null; then
    (cd deploy/prometheus && promtool check rules flowmap-rules.yaml && promtool test rules flowmap-rules.test.yaml)
else
    echo "deploy-check: promtool missing (make sysdeps installs Debian's prometheus)" >&2
fi
"$BIN/hadolint" Dockerfile && echo "deploy-check: hadolint Dockerfile: clean"
OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" "$BIN/python" -m pytest -q -ra tests/deploy
