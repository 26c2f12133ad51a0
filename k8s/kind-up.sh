#!/usr/bin/env bash
# `make kind`: from nothing to Regatta on a local kind cluster, without skaffold.
#   1. create the cluster of k8s/kind.yaml (kept when it exists),
#   2. install the add-ons (k8s/addons/install.sh --kind),
#   3. build the four images with docker or podman, whichever is present (ENGINE=podman forces),
#   4. load them into the cluster's nodes (`kind load`),
#   5. `helm upgrade --install --wait` charts/regatta with those images (k8s/kind-values.yaml),
#   6. `helm test`, then print where everything is.
# `k8s/kind-up.sh --dry-run` (or DRY_RUN=1) prints every command, `$ ` first, and runs none.
# KIND_CLUSTER names the cluster (regatta); TAG the image tag (kind-<commit>, and -dirty-<time>
# with uncommitted changes).
set -euo pipefail
cd "$(dirname "$0")/.."

for argument in "$@"; do
    case "${argument}" in
        --dry-run) export DRY_RUN=1 ;;
        *) echo "kind-up.sh: unknown argument ${argument}" >&2; exit 2 ;;
    esac
done
export DRY_RUN=${DRY_RUN:-0}
cluster=${KIND_CLUSTER:-regatta}
namespace=regatta
release=regatta
# A new tag for uncommitted changes too: the same tag would keep the running pods on old code.
tag=${TAG:-kind-$(git rev-parse --short HEAD 2>/dev/null || echo dev)}
if [[ -z "${TAG:-}" && -n "$(git status --porcelain 2>/dev/null)" ]]; then
    tag="${tag}-dirty-$(date +%s)"
fi
# Fully qualified names: podman would otherwise prefix `localhost/` itself, docker `docker.io/`.
registry=localhost
# image name, Dockerfile and the chart values naming its repository and tag.
images=(
    "regatta-items services/items/Dockerfile services.items.image"
    "regatta-heroes services/heroes/Dockerfile services.heroes.image"
    "regatta-notifications services/notifications/Dockerfile services.notifications.image"
    "regatta-operator services/operator/Dockerfile operator.image"
)

run() {
    printf '$'
    printf ' %q' "$@"
    printf '\n'
    [[ "${DRY_RUN}" == 1 ]] || "$@"
}

engine=${ENGINE:-}
if [[ -z "${engine}" ]]; then
    if command -v docker >/dev/null 2>&1; then
        engine=docker
    elif command -v podman >/dev/null 2>&1; then
        engine=podman
    elif [[ "${DRY_RUN}" == 1 ]]; then
        engine=docker
    else
        echo "kind-up.sh: neither docker nor podman is installed" >&2
        exit 1
    fi
fi
[[ "${engine}" == docker || "${engine}" == podman ]] || {
    echo "kind-up.sh: ENGINE must be docker or podman, not ${engine}" >&2
    exit 2
}
# kind runs its nodes on podman only when asked to.
[[ "${engine}" == podman ]] && export KIND_EXPERIMENTAL_PROVIDER=podman
if [[ "${DRY_RUN}" != 1 ]]; then
    for tool in kind kubectl helm; do
        command -v "${tool}" >/dev/null 2>&1 || {
            echo "kind-up.sh: ${tool} is not installed" >&2
            exit 1
        }
    done
fi

# 1. The cluster.
if [[ "${DRY_RUN}" != 1 ]] && kind get clusters 2>/dev/null | grep -qx "${cluster}"; then
    run kubectl config use-context "kind-${cluster}"
else
    run kind create cluster --config k8s/kind.yaml --name "${cluster}" --wait 5m
fi

# 2. The add-ons: Traefik on localhost:80, metrics-server, monitoring, logs, traces. The script
# prints its own commands, and runs none of them under DRY_RUN.
printf '$ k8s/addons/install.sh --kind\n'
k8s/addons/install.sh --kind | sed 's/^/  /'

# 3 and 4. The images, built and loaded into every node.
workdir=$(mktemp -d)
trap 'rm -rf "${workdir}"' EXIT
set_images=()
for entry in "${images[@]}"; do
    read -r name dockerfile key <<<"${entry}"
    image="${registry}/${name}:${tag}"
    run "${engine}" build --file "${dockerfile}" --tag "${image}" .
    if [[ "${engine}" == docker ]]; then
        run kind load docker-image "${image}" --name "${cluster}"
    else
        # `kind load docker-image` asks docker; with podman the image travels as an archive.
        run podman save --format docker-archive --output "${workdir}/${name}.tar" "${image}"
        run kind load image-archive "${workdir}/${name}.tar" --name "${cluster}"
    fi
    set_images+=(--set-string "${key}.repository=${registry}/${name}" --set-string "${key}.tag=${tag}")
done

# 5 and 6. The chart, with exactly those images, then its tests.
run helm upgrade --install "${release}" charts/regatta --namespace "${namespace}" \
    --values k8s/kind-values.yaml "${set_images[@]}" --wait --timeout 10m
run helm test "${release}" --namespace "${namespace}" --logs

cat <<SUMMARY

Regatta is running on the kind cluster "${cluster}" (images ${registry}/regatta-*:${tag}).
Through the ingress (Traefik on localhost:80):
  curl -i http://localhost/items
  curl -i http://localhost/heroes
  curl -i http://localhost/notifications
Writes need the generated API key:
  export API_KEY=\$(kubectl -n ${namespace} get secret ${release}-api-keys -o jsonpath='{.data.api-keys}' | base64 -d)
  curl -i -X POST http://localhost/items -H "Authorization: Bearer \$API_KEY" -H 'Content-Type: application/json' -d '{"name": "Lamp", "price": 19.99}'
Autoscaling on real CPU (metrics-server):
  kubectl -n ${namespace} get hpa
  kubectl -n ${namespace} top pods
Grafana (user admin; dashboards in the Regatta folder, logs in Explore → Loki, traces in Explore → Tempo):
  kubectl -n monitoring get secret kube-prometheus-stack-grafana -o jsonpath='{.data.admin-password}' | base64 -d; echo
  kubectl -n monitoring port-forward svc/kube-prometheus-stack-grafana 3000:80
  # then browse http://localhost:3000
Delete everything:
  kind delete cluster --name ${cluster}
SUMMARY
