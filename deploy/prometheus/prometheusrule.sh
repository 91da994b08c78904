#!/usr/bin/env bash
# Print flowmap-rules.yaml wrapped as a Prometheus Operator PrometheusRule (one source for both setups):
#   bash deploy/prometheus/prometheusrule.sh | kubectl apply -n flowmap -f -
# Extra metadata labels (e.g. the release label your Prometheus's ruleSelector wants) as arguments:
#   bash deploy/prometheus/prometheusrule.sh release=kube-prometheus-stack | kubectl apply -n flowmap -f -
set -euo pipefail
rules="$(dirname "${BASH_SOURCE[0]}")/flowmap-rules.yaml"
printf 'apiVersion: monitoring.coreos.com/v1\nkind: PrometheusRule\nmetadata:\n  name: flowmap\n  labels:\n'
printf '    app.kubernetes.io/name: flowmap\n'
for kv in "$@"; do
    [[ "$kv" == *=* ]] || { echo "prometheusrule.sh: labels are KEY=VALUE, got '$kv'" >&2; exit 2; }
    printf '    %s: "%s"\n' "${kv%%=*}" "${kv#*=}"
done
printf 'spec:\n'
sed -e '/^#/d' -e 's/^/  /' "$rules"
