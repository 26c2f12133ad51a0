#!/usr/bin/env bash
# Steady reads through the ingress while something else happens (the kind workflow's upgrades):
#   k8s/traffic.sh start [URL]   # in the background, about 8 requests a second
#   k8s/traffic.sh stop          # prints the count; fails unless every request got a 200
# 8/s stays under the chart's read quota per client (config.rateLimit.reads: 1200 a minute), so
# a 429 is a failure like any other.
set -euo pipefail
state=${TRAFFIC_DIR:-${TMPDIR:-/tmp}/regatta-traffic}

case "${1:-}" in
    start)
        url=${2:-http://localhost/items}
        rm -rf "${state}"
        mkdir -p "${state}"
        (
            while [[ ! -e "${state}/stop" ]]; do
                code=$(curl --silent --output /dev/null --max-time 10 --write-out '%{http_code}' "${url}" || true)
                echo "${code}" >>"${state}/codes"
                sleep 0.12
            done
            touch "${state}/done"
        ) >"${state}/log" 2>&1 &
        echo "traffic: GET ${url} in the background (pid $!)"
        ;;
    stop)
        touch "${state}/stop"
        for _ in $(seq 100); do
            [[ -e "${state}/done" ]] && break
            sleep 0.2
        done
        total=$(wc -l <"${state}/codes")
        failed=$(grep -cvx 200 "${state}/codes" || true)
        echo "traffic: ${total} requests, ${failed} failed"
        sort "${state}/codes" | uniq -c
        ((total > 0 && failed == 0))
        ;;
    *)
        echo "usage: $0 start [URL] | stop" >&2
        exit 2
        ;;
esac
