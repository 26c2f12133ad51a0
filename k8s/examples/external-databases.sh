#!/usr/bin/env bash
# The Secrets that charts/regatta/ci/external-databases.yaml expects, created from your own
# connection details (read from the environment, so nothing lands in a file or shell history):
#   PGUSER=... PGPASSWORD=... REDIS_URL=rediss://:...@host:6379/0 REDIS_PASSWORD=... \
#     k8s/examples/external-databases.sh
#   helm install regatta charts/regatta -n regatta -f charts/regatta/ci/external-databases.yaml
set -euo pipefail
: "${PGUSER:?}" "${PGPASSWORD:?}" "${REDIS_URL:?}" "${REDIS_PASSWORD:?}"
namespace=${NAMESPACE:-regatta}
kubectl -n "${namespace}" create secret generic regatta-postgres \
    --from-literal=username="${PGUSER}" --from-literal=password="${PGPASSWORD}"
kubectl -n "${namespace}" create secret generic regatta-redis \
    --from-literal=url="${REDIS_URL}" --from-literal=password="${REDIS_PASSWORD}"
# API keys, one per line; give the first to your clients.
openssl rand -hex 24 | kubectl -n "${namespace}" create secret generic regatta-api-keys-managed \
    --from-file=keys=/dev/stdin
