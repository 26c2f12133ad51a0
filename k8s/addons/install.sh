#!/usr/bin/env bash
# Install Regatta's cluster add-ons, each from its own upstream chart at a pinned version, with
# the values beside this script. Run once per cluster, before `helm install regatta`:
#   k8s/addons/install.sh                  # any cluster: Traefik behind a LoadBalancer
#   k8s/addons/install.sh --kind           # the kind cluster of k8s/kind.yaml (make kind does it)
#   k8s/addons/install.sh traefik metrics  # or only some of: monitoring metrics traefik logs traces
# DRY_RUN=1 prints every command instead of running it.
set -euo pipefail
cd "$(dirname "$0")"

# Pinned chart versions (bump deliberately, one at a time).
TRAEFIK_CHART_VERSION=37.3.0                 # Traefik Proxy v3.6, Gateway API v1.4
KUBE_PROMETHEUS_STACK_CHART_VERSION=80.4.1   # Prometheus Operator, Prometheus, Grafana
METRICS_SERVER_CHART_VERSION=3.13.0          # metrics-server 0.8
LOKI_CHART_VERSION=6.49.0                    # Loki 3.6
ALLOY_CHART_VERSION=1.5.1                    # Grafana Alloy
OTEL_COLLECTOR_CHART_VERSION=0.170.0         # OpenTelemetry Collector (contrib) 0.158
TEMPO_CHART_VERSION=2.2.4                    # Tempo 2.10, single binary

profile=cloud
components=()
for argument in "$@"; do
    case "${argument}" in
        --kind) profile=kind ;;
        --cloud) profile=cloud ;;
        -*) echo "install.sh: unknown option ${argument}" >&2; exit 2 ;;
        *) components+=("${argument}") ;;
    esac
done
((${#components[@]})) || components=(monitoring metrics traefik logs traces)
wants() { [[ " ${components[*]} " == *" $1 "* ]]; }

# Print each command as `$ <command>`; run it unless DRY_RUN=1.
run() {
    printf '$'
    printf ' %q' "$@"
    printf '\n'
    [[ "${DRY_RUN:-0}" == 1 ]] || "$@"
}

run kubectl apply -f ../namespaces.yaml
run helm repo add traefik https://traefik.github.io/charts --force-update
run helm repo add prometheus-community https://prometheus-community.github.io/helm-charts --force-update
run helm repo add metrics-server https://kubernetes-sigs.github.io/metrics-server/ --force-update
run helm repo add grafana https://grafana.github.io/helm-charts --force-update
run helm repo add grafana-community https://grafana-community.github.io/helm-charts --force-update
run helm repo add open-telemetry https://open-telemetry.github.io/opentelemetry-helm-charts --force-update
run helm repo update traefik prometheus-community metrics-server grafana grafana-community open-telemetry

# Monitoring first: its CRDs (ServiceMonitor, PrometheusRule) must exist before a chart uses them.
if wants monitoring; then
    run helm upgrade --install kube-prometheus-stack prometheus-community/kube-prometheus-stack \
        --version "${KUBE_PROMETHEUS_STACK_CHART_VERSION}" --namespace monitoring \
        --values kube-prometheus-stack.yaml --wait --timeout 10m
fi
# The resource metrics API the HPAs read. Most managed clusters serve one already: a second
# metrics-server would fight it over the APIService, so it is left alone there.
if wants metrics; then
    if [[ "${DRY_RUN:-0}" != 1 ]] \
        && kubectl get apiservice v1beta1.metrics.k8s.io >/dev/null 2>&1 \
        && ! helm status metrics-server --namespace kube-system >/dev/null 2>&1; then
        echo "install.sh: the cluster already serves metrics.k8s.io; metrics-server skipped" >&2
    else
        run helm upgrade --install metrics-server metrics-server/metrics-server \
            --version "${METRICS_SERVER_CHART_VERSION}" --namespace kube-system \
            --values metrics-server.yaml --values "metrics-server-${profile}.yaml" --wait --timeout 5m
    fi
fi
if wants traefik; then
    run helm upgrade --install traefik traefik/traefik \
        --version "${TRAEFIK_CHART_VERSION}" --namespace traefik \
        --values traefik.yaml --values "traefik-${profile}.yaml" --wait --timeout 5m
fi
if wants logs; then
    run helm upgrade --install loki grafana/loki \
        --version "${LOKI_CHART_VERSION}" --namespace monitoring \
        --values loki.yaml --wait --timeout 10m
    run helm upgrade --install alloy grafana/alloy \
        --version "${ALLOY_CHART_VERSION}" --namespace monitoring \
        --values alloy.yaml --wait --timeout 5m
fi
# Traces: Tempo first, so the collector's exporter finds it.
if wants traces; then
    run helm upgrade --install tempo grafana-community/tempo \
        --version "${TEMPO_CHART_VERSION}" --namespace monitoring \
        --values tempo.yaml --wait --timeout 5m
    run helm upgrade --install otel-collector open-telemetry/opentelemetry-collector \
        --version "${OTEL_COLLECTOR_CHART_VERSION}" --namespace monitoring \
        --values opentelemetry-collector.yaml --wait --timeout 5m
fi
