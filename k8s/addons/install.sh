#!/usr/bin/env bash
# Install Regatta's cluster add-ons, each from its own upstream chart at a pinned version, with
# the values beside this script. Run once per cluster, before `helm install regatta`:
#   k8s/addons/install.sh              # everything
#   k8s/addons/install.sh traefik      # or only some of: traefik monitoring logs
set -euo pipefail
cd "$(dirname "$0")"

# Pinned chart versions (bump deliberately, one at a time).
TRAEFIK_CHART_VERSION=37.3.0                 # Traefik Proxy v3.6, Gateway API v1.4
KUBE_PROMETHEUS_STACK_CHART_VERSION=80.4.1   # Prometheus Operator, Prometheus, Grafana
LOKI_CHART_VERSION=6.49.0                    # Loki 3.6
ALLOY_CHART_VERSION=1.5.1                    # Grafana Alloy

components=("$@")
((${#components[@]})) || components=(monitoring traefik logs)
wants() { [[ " ${components[*]} " == *" $1 "* ]]; }

kubectl apply -f ../namespaces.yaml
helm repo add traefik https://traefik.github.io/charts >/dev/null
helm repo add prometheus-community https://prometheus-community.github.io/helm-charts >/dev/null
helm repo add grafana https://grafana.github.io/helm-charts >/dev/null
helm repo update traefik prometheus-community grafana >/dev/null

# Monitoring first: its CRDs (ServiceMonitor, PrometheusRule) must exist before a chart uses them.
if wants monitoring; then
    helm upgrade --install kube-prometheus-stack prometheus-community/kube-prometheus-stack \
        --version "${KUBE_PROMETHEUS_STACK_CHART_VERSION}" --namespace monitoring \
        --values kube-prometheus-stack.yaml --wait --timeout 10m
fi
if wants traefik; then
    helm upgrade --install traefik traefik/traefik \
        --version "${TRAEFIK_CHART_VERSION}" --namespace traefik \
        --values traefik.yaml --wait --timeout 5m
fi
if wants logs; then
    helm upgrade --install loki grafana/loki \
        --version "${LOKI_CHART_VERSION}" --namespace monitoring \
        --values loki.yaml --wait --timeout 10m
    helm upgrade --install alloy grafana/alloy \
        --version "${ALLOY_CHART_VERSION}" --namespace monitoring \
        --values alloy.yaml --wait --timeout 5m
fi
